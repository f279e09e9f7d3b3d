"""Test setup: 8 fake CPU devices and exact float32 matmuls, set before JAX is imported."""
from __future__ import annotations

import os

# Must run before anything imports jax: XLA reads these once, at backend start-up. The preset trades generated
# code speed for compile time (XLA:CPU's LLVM work is most of a test's time); `make test` passes the same flags.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Oracles compute in full float32; without this, CPU/TPU matmuls may use reduced precision.
jax.config.update("jax_default_matmul_precision", "highest")

# One XLA compilation cache per test session, shared by its pytest-xdist workers and the train.py / sample.py
# processes tests start (XDYNA_JAX_CACHE, which those scripts read): many files compile the same micro networks'
# programs (inits, train steps, samplers), and each file's programs are dropped when it ends
# (_drop_compiled_programs). A cache hit skips XLA's compile only; tracing, lowering and every number are the
# same. The controller makes the folder before the workers start (they inherit the variables) and removes it at
# the end, so no session reads a user's cache or another session's; a folder given in XDYNA_TEST_JIT_CACHE
# beforehand is used and kept.
_JIT_CACHE_ENV = "XDYNA_TEST_JIT_CACHE"
_OWN_JIT_CACHE: list = []


def pytest_configure(config):
    import tempfile

    if _JIT_CACHE_ENV not in os.environ and not hasattr(config, "workerinput"):
        os.environ[_JIT_CACHE_ENV] = tempfile.mkdtemp(prefix="xdyna-test-jit-")
        _OWN_JIT_CACHE.append(os.environ[_JIT_CACHE_ENV])
    if os.environ.get(_JIT_CACHE_ENV):
        os.environ["XDYNA_JAX_CACHE"] = os.environ[_JIT_CACHE_ENV]
        jax.config.update("jax_compilation_cache_dir", os.environ[_JIT_CACHE_ENV])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def pytest_unconfigure(config):
    import shutil

    for path in _OWN_JIT_CACHE:
        shutil.rmtree(path, ignore_errors=True)

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repo (CI and developers have it); skips the test when absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared/ not found at {SHARED_DIR}")
    return SHARED_DIR


@pytest.fixture(scope="session")
def examples_dir(shared_dir: Path) -> Path:
    """``shared/data/xdyna_examples``; skips the test when absent."""
    path = shared_dir / "data" / "xdyna_examples"
    if not path.is_dir():
        pytest.skip(f"example data not found at {path}")
    return path


@pytest.fixture(autouse=True, scope="module")
def _drop_compiled_programs():
    """After each test file, drop JAX's compiled programs and traces: a process running many files (one
    pytest-xdist worker of `make test`) otherwise keeps every file's executables and grew to ~8 GB."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
