"""Initialisers of the layers X-Dyna adds to a pretrained SD1.5 UNet (spec §8), in one place for
porting (``unet_params_from_sd15``) and training:

* ``adapter_queries_from_to_q``: every ``attn1.to_q_ff`` starts as a copy of its ``attn1.to_q``
  (the official ``from_pretrained_ip``);
* ``init_layers``: our own initialisers for the other new layers (motion modules, whose ``proj_out``
  is zero with ``zero_initialize``; ``attn1.to_out_ff``), one small sub-module at a time.
"""
from __future__ import annotations

import functools
import zlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from . import param_shapes
from .layers import Dense, dtype_of
from .motion import MotionModule
from .unet import UNet3D


def adapter_queries_from_to_q(unet_params):
    """A copy of the UNet params with every ``attn1/to_q_ff`` set to its ``attn1/to_q``."""
    flat = traverse_util.flatten_dict(dict(unet_params))
    out = dict(flat)
    for path in flat:
        if path[-3:] == ("attn1", "to_q_ff", "kernel"):
            out[path] = flat[path[:-2] + ("to_q", "kernel")]
    return traverse_util.unflatten_dict(out)


def init_layers(cfg, paths, rng) -> dict[tuple[str, ...], np.ndarray]:
    """Our init for the UNet params at ``paths``, one small sub-module at a time.

    Initialising the whole UNet would compile ~800 RNG calls in one XLA program (minutes on CPU);
    the new layers live in two kinds of sub-module, each initialised on its own with a key folded
    from its path, so the values are the model's own initialisers (zero motion ``proj_out`` included).
    """
    flat_shapes = traverse_util.flatten_dict(param_shapes(UNet3D(cfg)))
    out: dict[tuple[str, ...], np.ndarray] = {}
    for path in paths:
        if path in out:
            continue
        mm = next((i for i, c in enumerate(path) if c.startswith("motion_modules_")), None)
        if mm is not None:
            prefix = path[: mm + 1]
            init = _init_fn(cfg, "motion", flat_shapes[prefix + ("temporal_transformer", "proj_in", "kernel")].shape[0])
        elif "to_out_ff" in path:
            prefix = path[: path.index("to_out_ff") + 1]
            init = _init_fn(cfg, "dense", flat_shapes[prefix + ("kernel",)].shape[0])
        else:
            raise ValueError(f"no initialiser for {'/'.join(path)}: only motion modules and to_out_ff are new layers")
        key = jax.random.fold_in(rng, zlib.crc32("/".join(prefix).encode()))
        sub = init(key)
        for p, v in traverse_util.flatten_dict(sub).items():
            if prefix + p not in flat_shapes or tuple(v.shape) != tuple(flat_shapes[prefix + p].shape):
                raise ValueError(f"sub-module init of {'/'.join(prefix)} gave {'/'.join(p)} {v.shape}, "
                                 f"which the UNet does not have")
            out[prefix + p] = np.asarray(v)
        if path not in out:
            raise ValueError(f"sub-module init of {'/'.join(prefix)} did not make {'/'.join(path)}")
    return out


@functools.lru_cache(maxsize=None)
def _init_fn(cfg, kind: str, c: int):
    """Jitted init of one UNet sub-module of width ``c`` (cached: each kind and width compiles once)."""
    kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
    if kind == "motion":
        module = MotionModule(cfg.motion_module_kwargs, cfg.attention_backend, **kw)
        x = jnp.zeros((1, 2, 1, 1, c), jnp.float32)  # frame 0 is the bypassed reference
    else:
        module, x = Dense(c, **kw), jnp.zeros((1, c), jnp.float32)
    return jax.jit(lambda key: nn.unbox(module.init(key, x)["params"]))
