"""Small helpers shared by the tests (import as ``from helpers import ...``; tests/ is on sys.path)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import jax
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS = REPO_ROOT / "configs"


def cpu_env(devices: int | None = 1, **extra) -> dict:
    """The environment of a subprocess test: this session's, with JAX on ``devices`` CPU devices (None: XLA_FLAGS
    without a device count, for a child that sets its own) and the session's other XLA flags kept, the tests'
    compile cache shared through XDYNA_JAX_CACHE (conftest), plus ``extra``."""
    flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")).split()
    if devices is not None:
        flags.insert(0, f"--xla_force_host_platform_device_count={devices}")
    return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": " ".join(flags), **extra}


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


# Training tests: one-level UNet and pose ControlNet (a cross-attention block with the adapter and a motion
# module, the mid block), no face ControlNet, one noisy frame at 32x32, seeded random params, constant lr. The
# train step compiles in ~15 s alone on 2 cores (two levels: ~25 s; the 4-level tiny networks: minutes).
MICRO_TRAIN = [
    "models.face_controlnet=null", "train.init=random",
    "models.unet.block_out_channels=[32]", "models.unet.attention_head_dim=[2]",
    "models.unet.down_block_types=[CrossAttnDownBlock3D]", "models.unet.up_block_types=[CrossAttnUpBlock3D]",
    "models.pose_controlnet.block_out_channels=[32]", "models.pose_controlnet.attention_head_dim=[2]",
    "models.pose_controlnet.down_block_types=[CrossAttnDownBlock2D]",
    "train.stage=adapter+pose_controlnet", "train.frames=1", "train.height=32", "train.width=32",
    "train.schedule=constant", "train.warmup_steps=0", "train.learning_rate=1e-3",
]


# The networks of MICRO_TRAIN as tiny_models_config overrides (one-level UNet and ControlNets, face one included):
# for tests whose subject is not the networks' depth (a CLI end to end), a much shorter compile than tiny.yaml's.
MICRO_NETS = {
    "unet.block_out_channels": "[32]", "unet.attention_head_dim": "[2]",
    "unet.down_block_types": "[CrossAttnDownBlock3D]", "unet.up_block_types": "[CrossAttnUpBlock3D]",
    **{f"{cn}.{k}": v for cn in ("pose_controlnet", "face_controlnet") for k, v in (
        ("block_out_channels", "[32]"), ("attention_head_dim", "[2]"), ("down_block_types", "[CrossAttnDownBlock2D]"))},
}


def records(workdir) -> dict[int, dict]:
    """``{step: record}`` of a training run's ``metrics.jsonl``; a resumed run re-logs the steps after its
    checkpoint: the last record of a step wins."""
    out = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[r["step"]] = r
    return out
