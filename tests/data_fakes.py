"""Small generated videos and a fake ``conditions_fn`` for the data tests (and the CLI test, by import path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def make_video(path: Path, n_frames: int = 12, height: int = 48, width: int = 64, seed: int = 0, fps: int = 8):
    """A small moving-gradient H.264 mp4; returns the path."""
    from xdyna_jax.data.video import write_video

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, 3)
    frames = np.stack([np.stack([(xx * 4 + t * 9 + base[0]) % 256, (yy * 5 + t * 3 + base[1]) % 256,
                                 np.full_like(xx, (t * 20 + base[2]) % 256)], -1) for t in range(n_frames)])
    return write_video(path, frames.astype(np.uint8), fps=fps)


def make_folder(root: Path, n_videos: int = 3, corrupt: bool = True, n_frames: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_videos):
        make_video(root / f"v{i}.mp4", n_frames=n_frames + i, seed=i)
    if corrupt:
        (root / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a real video" * 4)
    return root


def fake_conditions(frames: np.ndarray) -> dict:
    """Deterministic stand-in: pose = inverted frames, face = (frames, frames // 2)."""
    t = frames.shape[0]
    return {"pose": (255 - frames).astype(np.uint8),
            "face": np.concatenate([frames, frames // 2], axis=-1).astype(np.uint8),
            "meta": {"detections": t - 1, "misses": 1}}


def picky_conditions(frames: np.ndarray) -> dict:
    """``fake_conditions``, except on some videos (by frame count, which ``make_folder`` varies): 5 frames
    -> no person in any frame; 6 frames -> the model raises; 7 frames -> a face of the wrong shape."""
    t = frames.shape[0]
    if t == 6:
        raise RuntimeError("pose model crashed on this video")
    out = fake_conditions(frames)
    if t == 5:
        out["meta"] = {"detections": 0, "misses": t}
    if t == 7:
        out["face"] = out["face"][..., :3]
    return out
