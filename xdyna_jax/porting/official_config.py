"""The ``ModelsConfig`` of an official checkpoint set: its own configs are the truth.

What the folder tells, and from which file:
  * unet: SD1.5 ``unet/config.json`` + x_dyna.yaml's ``unet_additional_kwargs`` (and its
    ``noise_scheduler_kwargs``: prediction type, zero-SNR rescaling, as diffusers' DDIMScheduler defaults);
    ``num_ip_tokens`` from the IP-Adapter file (the Resampler's queries);
  * the ControlNets: their init folders' ``config.json``; vae / text_encoder / image_encoder: their
    ``config.json``;
  * the Resampler: the shapes in ``ip-adapter-plus_sd15.bin`` (the official code hard-codes its settings), all
    but the split of ``heads`` x ``dim_head``, which only the preset can say.
Compute settings (dtypes, attention backend, remat, chunks) are ours, never the folder's. A ``--config`` /
``--preset`` / ``--set`` that states a told field differently is refused, naming the field and both values;
without ``--config`` / ``--preset`` the preset (sd15) only fills what the folder does not tell.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import yaml

from xdyna_jax import config as config_lib

from .io import PortingError, read_raw, unwrap

COMPUTE = {"dtype", "param_dtype", "attention_backend", "attention_query_chunk", "remat", "remat_tie",
           "decode_chunk"}
# UNet fields that come from x_dyna.yaml, not from SD1.5's unet/config.json
XDYNA_FIELDS = ("unet_use_cross_frame_attention", "unet_use_ipadapter", "use_motion_module",
                "motion_module_resolutions", "motion_module_mid_block", "motion_module_decoder_only",
                "motion_module_kwargs", "use_inflated_groupnorm", "prediction_type", "rescale_betas_zero_snr")
_KIND = {"pose_controlnet": "controlnet", "face_controlnet": "controlnet", "vae": "vae",
         "image_encoder": "clip_vision", "text_encoder": "clip_text"}


def _leaves(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_leaves(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set_leaf(tree: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for k in path:
        if not isinstance(tree.get(k), dict):  # a part the base config has as null
            tree[k] = {}
        tree = tree[k]
    tree[last] = value


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise PortingError(f"{path}: cannot read as YAML ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("unet_additional_kwargs", {}), dict):
        raise PortingError(f"{path}: expected x_dyna.yaml, a mapping with unet_additional_kwargs")
    return data


def _unet_told(json_path: Path, yaml_path: Path | None) -> dict[str, tuple[Any, str]]:
    from xdyna_jax.models import UNet3DConfig

    from .loaders import _read_config_json

    data = _read_yaml(yaml_path) if yaml_path is not None else {}
    kwargs = dict(data.get("unet_additional_kwargs") or {})
    sched = data.get("noise_scheduler_kwargs") or {}
    kwargs["prediction_type"] = sched.get("prediction_type", "epsilon")  # DDIMScheduler's defaults
    kwargs["rescale_betas_zero_snr"] = bool(sched.get("rescale_betas_zero_snr", False))
    try:
        cfg = UNet3DConfig.from_diffusers(_read_config_json(json_path), **kwargs)
    except (ValueError, TypeError) as e:
        raise PortingError(f"{json_path} + {yaml_path or 'no x_dyna.yaml'}: {e}") from e
    out = {}
    for key, value in _leaves(config_lib.to_dict(cfg)).items():
        top = key.split(".")[0]
        if top in COMPUTE or top == "num_ip_tokens":
            continue
        if top in XDYNA_FIELDS:
            if yaml_path is not None:
                out[f"unet.{key}"] = (value, str(yaml_path))
        else:
            out[f"unet.{key}"] = (value, str(json_path))
    return out


def resampler_shapes(path) -> dict[str, int]:
    """What the IP-Adapter file's ``image_proj`` shapes say of the Resampler (``inner`` = heads x dim_head)."""
    raw = read_raw(path)
    state = unwrap(raw, select="image_proj" if isinstance(raw, Mapping) and "image_proj" in raw else None,
                   where=str(path))
    need = ("latents", "proj_in.weight", "proj_out.weight", "layers.0.0.to_q.weight", "layers.0.1.1.weight")
    absent = [k for k in need if k not in state]
    if absent:
        raise PortingError(f"{path}: not an IP-Adapter-Plus Resampler (no {', '.join(absent)} in image_proj)")
    _, queries, dim = state["latents"].shape
    depth = len({m.group(1) for k in state if (m := re.match(r"layers\.(\d+)\.", k))})
    return {"dim": int(dim), "depth": depth, "num_queries": int(queries),
            "embedding_dim": int(state["proj_in.weight"].shape[1]),
            "output_dim": int(state["proj_out.weight"].shape[0]),
            "ff_mult": int(state["layers.0.1.1.weight"].shape[0]) // int(dim),
            "inner": int(state["layers.0.0.to_q.weight"].shape[0])}


