"""Small helpers shared by the tests (import as ``from helpers import ...``; tests/ is on sys.path)."""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"


def random_tree(shapes, seed: int = 0, scale: float = 0.2):
    """Random non-zero float32 values for a pytree of shapes (numpy: no init program to compile), so
    zero-initialised layers (motion ``proj_out``, ControlNet zero convs) cannot hide a bug."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32), shapes)


def tiny_models_config(**overrides):
    """``configs/tiny.yaml`` as a ``ModelsConfig``; ``overrides`` as ``key=value`` strings."""
    from xdyna_jax import config
    from xdyna_jax.models import ModelsConfig

    return config.load(ModelsConfig, CONFIGS / "tiny.yaml", [f"{k}={v}" for k, v in overrides.items()])
