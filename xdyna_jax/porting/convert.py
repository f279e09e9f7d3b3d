"""Official state dicts <-> our Flax param trees, strictly, for the UNet, ControlNet and Resampler.

``*_params_from_torch(state_dict, cfg)`` returns a nested dict of numpy arrays with exactly the
structure, shapes and dtypes of ``param_shapes(model)`` (values are cast to ``cfg.param_dtype``).
Every official param key must be present and none may be unknown: all offenders are listed in one
``PortingError``. The motion-module ``pos_encoder.pe`` buffers are recomputed by the model, so on
import they are optional, and when present they are checked against the formula (atol 1e-3, which
tolerates fp16 checkpoints).

``*_params_to_torch(params, cfg)`` is the inverse: ``{official key: array in official layout}``,
with the ``pe`` buffers written from the formula so the file has the full official key set.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from . import names
from .io import PortingError

_MAX_LISTED = 50  # keys listed per category in an error; the count is always exact


# --- which model a config belongs to ----------------------------------------------------------

# config class name -> (model class name in xdyna_jax.models, CLI kind)
MODELS = {
    "UNet3DConfig": ("UNet3D", "unet"),
    "ControlNetConfig": ("ControlNet", "controlnet"),
    "ResamplerConfig": ("Resampler", "resampler"),
    "VAEConfig": ("AutoencoderKL", "vae"),
    "CLIPVisionConfig": ("CLIPVisionModel", "clip_vision"),
    "CLIPTextConfig": ("CLIPTextModel", "clip_text"),
}


def _model(cfg):
    from xdyna_jax import models

    name = type(cfg).__name__
    if name not in MODELS:
        raise TypeError(f"no model for a config of type {name}")
    return getattr(models, MODELS[name][0])(cfg)


@functools.lru_cache(maxsize=16)
def flat_param_shapes(cfg) -> tuple[dict, tuple]:
    """(flat {path: ShapeDtypeStruct}, entries) of ``cfg``'s model; cached, configs are frozen."""
    from xdyna_jax.models import param_shapes

    tree = param_shapes(_model(cfg))
    return traverse_util.flatten_dict(tree), tuple(names.entries(tree, pe_max_len(cfg)))


def pe_max_len(cfg) -> int | None:
    """Length of the ``pe`` buffers of ``cfg``'s model, or None when it has none."""
    mm = getattr(cfg, "motion_module_kwargs", None)
    if mm is None or not cfg.use_motion_module or not mm.temporal_position_encoding:
        return None
    return mm.temporal_position_encoding_max_len


def official_entries(cfg) -> list[names.Entry]:
    """Every official tensor (params and ``pe`` buffers) of ``cfg``'s model, with its shape."""
    return list(flat_param_shapes(cfg)[1])


def _listing(title: str, keys) -> str:
    keys = sorted(keys)
    shown = "\n  ".join(keys[:_MAX_LISTED])
    more = f"\n  ... and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return f"{len(keys)} {title}:\n  {shown}{more}"


def buffer_problems(state: Mapping[str, np.ndarray], entries) -> list[str]:
    """Shape or value problems of the ``pe`` buffers present in ``state`` (one line each)."""
    from xdyna_jax.models.motion import sinusoidal_position_encoding

    problems = []
    for e in entries:
        if not e.buffer or e.key not in state:
            continue
        v = state[e.key]
        if tuple(v.shape) != e.shape:
            problems.append(f"{e.key}: expected shape {e.shape}, found {tuple(v.shape)}")
            continue
        want = sinusoidal_position_encoding(e.shape[1], e.shape[2])[None]
        err = float(np.max(np.abs(np.asarray(v, np.float32) - want)))
        if not err <= 1e-3:
            problems.append(f"{e.key}: differs from the sinusoidal position encoding by up to {err:.3g}")
    return problems


def check_state_dict(state: Mapping[str, Any], cfg, where: str = "state dict") -> None:
    """Raise one ``PortingError`` listing every unknown key, missing key, shape and pe problem."""
    entries = official_entries(cfg)
    expected = {e.key: e for e in entries}
    unknown = set(state) - set(expected)
    missing = {e.key for e in entries if not e.buffer} - set(state)
    shapes = [f"{k}: expected shape {e.shape}, found {tuple(np.shape(state[k]))}"
              for k, e in expected.items()
              if not e.buffer and k in state and tuple(np.shape(state[k])) != e.shape]
    parts = []
    if unknown:
        parts.append(_listing("unknown key(s)", unknown))
    if missing:
        parts.append(_listing("missing key(s)", missing))
    if shapes:
        parts.append(_listing("shape mismatch(es)", shapes))
    parts += buffer_problems(state, entries)
    if parts:
        raise PortingError(f"{where} does not fit {type(cfg).__name__}:\n" + "\n".join(parts))


