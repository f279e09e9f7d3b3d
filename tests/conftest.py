"""Test setup: 8 fake CPU devices and exact float32 matmuls, set before JAX is imported."""
from __future__ import annotations

import os

# Must run before anything imports jax: XLA reads these once, at backend start-up.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# Oracles compute in full float32; without this, CPU/TPU matmuls may use reduced precision.
jax.config.update("jax_default_matmul_precision", "highest")

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
