"""Flax (linen) modules of X-Dyna. Params are plain pytrees named after the official state dicts."""
from __future__ import annotations

import flax.linen as nn
import jax

from .configs import ControlNetConfig, ModelsConfig, MotionConfig, ResamplerConfig, UNet3DConfig
from .unet import UNet3D

__all__ = ["UNet3D", "UNet3DConfig", "MotionConfig", "ControlNet", "ControlNetConfig",
           "Resampler", "ResamplerConfig", "ModelsConfig", "init_params", "param_shapes", "logical_axes"]


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


def __getattr__(name):  # ControlNet / Resampler import lazily to keep this module light
    if name in ("ControlNet",):
        from .controlnet import ControlNet
        return ControlNet
    if name in ("Resampler",):
        from .resampler import Resampler
        return Resampler
    raise AttributeError(name)
