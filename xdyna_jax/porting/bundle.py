"""The X-Dyna bundle: every network in one folder, restored straight onto a mesh.

Layout of a bundle folder::

    params/        one Orbax checkpoint of {part: param tree} (parts as ``models.xdyna.PARTS``)
    config.yaml    the ``ModelsConfig`` (``face_controlnet: null`` when the bundle has none)
    bundle.json    {"format": "xdyna-jax-bundle", "version": 2, "parts": [...], "sources": {part: file,
                   "<part>_config": config.json (with --official/--hub)}}: what ``verify`` compares against
    report.txt     what came from where (UNet init-file keys, ...)
    tokenizer/     optional: the CLIPTokenizer files (vocab.json, merges.txt, ...)

``convert_bundle`` reads the official checkpoint set, ``save_bundle`` writes the folder (built in a
temporary sibling and renamed into place, so a failed run leaves nothing), ``load_bundle`` restores
the params from an abstract target (shapes + shardings) so each device reads only its shard,
``export_bundle`` writes every part back as an official-named ``.safetensors``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import yaml

from xdyna_jax import config as config_lib

from .io import PortingError, write_safetensors

# version 2: GEGLU ``proj`` columns interleaved (value i, gate i) so tensor parallelism splits them in pairs
FORMAT, VERSION = "xdyna-jax-bundle", 2
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                   "tokenizer.json", "added_tokens.json")
# the file each part is exported to (the Resampler flat, as IP-Adapter's "image_proj" sub-dict)
EXPORT_NAMES = {"unet": "unet.safetensors", "pose_controlnet": "pose_controlnet.safetensors",
                "face_controlnet": "face_controlnet.safetensors", "resampler": "image_proj.safetensors",
                "vae": "vae.safetensors", "image_encoder": "image_encoder.safetensors",
                "text_encoder": "text_encoder.safetensors"}


@dataclasses.dataclass
class Bundle:
    """What ``load_bundle`` found: the params, the config, which parts, and the tokenizer folder."""

    params: dict
    cfg: Any
    parts: tuple[str, ...]
    tokenizer: Path | None
    path: Path

    def require(self, *parts: str) -> None:
        missing = [p for p in parts if p not in self.parts]
        if missing:
            raise PortingError(f"{self.path}: the bundle has no {', '.join(missing)} "
                               f"(it holds {', '.join(self.parts) or 'nothing'})")

    def load_tokenizer(self):
        """The bundle's ``CLIPTokenizer``, or None when it ships none."""
        if self.tokenizer is None:
            return None
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(str(self.tokenizer))


# --- converting the official set ------------------------------------------------------------------

def convert_bundle(cfg, *, unet=None, unet_init=None, pose_controlnet=None, face_controlnet=None,
                   ip_adapter=None, vae=None, image_encoder=None, text_encoder=None) -> tuple[dict, Any, str]:
    """Params of every given official file, checked against ``cfg`` (a ``ModelsConfig``).

    Returns (params {part: tree}, cfg with ``face_controlnet=None`` when no face file was given,
    report text). A part whose file is not given is simply absent from the bundle.
    """
    from . import loaders

    params, lines = {}, []
    if unet is not None:
        if unet_init is not None:
            params["unet"], report = loaders.load_xdyna_unet(unet, unet_init, cfg.unet)
            lines += [f"unet: {unet} over {unet_init}", *("  " + s for s in str(report).splitlines())]
        else:
            params["unet"] = _strict(loaders.read_state_dict(unet), cfg.unet, unet)
            lines.append(f"unet: {unet}")
    elif unet_init is not None:
        raise PortingError("--unet-init goes with --unet (the X-Dyna checkpoint overlaid on it)")
    for part, path, load in (("pose_controlnet", pose_controlnet, loaders.load_controlnet),
                             ("face_controlnet", face_controlnet, loaders.load_controlnet),
                             ("resampler", ip_adapter, loaders.load_resampler),
                             ("vae", vae, loaders.load_vae),
                             ("image_encoder", image_encoder, loaders.load_clip_vision),
                             ("text_encoder", text_encoder, loaders.load_clip_text)):
        if path is None:
            continue
        part_cfg = getattr(cfg, part)
        if part_cfg is None:
            raise PortingError(f"{path}: the config has no {part} (set {part} in the config to convert it)")
        params[part], _ = load(path, part_cfg)
        lines.append(f"{part}: {path}")
    if not params:
        raise PortingError("nothing to convert: give at least one checkpoint")
    if "face_controlnet" not in params and cfg.face_controlnet is not None:
        cfg = dataclasses.replace(cfg, face_controlnet=None)
        lines.append("face_controlnet: none (pose-only X-Dyna)")
    return params, cfg, "\n".join(lines)


