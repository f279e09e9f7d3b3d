"""Known corruptions of a driving clip, to check that the metrics rank them as expected.

For each driving video: a clean clip (``frames`` frames, every ``stride``-th, optionally resized), and four
"generated" copies: ``blur`` (Gaussian, sigma ``BLUR_SIGMA`` px), ``noise`` (Gaussian, sigma ``NOISE_SIGMA``
grey levels), ``shift`` (the clip starting ``SHIFT`` sampled frames later) and ``frozen`` (the first frame
repeated). ``write_corrupted_copies`` writes ``generated/<stem>_<kind>.mp4`` and, as their driving videos,
byte-identical copies ``driving/<stem>_<kind>.mp4`` of the clean clip; the eval CLI then pairs them by name.
Used by the tests and by ``tools/eval/corrupted_examples.py`` (the measured table of ``docs/EVAL.md``).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from xdyna_jax.data.video import read_video, write_video

CORRUPTIONS = ("blur", "noise", "shift", "frozen")
BLUR_SIGMA, NOISE_SIGMA, SHIFT = 1.0, 8.0, 2


def corrupted(frames: np.ndarray, n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``kind`` applied to the first ``n`` of uint8 ``frames`` (at least ``n + SHIFT`` of them for 'shift')."""
    import cv2

    clean = frames[:n]
    if kind == "blur":
        return np.stack([cv2.GaussianBlur(f, (0, 0), BLUR_SIGMA) for f in clean])
    if kind == "noise":
        return np.clip(clean + rng.normal(0, NOISE_SIGMA, clean.shape), 0, 255).astype(np.uint8)
    if kind == "shift":
        if len(frames) < n + SHIFT:
            raise ValueError(f"'shift' needs {n + SHIFT} frames, got {len(frames)}")
        return frames[SHIFT:SHIFT + n]
    if kind == "frozen":
        return np.repeat(clean[:1], n, 0)
    raise ValueError(f"kind must be one of {CORRUPTIONS}, got {kind!r}")


def write_corrupted_copies(videos: Sequence[Path], root: Path, frames: int = 16, stride: int = 8,
                           size: Optional[tuple[int, int]] = None, seed: int = 0) -> list[str]:
    """``root/generated`` and ``root/driving`` for every video of ``videos``; returns the file names."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "generated").mkdir(parents=True, exist_ok=True)
    (root / "driving").mkdir(exist_ok=True)
    names = []
    for video in map(Path, videos):
        fr = read_video(video, stride=stride, max_frames=frames + SHIFT)
        if len(fr) < frames + SHIFT:
            raise ValueError(f"{video}: {len(fr)} frames at stride {stride}, need {frames + SHIFT}")
        if size is not None:
            fr = np.stack([cv2.resize(f, (size[1], size[0]), interpolation=cv2.INTER_AREA) for f in fr])
        clean = root / f"{video.stem}_clean.mp4"
        write_video(clean, fr[:frames])
        for kind in CORRUPTIONS:
            name = f"{video.stem}_{kind}.mp4"
            write_video(root / "generated" / name, corrupted(fr, frames, kind, rng))
            shutil.copy(clean, root / "driving" / name)  # same bytes: the driving side is computed once
            names.append(name)
    return names
