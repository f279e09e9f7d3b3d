"""Test setup: 8 fake CPU devices and exact float32 matmuls, set before JAX is imported."""
from __future__ import annotations

import os
from pathlib import Path

# Must run before anything imports jax: XLA reads these once, at backend start-up.
# (the Makefile's TEST_XLA_FLAGS says why no YNN fusions)
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                                   "--xla_cpu_experimental_ynn_fusion_type=LIBRARY_FUSION_TYPE_INVALID")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import jax  # noqa: E402
import pytest  # noqa: E402

# Oracles compute in full float32; without this, CPU/TPU matmuls may use reduced precision.
jax.config.update("jax_default_matmul_precision", "highest")

# One XLA compilation cache for the tests, shared by the pytest-xdist workers and by the train.py / sample.py
# processes tests start (they read XDYNA_JAX_CACHE), kept between sessions: most of a test's time is XLA:CPU
# compiling the micro networks' programs, and each file's in-memory programs are dropped when it ends
# (_drop_compiled_programs). A hit skips XLA's compile only (the key is the program text, the flags and the jax
# version); tracing, lowering and every number are the same. Its own folder (XDYNA_TEST_JIT_CACHE, default
# ~/.cache/xdyna_jax/test-jit; delete it to start cold), so tests never read a user's training cache;
# XDYNA_TEST_JIT_CACHE="" turns it off in the test processes. No size limit: jax's LRU eviction raced between
# the concurrent test processes (warnings about vanished files).
_JIT_CACHE_ENV = "XDYNA_TEST_JIT_CACHE"


def pytest_configure(config):
    path = os.environ.setdefault(_JIT_CACHE_ENV, str(Path.home() / ".cache" / "xdyna_jax" / "test-jit"))
    if path:
        os.environ["XDYNA_JAX_CACHE"] = path
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


# What XLA compiled in the test processes (not the subprocesses tests start), summed over pytest-xdist workers and
# printed at the end: a suite that grows slow shows where (compiles vs cache hits) without a profiler.
_JIT_STATS = {"compiles": 0, "compile_s": 0.0, "cache_hits": 0}
_JIT_BY_FILE: dict[str, float] = {}  # compile seconds per test file (module fixtures included)
_CURRENT_FILE = ["(collection)"]


def _count_jit_event(event: str, **_):
    if event == "/jax/compilation_cache/cache_hits":
        _JIT_STATS["cache_hits"] += 1


def _count_jit_duration(event: str, seconds: float, **_):
    if event == "/jax/core/compile/backend_compile_duration":
        _JIT_STATS["compiles"] += 1
        _JIT_STATS["compile_s"] += seconds
        _JIT_BY_FILE[_CURRENT_FILE[0]] = _JIT_BY_FILE.get(_CURRENT_FILE[0], 0.0) + seconds


jax.monitoring.register_event_listener(_count_jit_event)
jax.monitoring.register_event_duration_secs_listener(_count_jit_duration)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _CURRENT_FILE[0] = item.nodeid.split("::")[0]
    return (yield)


def pytest_sessionfinish(session):
    if hasattr(session.config, "workeroutput"):  # a pytest-xdist worker: hand the counts to the controller
        session.config.workeroutput["xdyna_jit_stats"] = dict(_JIT_STATS)
        session.config.workeroutput["xdyna_jit_by_file"] = dict(_JIT_BY_FILE)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    for k, v in getattr(node, "workeroutput", {}).get("xdyna_jit_stats", {}).items():
        _JIT_STATS[k] += v
    for k, v in getattr(node, "workeroutput", {}).get("xdyna_jit_by_file", {}).items():
        _JIT_BY_FILE[k] = _JIT_BY_FILE.get(k, 0.0) + v


def pytest_terminal_summary(terminalreporter):
    s = _JIT_STATS
    terminalreporter.write_line(f"XLA in the test processes: {s['compiles']} programs built in {s['compile_s']:.0f} s, "
                                f"{s['cache_hits']} of them loaded from the tests' compile cache")
    top = sorted(_JIT_BY_FILE.items(), key=lambda kv: -kv[1])[:8]
    if top:
        terminalreporter.write_line("  most compile time: " + ", ".join(f"{k} {v:.0f} s" for k, v in top))


# The files that take minutes (cold compile cache, 2 cores), longest first. `make test` runs pytest-xdist with
# --dist loadfile --no-loadscope-reorder, which hands whole files to the workers in collection order: started
# first, a long file runs beside many short ones instead of alone at the end (xdist's own order, by test count,
# started the one-test default train.py run last). Files not listed keep pytest's order, after these.
SLOW_FILES_FIRST = (
    "test_training_mesh.py", "test_training_cli_default.py", "test_training_cli.py", "test_xdyna_model.py",
    "test_sampling_pipeline.py", "test_remat.py", "test_attention_backends.py", "test_parity_diffusers.py",
    "test_training_run.py", "test_sharding.py", "test_parity_official.py", "test_blockwise_attention.py",
    "test_porting_verify.py", "test_sample_cli.py", "test_tiny_world.py", "test_training_state.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests keep their order

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
