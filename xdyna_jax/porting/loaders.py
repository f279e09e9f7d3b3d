"""File-level loaders that compose official checkpoints the way the official code does (spec §6.1).

* ``load_xdyna_unet``: init file (``animatediff_v15_v1_ipplus.pth``) with ``to_q_ff <- to_q``, then the
  X-Dyna UNet checkpoint overlaid; reports which keys came only from the init file.
* ``unet_params_from_sd15``: a fresh X-Dyna UNet from a plain diffusers SD1.5 UNet.
* ``load_controlnet``: an X-Dyna ``.ckpt`` or a diffusers folder.
* ``load_resampler``: ``ip-adapter-plus_sd15.bin["image_proj"]`` (or a bare state dict).
* ``load_clip_vision`` / ``load_clip_text``: a transformers folder (IP-Adapter ``models/image_encoder``,
  SD1.5 ``text_encoder``: config.json + model.safetensors / pytorch_model.bin) or a weights file.
* ``load_vae``: a diffusers ``vae/`` folder (its config.json) or file; old attention names are upgraded.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np

from xdyna_jax.models.new_layers import init_layers

from . import names
from .convert import buffer_problems, official_entries, params_from_torch
from .io import PortingError, find_diffusers_weights, read_raw, read_state_dict, unwrap

_TO_Q = ".attn1.to_q.weight"
_TO_Q_FF = ".attn1.to_q_ff.weight"


@dataclasses.dataclass
class UNetLoadReport:
    """Where each UNet tensor came from (``pe`` buffers are recomputed and not listed)."""

    init_only: list[str]          # params taken from the init file (the checkpoint lacks them)
    copied_to_q_ff: list[str]     # to_q_ff keys filled from the init file's attn1.to_q
    ignored_init_keys: list[str]  # init keys the model does not have (ignored, as strict=False does)
    from_checkpoint: int          # number of params taken from the checkpoint

    def __str__(self) -> str:
        lines = [f"{self.from_checkpoint} params from the checkpoint, {len(self.init_only)} only from the init file"]
        lines += [f"  init only: {k}" for k in self.init_only]
        lines += [f"  ignored init key: {k}" for k in self.ignored_init_keys]
        return "\n".join(lines)


def _param_keys(cfg) -> list[str]:
    return [e.key for e in official_entries(cfg) if not e.buffer]


def load_xdyna_unet(checkpoint_path, init_path, cfg) -> tuple[dict, UNetLoadReport]:
    """X-Dyna UNet params: init file, ``attn1.to_q_ff <- attn1.to_q``, checkpoint overlaid.

    As the official loader: unknown keys of the init file are ignored (and reported), unknown keys
    of the checkpoint are an error. Unlike it, a param found in neither file is an error (the
    official code would leave it at its random construction value).
    """
    ckpt = read_state_dict(checkpoint_path)
    # mapped: only the init values the checkpoint does not replace are read (and copied out)
    init = read_state_dict(init_path, mmap=True)
    return compose_xdyna_unet(ckpt, init, cfg, str(checkpoint_path), str(init_path), consume=True)


def compose_xdyna_unet(ckpt: Mapping[str, np.ndarray], init: Mapping[str, np.ndarray], cfg,
                       ckpt_name: str = "checkpoint", init_name: str = "init file",
                       consume: bool = False) -> tuple[dict, UNetLoadReport]:
    """``load_xdyna_unet`` on in-memory state dicts. ``consume``: both are dicts the caller gives up (emptied
    here), so each tensor is freed once converted; init values kept are copied out of a memory-mapped file."""
    entries = official_entries(cfg)
    expected = {e.key for e in entries}
    params = set(_param_keys(cfg))
    unknown = sorted(set(ckpt) - expected)
    if unknown:
        raise PortingError(f"{ckpt_name}: {len(unknown)} unexpected key(s) for {type(cfg).__name__} "
                           f"(the official loader asserts none): {unknown[:50]}")
    merged = {k: v for k, v in init.items() if k in expected}
    # the official from_pretrained_ip copies to_q into the adapter's to_q_ff before loading
    copied = sorted(k for k in params if k.endswith(_TO_Q_FF) and k.replace(_TO_Q_FF, _TO_Q) in init)
    for k in copied:
        merged[k] = init[k.replace(_TO_Q_FF, _TO_Q)]
    # the init file's own pe buffers are checked too, although the checkpoint may replace them
    problems = buffer_problems(merged, entries)
    if problems:
        raise PortingError(f"{init_name}:\n" + "\n".join(problems))
    ckpt_keys, init_keys = set(ckpt), set(init)
    missing = sorted(params - set(merged) - ckpt_keys)
    if missing:
        raise PortingError(f"{len(missing)} UNet param(s) in neither {ckpt_name} nor {init_name}: {missing[:50]}")
    if consume:
        merged = {k: np.array(v) for k, v in merged.items() if k not in ckpt_keys}
        init.clear()  # releases the init file's mapping
        merged.update(ckpt)
        ckpt.clear()
    else:
        merged.update(ckpt)
    out = params_from_torch(merged, cfg, where=f"{init_name} + {ckpt_name}", consume=consume)
    report = UNetLoadReport(init_only=sorted(params - ckpt_keys), copied_to_q_ff=copied,
                            ignored_init_keys=sorted(init_keys - expected),
                            from_checkpoint=len(params & ckpt_keys))
    return out, report


def unet_params_from_sd15(state_dict: Mapping[str, np.ndarray], cfg, rng: jax.Array) -> tuple[dict, dict[str, str]]:
    """A fresh X-Dyna UNet from a plain SD1.5 UNet state dict (diffusers names).

    The layers SD1.5 lacks are initialised as the official training starts them:
      * ``attn1.to_q_ff``: copy of ``attn1.to_q`` (as ``from_pretrained_ip``);
      * ``attn2.to_k_ip`` / ``to_v_ip``: copies of ``attn2.to_k`` / ``to_v`` (IP-Adapter's own init,
        used when no IP-Adapter weights are loaded; load them afterwards to fine-tune from IP-Adapter);
      * everything else (``attn1.to_out_ff``: torch-default uniform; motion modules, whose
        ``proj_out`` is zero with ``zero_initialize``): our model init from ``rng``.
    Returns (params, {initialised key: "copy of <key>" or "init"}). SD1.5 keys the model lacks are an error.
    """
    entries = [e for e in official_entries(cfg) if not e.buffer]
    known = {e.key for e in entries} | {e.key for e in official_entries(cfg) if e.buffer}
    unknown = sorted(set(state_dict) - known)
    if unknown:
        raise PortingError(f"SD1.5 UNet state dict: {len(unknown)} key(s) the X-Dyna UNet does not have: {unknown[:50]}")
    full = dict(state_dict)
    report: dict[str, str] = {}
    copies = {_TO_Q_FF: _TO_Q, ".attn2.to_k_ip.weight": ".attn2.to_k.weight",
              ".attn2.to_v_ip.weight": ".attn2.to_v.weight"}
    to_init = []
    for e in entries:
        if e.key in full:
            continue
        suffix = next((s for s in copies if e.key.endswith(s)), None)
        src = e.key[: -len(suffix)] + copies[suffix] if suffix else None
        if src is not None and src in state_dict:
            full[e.key] = state_dict[src]
            report[e.key] = f"copy of {src}"
        else:
            to_init.append(e)
    try:
        fresh = init_layers(cfg, [e.path for e in to_init], rng)
    except ValueError as err:
        raise PortingError(f"SD1.5 UNet state dict: {err}") from err
    for e in to_init:
        full[e.key] = names.to_torch(fresh[e.path], e.path)
        report[e.key] = "init"
    return params_from_torch(full, cfg, where="SD1.5 UNet state dict"), report


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PortingError(f"{path}: cannot read config ({e})") from e


def load_controlnet(path, cfg=None) -> tuple[dict, Any]:
    """ControlNet params from an X-Dyna ``.ckpt``/``.safetensors`` or a diffusers folder.

    Without ``cfg``: a folder's ``config.json`` is used when present; otherwise the SD1.5 config,
    with ``conditioning_channels`` read from ``controlnet_cond_embedding.conv_in.weight`` (3 for
    pose, 6 for S-Face). Returns (params, cfg).
    """
    from xdyna_jax.models import ControlNetConfig

    path = Path(path)
    weights = find_diffusers_weights(path) if path.is_dir() else path
    if cfg is None and path.is_dir() and (path / "config.json").is_file():
        try:
            cfg = ControlNetConfig.from_diffusers(_read_config_json(path / "config.json"))
        except ValueError as e:
            raise PortingError(f"{path / 'config.json'}: {e}") from e
    state = read_state_dict(weights)
    if cfg is None:
        w = state.get("controlnet_cond_embedding.conv_in.weight")
        cfg = ControlNetConfig.sd15(**({"conditioning_channels": int(w.shape[1])} if w is not None and w.ndim == 4 else {}))
    return params_from_torch(state, cfg, where=str(weights), consume=True), cfg


def load_resampler(path, cfg=None) -> tuple[dict, Any]:
    """Resampler params from ``ip-adapter-plus_sd15.bin`` (its ``image_proj`` part) or a bare
    state dict file. Without ``cfg`` the SD1.5 IP-Adapter-Plus config. Returns (params, cfg)."""
    from xdyna_jax.models import ResamplerConfig

    raw = read_raw(path)
    select = "image_proj" if isinstance(raw, Mapping) and "image_proj" in raw else None
    state = unwrap(raw, select=select, where=str(path))
    cfg = cfg if cfg is not None else ResamplerConfig.sd15()
    return params_from_torch(state, cfg, where=f"{path}" + (f"[{select!r}]" if select else "")), cfg


def load_vae(path, cfg=None) -> tuple[dict, Any]:
    """VAE params from a diffusers ``vae/`` folder or a bare state-dict file (old attention names accepted).

    Without ``cfg``: a folder's ``config.json`` when present, else the SD1.5 VAE. Returns (params, cfg).
    """
    from xdyna_jax.models.vae import VAEConfig

    from .convert import vae_params_from_torch

    path = Path(path)
    weights = find_diffusers_weights(path) if path.is_dir() else path
    if cfg is None and path.is_dir() and (path / "config.json").is_file():
        config = _read_config_json(path / "config.json")
        try:
            cfg = VAEConfig.from_diffusers(config)
        except ValueError as e:
            raise PortingError(f"{path / 'config.json'}: {e}") from e
    cfg = cfg if cfg is not None else VAEConfig.sd15()
    return vae_params_from_torch(read_state_dict(weights), cfg, where=str(weights), consume=True), cfg


_TRANSFORMERS_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
# config class -> (key prefix, projection-head key, preset)
_CLIP = {"CLIPVisionConfig": ("vision_model", "visual_projection.weight", "vit_h14"),
         "CLIPTextConfig": ("text_model", "text_projection.weight", "sd15")}


def _load_clip(path, cfg, cls_name: str) -> tuple[dict, Any]:
    from xdyna_jax import models

    from .convert import with_clip_prefix

    cls = getattr(models, cls_name)
    prefix, proj_key, preset = _CLIP[cls_name]
    path = Path(path)
    if path.is_dir():
        weights = next((path / n for n in _TRANSFORMERS_WEIGHTS if (path / n).is_file()), None)
        if weights is None:
            raise PortingError(f"{path}: no {' or '.join(_TRANSFORMERS_WEIGHTS)} in this folder")
    else:
        weights = path
    if cfg is None and path.is_dir() and (path / "config.json").is_file():
        try:
            cfg = cls.from_hf(_read_config_json(path / "config.json"))
        except (ValueError, TypeError) as e:
            raise PortingError(f"{path / 'config.json'}: {e}") from e
    state = with_clip_prefix(read_state_dict(weights), prefix)
    if cfg is None:  # no config: the preset, with a projection head iff the file has one
        proj = state.get(proj_key)
        cfg = getattr(cls, preset)(projection_dim=int(proj.shape[0]) if proj is not None and proj.ndim == 2 else None)
    return params_from_torch(state, cfg, where=str(weights), consume=True), cfg


def load_clip_vision(path, cfg=None) -> tuple[dict, Any]:
    """CLIP image-encoder params from a transformers folder (IP-Adapter ``models/image_encoder``) or file.

    Without ``cfg``: the folder's ``config.json`` when present, else ViT-H/14 with a projection head
    iff the file has ``visual_projection.weight``. Returns (params, cfg).
    """
    return _load_clip(path, cfg, "CLIPVisionConfig")


def load_clip_text(path, cfg=None) -> tuple[dict, Any]:
    """CLIP text-encoder params from a transformers folder (SD1.5 ``text_encoder``) or file.

    Without ``cfg``: the folder's ``config.json`` when present, else SD1.5's text encoder (with a
    projection head iff the file has ``text_projection.weight``). Returns (params, cfg).
    """
    return _load_clip(path, cfg, "CLIPTextConfig")


# which config class reads a folder's config.json, and with which constructor
_JSON_CONFIGS = {"controlnet": ("ControlNetConfig", "from_diffusers"), "vae": ("VAEConfig", "from_diffusers"),
                 "clip_vision": ("CLIPVisionConfig", "from_hf"), "clip_text": ("CLIPTextConfig", "from_hf")}


def config_from_json(path, kind: str) -> Any:
    """Our config of ``kind`` (controlnet, vae, clip_vision, clip_text) from a diffusers / transformers
    ``config.json``, as the folder loaders above read it; errors name the file."""
    from xdyna_jax import models

    cls_name, ctor = _JSON_CONFIGS[kind]
    path = Path(path)
    try:
        return getattr(getattr(models, cls_name), ctor)(_read_config_json(path))
    except (ValueError, TypeError) as e:
        raise PortingError(f"{path}: {e}") from e
