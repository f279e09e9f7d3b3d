"""The official checkpoint set from the Hugging Face Hub: only the files the bundle needs, into the hub's cache.

Three repositories, each mounted where bytedance/X-Dyna's README puts it inside ``pretrained_weights/``:
  * ``Boese0601/X-Dyna`` (the README's model link; "put all of them under pretrained_weights/"): the three
    X-Dyna checkpoints, the ControlNet init folders' ``config.json`` and the UNet init file
    ``animatediff_v15_v1_ipplus.pth`` (looked up in the SD1.5 snapshot first, then here);
  * ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (the README's SD1.5 link) at ``.../SD/stable-diffusion-v1-5``:
    ``unet/config.json`` (not the SD UNet weights: the X-Dyna checkpoint and init file replace them), vae,
    text_encoder, tokenizer;
  * ``h94/IP-Adapter`` (the repository the README's ``IP-Adapter/IP-Adapter`` folder is a clone of) at
    ``.../IP-Adapter/IP-Adapter``: ``models/image_encoder`` and ``models/ip-adapter-plus_sd15.bin``.
``huggingface_hub.snapshot_download`` does the work: progress bars, resumed downloads, the normal cache
(``HF_HUB_CACHE`` / ``HF_HOME``), and offline use from that cache (``HF_HUB_OFFLINE=1`` or ``--offline``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

from . import official
from .io import PortingError

XDYNA_REPO = "Boese0601/X-Dyna"
SD_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
IP_ADAPTER_REPO = "h94/IP-Adapter"


@dataclasses.dataclass(frozen=True)
class Source:
    repo: str
    mount: str                  # where the README puts this repository inside pretrained_weights/
    patterns: tuple[str, ...]   # allow_patterns: the files the bundle reads, nothing else


# most specific mount first: a path under SD/ is looked up in the SD1.5 snapshot before the X-Dyna one
SOURCES = (
    Source(SD_REPO, official.SD, ("unet/config.json", "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
                                  "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*")),
    Source(IP_ADAPTER_REPO, official.IP_ADAPTER, ("models/image_encoder/config.json",
                                                  "models/image_encoder/model.safetensors",
                                                  "models/ip-adapter-plus_sd15.bin")),
    Source(XDYNA_REPO, "", ("unet/unet-checkpoint-epoch-5.ckpt", "controlnet/controlnet-checkpoint-epoch-5.ckpt",
                            "controlnet_face/controlnet-face-checkpoint-epoch-2.ckpt",
                            f"{official.POSE_INIT}/config.json", f"{official.FACE_INIT}/config.json",
                            f"{official.SD}/unet/animatediff_v15_v1_ipplus.pth")),
)


def parse_revisions(items: Sequence[str]) -> dict[str, str]:
    """``--revision REV`` (the X-Dyna repository) or ``--revision OWNER/NAME=REV``, repeatable."""
    known = {s.repo for s in SOURCES}
    out = {}
    for item in items:
        repo, rev = item.split("=", 1) if "=" in item else (XDYNA_REPO, item)
        if repo not in known or not rev:
            raise PortingError(f"--revision {item}: expected REV (for {XDYNA_REPO}) or REPO=REV with REPO one of "
                               f"{', '.join(sorted(known))}")
        out[repo] = rev
    return out


def cache_dir() -> Path:
    """The hub cache, read from the environment now (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def offline_env() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def download(revisions: dict[str, str] | None = None, offline: bool = False) -> tuple[official.Roots, list[str]]:
    """Each source's snapshot (downloaded, or from the cache when offline), mounted as the README lays them out.
    Every repository or revision that cannot be had is named, all in one error."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, \
        RevisionNotFoundError

    revisions = revisions or {}
    offline = offline or offline_env()
    cache = cache_dir()
    mounts, problems, lines = [], [], [f"hub cache: {cache}" + (" (offline)" if offline else "")]
    for src in SOURCES:
        rev = revisions.get(src.repo, "main")
        try:
            path = snapshot_download(src.repo, revision=rev, allow_patterns=list(src.patterns),
                                     cache_dir=str(cache), local_files_only=offline)
        except LocalEntryNotFoundError:  # offline, or the Hub unreachable, and not in the cache
            problems.append(_not_cached(src.repo, rev, cache, offline))
            continue
        except RevisionNotFoundError:
            problems.append(f"{src.repo}: the Hub has no revision {rev!r}")
            continue
        except RepositoryNotFoundError as e:  # also gated / private without a token
            problems.append(f"{src.repo}: repository not found or not accessible on the Hub ({type(e).__name__})")
            continue
        except HfHubHTTPError as e:
            problems.append(f"{src.repo}@{rev}: download failed ({(str(e).splitlines() or [type(e).__name__])[0]})")
            continue
        mounts.append((src.mount, Path(path), f"{src.repo}@{rev}"))
        lines.append(f"  {src.repo}@{rev}: {path}")
    if problems:
        raise PortingError("\n".join(["cannot get the official set from the Hugging Face Hub:", *problems]))
    return official.Roots(tuple(mounts)), lines


def _not_cached(repo: str, rev: str, cache: Path, offline: bool) -> str:
    why = ("offline (HF_HUB_OFFLINE=1 or --offline): download it once online" if offline
           else "and the Hub could not be reached")
    folder = cache / ("models--" + repo.replace("/", "--"))
    if not folder.is_dir():
        return f"{repo}: not in the Hugging Face cache (expected {folder}); {why}"
    refs = sorted(p.name for p in (folder / "refs").glob("*")) if (folder / "refs").is_dir() else []
    snaps = sorted(p.name for p in (folder / "snapshots").glob("*")) if (folder / "snapshots").is_dir() else []
    return (f"{repo}: revision {rev!r} not in the Hugging Face cache ({folder}: refs {refs or 'none'}, "
            f"snapshots {snaps or 'none'}); {why}")
