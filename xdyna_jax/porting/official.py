"""Finding every part of the official ``pretrained_weights/`` folder, laid out as bytedance/X-Dyna's README.

The layout (``LAYOUT``; paths relative to ``pretrained_weights/``) comes from the official README's file tree
(the X-Dyna checkpoints, ``initialization/...``) and, below the folders that tree stops at, from what the
official code reads: ``scripts/inference*.sh`` pass ``IP-Adapter/IP-Adapter/models/image_encoder`` and
``.../models/ip-adapter-plus_sd15.bin``; ``inference_xdyna.py`` reads SD1.5's ``vae``, ``text_encoder`` and
``tokenizer`` sub-folders; ``UNet3DConditionModel.from_pretrained_ip`` reads ``unet/config.json`` and
``unet/animatediff_v15_v1_ipplus.pth``. The scripts pass the checkpoint *folders* (``./pretrained_weights/unet/``)
where the README names files, so both are accepted: the named file, else the one checkpoint in its folder.
The S-Face ControlNet is optional (pose-only X-Dyna without it).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from .io import PortingError

CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin", ".safetensors")
SD = "initialization/unet_initialization/SD/stable-diffusion-v1-5"
IP_ADAPTER = "initialization/unet_initialization/IP-Adapter/IP-Adapter"
POSE_INIT = "initialization/controlnets_initialization/controlnet/control_v11p_sd15_openpose"
FACE_INIT = "initialization/controlnets_initialization/controlnet_face/controlnet2"
XDYNA_YAML = "configs/x_dyna.yaml"  # in the official repository, beside pretrained_weights/


@dataclasses.dataclass(frozen=True)
class Entry:
    key: str   # a convert_bundle keyword, "tokenizer", or "<part>_config"
    path: str  # relative to pretrained_weights/
    kind: str  # checkpoint (the file, or the one checkpoint in its folder), file, diffusers, transformers, tokenizer


LAYOUT = (
    Entry("unet", "unet/unet-checkpoint-epoch-5.ckpt", "checkpoint"),
    Entry("unet_init", f"{SD}/unet/animatediff_v15_v1_ipplus.pth", "file"),
    Entry("unet_config", f"{SD}/unet/config.json", "file"),
    Entry("pose_controlnet", "controlnet/controlnet-checkpoint-epoch-5.ckpt", "checkpoint"),
    Entry("pose_controlnet_config", f"{POSE_INIT}/config.json", "file"),
    Entry("face_controlnet", "controlnet_face/controlnet-face-checkpoint-epoch-2.ckpt", "checkpoint"),
    Entry("face_controlnet_config", f"{FACE_INIT}/config.json", "file"),
    Entry("ip_adapter", f"{IP_ADAPTER}/models/ip-adapter-plus_sd15.bin", "file"),
    Entry("image_encoder", f"{IP_ADAPTER}/models/image_encoder", "transformers"),
    Entry("vae", f"{SD}/vae", "diffusers"),
    Entry("text_encoder", f"{SD}/text_encoder", "transformers"),
    Entry("tokenizer", f"{SD}/tokenizer", "tokenizer"),
)
OPTIONAL = ("face_controlnet", "face_controlnet_config")  # the face config is needed only with its checkpoint
_NEEDS = {"diffusers": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
          "transformers": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
          "tokenizer": (("vocab.json",), ("merges.txt",))}


@dataclasses.dataclass(frozen=True)
class Roots:
    """Where ``LAYOUT``'s relative paths live: (prefix, folder, label) mounts, most specific first. A local
    folder is one mount at ""; a hub download mounts each repository's snapshot where the README puts it."""

    mounts: tuple[tuple[str, Path, str], ...]  # label: "" for a local folder, else where the snapshot is from

    def candidates(self, rel: str) -> list[tuple[Path, str]]:
        return [(folder / rel[len(prefix):].lstrip("/"), label) for prefix, folder, label in self.mounts
                if rel == prefix or rel.startswith(prefix + "/") or not prefix]


def folder_roots(folder) -> Roots:
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise PortingError(f"--official {folder}: no such folder (expected the official pretrained_weights/)")
    return Roots((("", folder, ""),))


@dataclasses.dataclass
class OfficialParts:
    files: dict[str, Path]      # convert_bundle keyword -> file or folder
    tokenizer: Path | None
    configs: dict[str, Path]    # part -> its config.json
    lines: list[str]            # what was found, and from which file


_NAMED = {e.key: Path(e.path).name for e in LAYOUT if e.kind in ("checkpoint", "file") and "config" not in e.key}


def given_file(key: str, path) -> Path:
    """A part's file as given by flag: a file, or a folder holding one checkpoint (the official scripts pass
    ``./pretrained_weights/unet/``); a ControlNet may also be a diffusers folder."""
    path = Path(path)
    if key not in _NAMED or not path.is_dir():
        return path
    if "controlnet" in key and any(path.glob("diffusion_pytorch_model.*")):
        return path
    found, problem = _one_checkpoint(path, _NAMED[key])
    option = f"--{key.replace('_', '-')}"
    if problem:
        raise PortingError(f"{option} {problem}")
    if found is None:
        raise PortingError(f"{option} {path}/: no checkpoint file in this folder "
                           f"(expected one {' / '.join(CHECKPOINT_SUFFIXES)} file, e.g. {_NAMED[key]})")
    return found