def folder_told(parts, yaml_path: Path | None) -> tuple[dict[str, tuple[Any, str]], dict[str, int]]:
    """{dotted field: (value, file that says so)} for every field the official set tells, and the Resampler's
    shapes (for the heads x dim_head check)."""
    from .loaders import config_from_json

    told = _unet_told(parts.configs["unet"], yaml_path)
    for part, kind in _KIND.items():
        if part in parts.configs:
            cfg = config_from_json(parts.configs[part], kind)
            told.update({f"{part}.{k}": (v, str(parts.configs[part]))
                         for k, v in _leaves(config_lib.to_dict(cfg)).items() if k.split(".")[0] not in COMPUTE})
    shapes = resampler_shapes(parts.files["ip_adapter"])
    src = str(parts.files["ip_adapter"])
    told.update({f"resampler.{k}": (v, src) for k, v in shapes.items() if k != "inner"})
    told["unet.num_ip_tokens"] = (shapes["num_queries"], src)
    return told, shapes


def _sources(told) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for key, (_, src) in told.items():
        out.setdefault(key.split(".")[0], set()).add(src)
    return out


def _stated(key: str, set_keys: list[str], whole: str | None) -> str | None:
    """Who states ``key``: the ``--set`` naming it (or a section above it), else ``whole``."""
    for item in set_keys:
        k = item.split("=", 1)[0].strip()
        if key == k or key.startswith(k + "."):
            return f"--set {item}"
    return whole


def models_config(parts, base, stated: str | None, overrides=(), yaml_path: Path | None = None,
                  preset_name: str = "sd15") -> tuple[Any, list[str]]:
    """The ``ModelsConfig`` of the official set: ``base`` (the preset / --config with --set applied) where the
    folder is silent, the folder's values elsewhere. ``stated`` names --config / --preset when given (then every
    told field is compared); --set items are compared on the fields they name. Returns (cfg, report lines)."""
    from xdyna_jax.models import ModelsConfig

    told, shapes = folder_told(parts, yaml_path)
    data = config_lib.to_dict(base)
    have = _leaves(data)
    clashes = []
    for key, (value, src) in sorted(told.items()):
        who = _stated(key, list(overrides), stated)
        part = key.split(".")[0]
        if who is None:
            continue
        if data.get(part) is None:
            clashes.append(f"{part}: {who} says null, the folder has one ({src})")
        elif have.get(key) != value:
            clashes.append(f"{key}: {who} says {have.get(key)!r}, the folder says {value!r} ({src})")
    clashes = sorted(set(clashes))  # a null part clashes once, not once per field
    if clashes:
        raise PortingError("\n".join([f"the official set's configs disagree with the given config on "
                                      f"{len(clashes)} field(s) (drop or correct them):", *clashes]))
    for key, (value, _) in told.items():
        _set_leaf(data, key, value)
    r = data["resampler"]
    heads_from = _stated("resampler.heads", list(overrides), stated) or f"preset {preset_name}"
    if r["heads"] * r["dim_head"] != shapes["inner"]:
        raise PortingError(f"resampler.heads x resampler.dim_head: {heads_from} says {r['heads']} x {r['dim_head']} "
                           f"= {r['heads'] * r['dim_head']}, but {parts.files['ip_adapter']} has an attention width of "
                           f"{shapes['inner']} (to_q rows); the folder cannot tell the split: give "
                           f"--set resampler.heads=H --set resampler.dim_head=D with H x D = {shapes['inner']}")
    try:
        cfg = config_lib.from_dict(ModelsConfig, data, where="the official set's configs")
    except config_lib.ConfigError as e:
        raise PortingError(str(e)) from e
    lines = ["configs (the official set's own; untold settings from "
             f"{stated or 'preset ' + preset_name}{' and --set' if overrides else ''}):",
             *(f"  {p:<24} {' + '.join(sorted(s))}" for p, s in sorted(_sources(told).items())),
             f"  resampler.heads x dim_head = {r['heads']} x {r['dim_head']}: from {heads_from} "
             f"(the folder tells only their product, {shapes['inner']})"]
    if yaml_path is None:
        lines.append(f"  unet's X-Dyna settings ({', '.join(XDYNA_FIELDS)}): from "
                     f"{stated or 'preset ' + preset_name}, as no x_dyna.yaml was found")
    return cfg, lines