def _strict(state, part_cfg, where):
    from .convert import params_from_torch

    return params_from_torch(state, part_cfg, where=str(where), consume=True)  # state: read for this call only


# --- the folder -------------------------------------------------------------------------------------

def save_bundle(out, params: Mapping[str, Any], cfg, report: str = "", tokenizer=None,
                sources: Mapping[str, str] | None = None, force: bool = False, consume: bool = False) -> Path:
    """Write a bundle folder; it appears only when complete (built in a temporary sibling).

    ``consume``: ``params`` (nested dicts of host arrays) is the caller's to give up; its leaves are replaced in
    place by device arrays before saving: Orbax copies a numpy tree whole while writing it, but streams a tree of
    device arrays (benchmarks/porting_memory.py), and in place the host never holds both.
    """
    import orbax.checkpoint as ocp

    out = Path(out).absolute()
    unknown = sorted(set(params) - set(cfg.parts()))
    if unknown:
        raise PortingError(f"params hold {unknown}, which the config does not describe")
    if out.exists() and not force:
        raise PortingError(f"{out} exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise PortingError(f"{out.parent}: no such directory for the bundle")
    if consume:
        _to_device_in_place(params)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # one zarr array per param instead of OCDBT: OCDBT's writer buffers about 0.8x the tree at once, the
        # per-array writes stream (benchmarks/porting_memory.py); StandardCheckpointer restores either
        with ocp.Checkpointer(ocp.StandardCheckpointHandler(use_ocdbt=False)) as ckptr:
            ckptr.save(tmp / "params", args=ocp.args.StandardSave(dict(params)))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        meta = {"format": FORMAT, "version": VERSION, "parts": sorted(params), "sources": dict(sources or {})}
        (tmp / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n")
        (tmp / "report.txt").write_text(report + "\n")
        if tokenizer is not None:
            _copy_tokenizer(Path(tokenizer), tmp / "tokenizer")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _to_device_in_place(tree) -> None:
    for k, v in tree.items():
        if isinstance(v, dict):
            _to_device_in_place(v)
        else:
            tree[k] = jax.device_put(v)  # the host array goes with its last reference, one leaf at a time


def _copy_tokenizer(src: Path, dst: Path) -> None:
    found = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not {"vocab.json", "merges.txt"} <= set(found):
        raise PortingError(f"{src}: not a CLIPTokenizer folder (needs vocab.json and merges.txt)")
    dst.mkdir()
    for n in found:
        shutil.copy2(src / n, dst / n)


def read_bundle_meta(path) -> dict:
    """The ``bundle.json`` of a bundle folder, with errors naming the file."""
    path = Path(path)
    meta_file = path / "bundle.json"
    if not meta_file.is_file():
        raise PortingError(f"{path}: not a bundle folder (no bundle.json; write one with "
                           f"`python -m xdyna_jax.porting bundle`)")
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PortingError(f"{meta_file}: cannot read ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("parts"), list):
        raise PortingError(f"{meta_file}: not an {FORMAT} description (expected format, version, parts)")
    if meta.get("version") != VERSION:
        raise PortingError(f"{meta_file}: bundle version {meta.get('version')!r}, this code reads version {VERSION} "
                           f"(convert the official checkpoints again with `python -m xdyna_jax.porting bundle`)")
    return meta


def load_bundle(path, mesh=None, overrides=(), cfg=None, rules=None) -> Bundle:
    """Restore a bundle straight into (sharded) device arrays.

    The target is the config's abstract params with the shardings of ``mesh`` (one device when None),
    so a bundle written from any mesh restores onto any other; ``rules``: the mesh's rule table (default
    ``sharding.RULES``). ``overrides`` (``unet.dtype=bfloat16``)
    change compute settings of the stored config; ``cfg`` replaces it (its shapes must fit). A stored
    param whose shape does not fit the config is named with both shapes.
    """
    import orbax.checkpoint as ocp
    from flax import traverse_util

    from xdyna_jax.models import xdyna

    path = Path(path).absolute()
    meta = read_bundle_meta(path)
    if cfg is None:
        cfg = config_lib.load(xdyna.ModelsConfig, path / "config.yaml", overrides)
    parts = tuple(meta["parts"])
    extra = sorted(set(parts) - set(cfg.parts()))
    if extra:
        raise PortingError(f"{path}: the bundle holds {extra}, which the config does not describe")
    target = xdyna.abstract_params(cfg, mesh, rules)
    target = {p: target[p] for p in parts}
    if mesh is None:
        dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=dev), target)
    with ocp.StandardCheckpointer() as ckptr:
        try:
            stored = ckptr.metadata(path / "params")
        except (FileNotFoundError, ValueError, OSError) as e:
            raise PortingError(f"{path / 'params'}: cannot read the Orbax checkpoint ({e})") from e
        stored = getattr(stored, "item_metadata", stored)
        _check_fits(traverse_util.flatten_dict(dict(stored), sep="/"),
                    traverse_util.flatten_dict(target, sep="/"), path)
        params = ckptr.restore(path / "params", target)
    tok = path / "tokenizer"
    return Bundle(params=params, cfg=cfg, parts=parts, tokenizer=tok if tok.is_dir() else None, path=path)


def load_weights(folder) -> tuple[dict, object]:
    """(params {part: numpy tree}, ModelsConfig) of a folder of official-named ``.safetensors`` (``EXPORT_NAMES``)
    and our ``config.yaml`` (what ``export_bundle`` and the tiny world's recipe write), bf16 values widened to
    float32."""
    from xdyna_jax.models import xdyna

    folder = Path(folder)
    cfg = config_lib.load(xdyna.ModelsConfig, folder / "config.yaml")
    arg = {"resampler": "ip_adapter"}  # convert_bundle's keyword for the Resampler file
    files = {arg.get(p, p): str(folder / n) for p, n in EXPORT_NAMES.items() if (folder / n).is_file()}
    params, cfg, _ = convert_bundle(cfg, **files)
    return jax.tree.map(lambda v: np.asarray(v, np.float32), params), cfg


def _check_fits(stored: Mapping[str, Any], want: Mapping[str, Any], where) -> None:
    missing = sorted(set(want) - set(stored))
    unknown = sorted(set(stored) - set(want))
    bad = [f"{k}: the config expects {tuple(want[k].shape)}, the bundle holds {tuple(stored[k].shape)}"
           for k in sorted(set(want) & set(stored)) if tuple(stored[k].shape) != tuple(want[k].shape)]
    problems = []
    if bad:
        problems.append(f"{len(bad)} shape mismatch(es):\n  " + "\n  ".join(bad[:20]))
    if missing:
        problems.append(f"{len(missing)} param(s) missing from the bundle: {missing[:10]}")
    if unknown:
        problems.append(f"{len(unknown)} param(s) the config does not have: {unknown[:10]}")
    if problems:
        raise PortingError(f"{where}: the weights do not fit the config\n" + "\n".join(problems))


# --- export -----------------------------------------------------------------------------------------

def export_bundle(bundle: Bundle, out, dtype=None) -> list[Path]:
    """Every part as an official-named ``.safetensors`` in ``out`` (``EXPORT_NAMES``); returns the files."""
    from .convert import params_to_torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for part in bundle.parts:
        host = jax.tree.map(np.asarray, bundle.params[part])
        state = params_to_torch(host, getattr(bundle.cfg, part), dtype=dtype)
        target = out / EXPORT_NAMES[part]
        write_safetensors(state, target, metadata={"format": "pt", "source": "xdyna_jax", "part": part})
        written.append(target)
    return written