def _one_checkpoint(folder: Path, preferred: str | None) -> tuple[Path | None, str | None]:
    if preferred and (folder / preferred).is_file():
        return folder / preferred, None
    ckpts = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES)
    if len(ckpts) == 1:
        return ckpts[0], None
    if ckpts:
        return None, (f"{folder}/: {len(ckpts)} checkpoint files ({', '.join(p.name for p in ckpts)}), "
                      f"expected one (keep one, or name it with the part's option)")
    return None, None


def _find(roots: Roots, entry: Entry) -> tuple[Path | None, str | None]:
    """(the path, or None) and a problem other than absence (several checkpoints in one folder)."""
    for cand, _ in roots.candidates(entry.path):
        if entry.kind == "checkpoint":
            if cand.is_file():
                return cand, None
            if cand.parent.is_dir():
                found, problem = _one_checkpoint(cand.parent, cand.name)
                if found or problem:
                    return found, problem
        elif entry.kind == "file":
            if cand.is_file():
                return cand, None
        elif cand.is_dir() and all(any((cand / n).is_file() for n in names) for names in _NEEDS[entry.kind]):
            return cand, None
    return None, None


def _expected(roots: Roots, entry: Entry) -> str:
    """Where ``entry`` was looked for (every mount that could hold it, on a hub download)."""
    places = []
    for where, label in roots.candidates(entry.path):
        if entry.kind == "checkpoint":
            what = f"{where} (or the one checkpoint in {where.parent}/)"
        elif entry.kind == "file":
            what = str(where)
        else:
            what = f"{where}/ with " + " and ".join(" or ".join(names) for names in _NEEDS[entry.kind])
        places.append(what + (f" (from {label})" if label else ""))
    return f"{entry.key}: " + ", or ".join(places)


def find_parts(roots: Roots, given: Mapping[str, str] | None = None, tokenizer=None,
               where: str = "") -> OfficialParts:
    """Every part of the official set under ``roots``. ``given`` (convert_bundle keyword -> path) and
    ``tokenizer`` replace single parts (their files need not be in the folder). All missing files are named in
    one error, each with the path where it was expected."""
    given = {k: given_file(k, v) for k, v in (given or {}).items() if v is not None}
    if tokenizer is not None:
        given["tokenizer"] = Path(tokenizer)
    found: dict[str, Path] = {}
    missing, problems, lines = [], [], [f"official set: {where or roots.mounts[-1][1]}"]
    for entry in LAYOUT:
        if entry.key in given:
            found[entry.key] = given[entry.key]
            continue
        path, problem = _find(roots, entry)
        if problem:
            problems.append(problem)
        elif path is not None:
            found[entry.key] = path
        elif entry.key not in OPTIONAL:
            missing.append(_expected(roots, entry))
    if "face_controlnet" in found and "face_controlnet_config" not in found:
        missing.append(_expected(roots, next(e for e in LAYOUT if e.key == "face_controlnet_config")))
    if missing or problems:
        head = f"{len(missing)} required file(s) missing from the official set" if missing else "the official set"
        raise PortingError("\n".join([f"{head} ({where or roots.mounts[-1][1]}):", *missing, *problems]))
    files = {k: v for k, v in found.items() if not k.endswith("_config") and k != "tokenizer"}
    configs = {k[: -len("_config")]: v for k, v in found.items() if k.endswith("_config")}
    for part in ("vae", "text_encoder", "image_encoder"):
        if part not in given:  # a folder's own config.json (a given weights file: the folder's still)
            configs[part] = found[part] / "config.json"
        else:
            configs[part] = _config_beside(roots, part, given[part])
    if "face_controlnet" not in found:
        configs.pop("face_controlnet", None)
    for key, path in found.items():
        note = f" (given with --{key.replace('_', '-')})" if key in given else ""
        lines.append(f"  {key:<24} {path}{note}")
    if "face_controlnet" not in found:
        lines.append(f"  {'face_controlnet':<24} none: no checkpoint in controlnet_face/ (pose-only X-Dyna)")
    return OfficialParts(files=files, tokenizer=found.get("tokenizer"), configs=configs, lines=lines)


def _config_beside(roots: Roots, part: str, given: Path) -> Path:
    """The config.json of a part given by flag: its own folder's, else the official folder's."""
    if given.is_dir() and (given / "config.json").is_file():
        return given / "config.json"
    entry = next(e for e in LAYOUT if e.key == part)
    for cand, _ in roots.candidates(entry.path):
        if (cand / "config.json").is_file():
            return cand / "config.json"
    raise PortingError(f"--{part.replace('_', '-')} {given}: no config.json beside it, nor in the official "
                       f"folder ({roots.candidates(entry.path)[0][0]}/config.json)")


def find_xdyna_yaml(explicit, search: list[Path]) -> tuple[Path | None, str]:
    """x_dyna.yaml (``unet_additional_kwargs``): ``explicit``, else ``configs/x_dyna.yaml`` in ``search``
    (the official repository keeps it beside pretrained_weights/, not inside). Returns (path, note)."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise PortingError(f"--xdyna-yaml {path}: no such file (expected the official configs/x_dyna.yaml)")
        return path, f"x_dyna.yaml: {path} (given with --xdyna-yaml)"
    for folder in search:
        if (folder / XDYNA_YAML).is_file():
            return folder / XDYNA_YAML, f"x_dyna.yaml: {folder / XDYNA_YAML}"
    looked = ", ".join(str(f / XDYNA_YAML) for f in search) or "nowhere (give --xdyna-yaml)"
    return None, f"x_dyna.yaml: not found (looked at {looked})"