def params_from_torch(state: Mapping[str, Any], cfg, where: str = "state dict") -> dict:
    """Official state dict -> nested dict of numpy arrays matching ``param_shapes``."""
    check_state_dict(state, cfg, where)
    flat_shapes, entries = flat_param_shapes(cfg)
    out = {}
    for e in entries:
        if e.buffer:
            continue
        value = names.to_flax(np.asarray(state[e.key]), e.path[-1])
        out[e.path] = np.ascontiguousarray(value.astype(flat_shapes[e.path].dtype, copy=False))
    return traverse_util.unflatten_dict(out)


def params_to_torch(params: Mapping[str, Any], cfg, dtype=None) -> dict[str, np.ndarray]:
    """Param tree -> ``{official key: np.ndarray}`` in official layout, ``pe`` buffers included.

    ``dtype`` (optional) casts every tensor; by default each keeps its dtype, and a ``pe`` buffer
    takes the dtype of its attention block's ``to_q`` kernel.
    """
    from xdyna_jax.models.motion import sinusoidal_position_encoding

    flat_shapes, entries = flat_param_shapes(cfg)
    flat = traverse_util.flatten_dict(dict(params))
    bad = [f"{'/'.join(p)}: expected shape {tuple(flat_shapes[p].shape)}, found {tuple(np.shape(v))}"
           for p, v in flat.items() if p in flat_shapes and tuple(np.shape(v)) != tuple(flat_shapes[p].shape)]
    parts = []
    if set(flat) - set(flat_shapes):
        parts.append(_listing("unknown param(s)", ["/".join(p) for p in set(flat) - set(flat_shapes)]))
    if set(flat_shapes) - set(flat):
        parts.append(_listing("missing param(s)", ["/".join(p) for p in set(flat_shapes) - set(flat)]))
    if bad:
        parts.append(_listing("shape mismatch(es)", bad))
    if parts:
        raise PortingError(f"params do not fit {type(cfg).__name__}:\n" + "\n".join(parts))
    out: dict[str, np.ndarray] = {}
    for e in entries:
        if e.buffer:
            ref_dtype = np.asarray(flat[e.path + ("to_q", "kernel")]).dtype
            value = sinusoidal_position_encoding(e.shape[1], e.shape[2])[None].astype(ref_dtype)
        else:
            value = names.to_torch(np.asarray(flat[e.path]), e.path[-1])
        out[e.key] = np.ascontiguousarray(value if dtype is None else value.astype(dtype))
    return out


# --- the public per-model names -------------------------------------------------------------

def _typed(cfg, cls_name: str):
    from xdyna_jax import models

    cls = getattr(models, cls_name)
    if not isinstance(cfg, cls):
        raise TypeError(f"expected a {cls_name}, got {type(cfg).__name__}")
    return cfg


def unet_params_from_torch(state_dict: Mapping[str, Any], cfg, where: str = "UNet state dict") -> dict:
    return params_from_torch(state_dict, _typed(cfg, "UNet3DConfig"), where)


def controlnet_params_from_torch(state_dict: Mapping[str, Any], cfg, where: str = "ControlNet state dict") -> dict:
    return params_from_torch(state_dict, _typed(cfg, "ControlNetConfig"), where)


def resampler_params_from_torch(state_dict: Mapping[str, Any], cfg, where: str = "Resampler state dict") -> dict:
    return params_from_torch(state_dict, _typed(cfg, "ResamplerConfig"), where)


def unet_params_to_torch(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    return params_to_torch(params, _typed(cfg, "UNet3DConfig"), dtype)


def controlnet_params_to_torch(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    return params_to_torch(params, _typed(cfg, "ControlNetConfig"), dtype)


def resampler_params_to_torch(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    return params_to_torch(params, _typed(cfg, "ResamplerConfig"), dtype)


def config_kind(cfg) -> str:
    return MODELS[type(cfg).__name__][1]
