"""Flax (linen) modules of X-Dyna. Params are plain pytrees named after the official state dicts."""
from __future__ import annotations

import flax.linen as nn
import jax

from .configs import ControlNetConfig, MotionConfig, ResamplerConfig, UNet3DConfig
from .unet import UNet3D

__all__ = ["UNet3D", "UNet3DConfig", "MotionConfig", "ControlNet", "ControlNetConfig",
           "Resampler", "ResamplerConfig", "ModelsConfig",
           "AutoencoderKL", "VAEConfig", "CLIPVisionModel", "CLIPVisionConfig", "CLIPTextModel", "CLIPTextConfig",
           "init_params", "param_shapes", "logical_axes"]


def _init(module, rng):
    return module.init(rng, *module.example_inputs())["params"]


def init_params(module: nn.Module, rng: jax.Array):
    """Initialised params of ``module`` as a plain pytree (logical-axis boxes removed)."""
    return nn.unbox(jax.jit(lambda r: _init(module, r))(rng))


def param_shapes(module: nn.Module):
    """Param pytree of ``jax.ShapeDtypeStruct``: no allocation, fine at full size."""
    return nn.unbox(jax.eval_shape(lambda: _init(module, jax.random.key(0))))


def logical_axes(module: nn.Module):
    """Pytree of ``PartitionSpec`` holding each param's logical axis names."""
    return nn.get_partition_spec(jax.eval_shape(lambda: _init(module, jax.random.key(0))))


_LAZY = {  # name -> submodule; imported on first use to keep `import xdyna_jax.models` light
    "ControlNet": "controlnet", "Resampler": "resampler", "ModelsConfig": "xdyna",
    "AutoencoderKL": "vae", "VAEConfig": "vae",
    "CLIPVisionModel": "clip", "CLIPTextModel": "clip", "CLIPVisionConfig": "clip", "CLIPTextConfig": "clip",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
