"""Which generated video goes with which driving video (and reference image), and the frames compared.

Pairing is by file name without extension (``a.mp4`` generated goes with ``a.mov`` driving and ``a.png``
reference). Every video (``VIDEO_EXTENSIONS``) and, with ``--reference``, every image must have its partner:
otherwise one error lists all unpaired files. Files of other extensions are not evaluated and are listed in
the summary as ignored. Every paired file is opened and its first frame decoded before any work; one error
lists every unreadable file.

Frame rule: the generated video's frames ``0..N_gen-1`` are compared with the driving frames ``0, s, 2s, ...``
(``--stride s``, default 1), both capped at ``--max-frames``; the first ``min(N_gen, N_drv)`` frames of each
are compared and both counts are reported. Frame size: with ``--size H W`` both are resized to it, else the
generated frames are resized to the driving size when they differ (OpenCV area / bilinear).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from xdyna_jax.cli import UserError
from xdyna_jax.data.files import IMAGE_EXTENSIONS, read_image
from xdyna_jax.data.video import VideoError, read_video

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".gif")
MIN_SIDE = 32  # SSIM's 11x11 window and LPIPS's AlexNet need a few pixels


@dataclass(frozen=True)
class Pair:
    name: str                    # the generated file's name: the key in metrics.json
    generated: Path
    driving: Path
    reference: Optional[Path] = None


def list_folder(folder: Path, option: str, extensions: tuple, what: str) -> tuple[dict[str, Path], list[Path]]:
    """``({stem: path}, ignored)`` of the files in ``folder`` with one of ``extensions``."""
    if not folder.exists():
        raise UserError(f"{option} {folder}: no such folder (expected a folder of {what})")
    if not folder.is_dir():
        raise UserError(f"{option} {folder}: is a file, not a folder (expected a folder of {what})")
    found: dict[str, Path] = {}
    ignored = []
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in extensions:
            ignored.append(p)
            continue
        if p.stem in found:
            raise UserError(f"{option} {folder}: {found[p.stem].name} and {p.name} have the same name "
                            f"(files are paired by name without extension; keep one)")
        found[p.stem] = p
    if not found:
        raise UserError(f"{option} {folder}: no {what} in the folder (expected files ending in "
                        f"{', '.join(extensions)})")
    return found, ignored


def pair_folders(generated: Path, driving: Path, reference: Optional[Path] = None) -> tuple[list[Pair], list[Path]]:
    """``(pairs, ignored files)``; a ``UserError`` lists every file without its partner."""
    gen, ign_g = list_folder(generated, "--generated", VIDEO_EXTENSIONS, "videos")
    drv, ign_d = list_folder(driving, "--driving", VIDEO_EXTENSIONS, "videos")
    ref, ign_r = (list_folder(reference, "--reference", IMAGE_EXTENSIONS, "images") if reference is not None
                  else ({}, []))
    missing = [f"generated {p.name} has no driving video in {driving}" for s, p in gen.items() if s not in drv]
    missing += [f"driving {p.name} has no generated video in {generated}" for s, p in drv.items() if s not in gen]
    if reference is not None:
        missing += [f"generated {p.name} has no reference image in {reference}" for s, p in gen.items()
                    if s not in ref]
        missing += [f"reference {p.name} has no generated video in {generated}" for s, p in ref.items()
                    if s not in gen]
    if missing:
        raise UserError(f"{len(missing)} unpaired file(s), files are paired by name without extension: "
                        + "; ".join(missing))
    pairs = [Pair(p.name, p, drv[s], ref.get(s)) for s, p in sorted(gen.items())]
    return pairs, ign_g + ign_d + ign_r


def check_readable(pairs: list[Pair], sized: bool = False) -> None:
    """Decode the first frame of every video and read every reference; one error lists every failure.
    Driving frames (the compared size, unless ``sized``: ``--size`` given) must be ``MIN_SIDE`` px a side."""
    bad = []
    for pair in pairs:
        for path in (pair.generated, pair.driving):
            try:
                first = read_video(path, max_frames=1)
            except VideoError as e:
                bad.append(str(e))
                continue
            h, w = first.shape[1:3]
            if path == pair.driving and not sized and min(h, w) < MIN_SIDE:
                bad.append(f"{path}: frames are {h}x{w} (expected at least {MIN_SIDE} px a side for SSIM and "
                           f"LPIPS; or give --size H W)")
        if pair.reference is not None:
            try:
                read_image(pair.reference)
            except UserError as e:
                bad.append(str(e))
    if bad:
        raise UserError(f"{len(bad)} unreadable file(s): " + "; ".join(dict.fromkeys(bad)))


def resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``(T, H, W, 3)`` frames resized to ``size`` = (H, W) (area when shrinking, else bilinear)."""
    import cv2

    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    interp = cv2.INTER_AREA if h * w < frames.shape[1] * frames.shape[2] else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in frames])


def load_driving(path: Path, stride: int = 1, max_frames: Optional[int] = None,
                 size: Optional[tuple[int, int]] = None) -> np.ndarray:
    frames = read_video(path, stride=stride, max_frames=max_frames)
    return resize(frames, size) if size else frames
