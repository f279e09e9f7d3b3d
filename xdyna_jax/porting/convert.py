"""Official state dicts <-> our Flax param trees, strictly, for the UNet, ControlNet and Resampler.

``*_params_from_torch(state_dict, cfg)`` returns a nested dict of numpy arrays with exactly the
structure, shapes and dtypes of ``param_shapes(model)`` (values are cast to ``cfg.param_dtype``).
Every official param key must be present and none may be unknown: all offenders are listed in one
``PortingError``. The motion-module ``pos_encoder.pe`` buffers are recomputed by the model, so on
import they are optional, and when present they are checked against the formula (atol 1e-3, which
tolerates fp16 checkpoints). CLIP's ``position_ids`` buffers (files of older transformers) are
likewise optional on import, must equal arange when present, and are never exported.

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


def legacy_buffers(cfg) -> dict[str, np.ndarray]:
    """Buffers that older checkpoints hold and the model recomputes: CLIP's ``position_ids``
    (transformers < 4.31 saved them; later versions neither save nor read them). Accepted on import
    when equal to these values, never exported."""
    name = type(cfg).__name__
    if name == "CLIPVisionConfig":
        return {"vision_model.embeddings.position_ids": np.arange(cfg.num_positions)[None]}
    if name == "CLIPTextConfig":
        return {"text_model.embeddings.position_ids": np.arange(cfg.max_position_embeddings)[None]}
    return {}


def legacy_buffer_problems(state: Mapping[str, Any], cfg) -> list[str]:
    problems = []
    for k, want in legacy_buffers(cfg).items():
        if k not in state:
            continue
        v = np.asarray(state[k])
        if v.shape != want.shape:
            problems.append(f"{k}: expected shape {want.shape}, found {v.shape}")
        elif not np.array_equal(v.astype(np.float64), want):
            problems.append(f"{k}: is not arange({want.shape[1]}) (transformers ignores this buffer; "
                            f"drop the key to load the file as transformers does)")
    return problems


def check_state_dict(state: Mapping[str, Any], cfg, where: str = "state dict") -> None:
    """Raise one ``PortingError`` listing every unknown key, missing key, shape and buffer problem."""
    entries = official_entries(cfg)
    expected = {e.key: e for e in entries}
    unknown = set(state) - set(expected) - set(legacy_buffers(cfg))
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
    parts += buffer_problems(state, entries) + legacy_buffer_problems(state, cfg)
    if parts:
        raise PortingError(f"{where} does not fit {type(cfg).__name__}:\n" + "\n".join(parts))


def params_from_torch(state: Mapping[str, Any], cfg, where: str = "state dict", consume: bool = False) -> dict:
    """Official state dict -> nested dict of numpy arrays matching ``param_shapes``.

    ``consume``: ``state`` is a dict the caller gives up; each entry is popped once converted, so its memory is
    freed as the tree grows (the host holds the checkpoint and the tree together one tensor at a time).
    """
    check_state_dict(state, cfg, where)
    flat_shapes, entries = flat_param_shapes(cfg)
    out = {}
    for e in entries:
        if e.buffer:
            if consume:
                state.pop(e.key, None)
            continue
        value = names.to_flax(np.asarray(state.pop(e.key) if consume else state[e.key]), e.path)
        out[e.path] = np.ascontiguousarray(value.astype(flat_shapes[e.path].dtype, copy=False))
        del value  # the source tensor goes with its last reference
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
            value = names.to_torch(np.asarray(flat[e.path]), e.path)
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


# --- VAE: diffusers' deprecated attention names -------------------------------------------------

# Older VAE files (SD1.5's own vae/diffusion_pytorch_model.* among them) name the mid-block attention
# ``query/key/value/proj_attn``; diffusers renames them on load (``_convert_deprecated_attention_blocks``).
# Files converted from the original LDM checkpoint may also keep these weights as (C, C, 1, 1) convs.
_VAE_OLD_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def upgrade_vae_state_dict(state: Mapping[str, Any], where: str = "VAE state dict") -> dict[str, Any]:
    """Old VAE attention names -> ``to_q/to_k/to_v/to_out.0``, and (C, C, 1, 1) attention weights -> (C, C).

    Only keys under ``*.mid_block.attentions.<i>.`` are touched; a file holding both the old and the
    new name of one tensor is an error. Everything else is passed through for the strict check.
    """
    out: dict[str, Any] = {}
    renamed_from: dict[str, str] = {}
    for k, v in state.items():
        mod, _, leaf = k.rpartition(".")
        head, _, name = mod.rpartition(".")
        if ".mid_block.attentions." not in f".{head}.":
            out[k] = v
            continue
        new = f"{head}.{_VAE_OLD_ATTN[name]}.{leaf}" if name in _VAE_OLD_ATTN else k
        if new in out or new in renamed_from:
            raise PortingError(f"{where}: both {renamed_from.get(new, new)!r} and {k!r} hold {new!r}")
        if new != k:
            renamed_from[new] = k
        if leaf == "weight" and np.ndim(v) == 4 and tuple(np.shape(v)[2:]) == (1, 1):
            v = np.asarray(v)[:, :, 0, 0]
        out[new] = v
    return out


def vae_params_from_torch(state_dict: Mapping[str, Any], cfg, where: str = "VAE state dict",
                          consume: bool = False) -> dict:
    """diffusers ``AutoencoderKL`` state dict (old or new attention names) -> VAE params (``consume``: as
    ``params_from_torch``)."""
    state = upgrade_vae_state_dict(state_dict, where)
    if consume and state is not state_dict:
        state_dict.clear()  # the renamed dict holds the same arrays; only one may keep them
    return params_from_torch(state, _typed(cfg, "VAEConfig"), where, consume=consume)


def vae_params_to_torch(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    """VAE params -> diffusers ``AutoencoderKL`` state dict (current names: ``to_q``... ``to_out.0``)."""
    return params_to_torch(params, _typed(cfg, "VAEConfig"), dtype)


# --- CLIP: transformers CLIPVisionModel(WithProjection) / CLIPTextModel(WithProjection) -----------
# Exported keys carry the ``vision_model.`` / ``text_model.`` prefix (SD1.5's and IP-Adapter's files;
# transformers 5 loads them into either model class).

def with_clip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """Add ``prefix`` ("vision_model" / "text_model") to a state dict that has no key under it.

    transformers 5 saves a plain ``CLIPTextModel`` / ``CLIPVisionModel`` without that prefix;
    transformers 4, SD1.5's ``text_encoder`` and the ``*WithProjection`` models have it. The
    projection heads (``visual_projection`` / ``text_projection``) are never prefixed.
    """
    if any(k.startswith(prefix + ".") for k in state):
        return dict(state)
    return {k if k.split(".")[0].endswith("_projection") else f"{prefix}.{k}": v for k, v in state.items()}


def clip_vision_params_from_torch(state_dict: Mapping[str, Any], cfg, where: str = "CLIP vision state dict") -> dict:
    """``CLIPVisionModelWithProjection`` / ``CLIPVisionModel`` state dict (either prefix convention)."""
    return params_from_torch(with_clip_prefix(state_dict, "vision_model"), _typed(cfg, "CLIPVisionConfig"), where)


def clip_vision_params_to_torch(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    return params_to_torch(params, _typed(cfg, "CLIPVisionConfig"), dtype)


def clip_text_params_from_torch(state_dict: Mapping[str, Any], cfg, where: str = "CLIP text state dict") -> dict:
    """``CLIPTextModel`` / ``CLIPTextModelWithProjection`` state dict (either prefix convention)."""
    return params_from_torch(with_clip_prefix(state_dict, "text_model"), _typed(cfg, "CLIPTextConfig"), where)


def clip_text_params_to_torch(params, cfg, dtype=None) -> dict[str, np.ndarray]:
    return params_to_torch(params, _typed(cfg, "CLIPTextConfig"), dtype)


def config_kind(cfg) -> str:
    return MODELS[type(cfg).__name__][1]
