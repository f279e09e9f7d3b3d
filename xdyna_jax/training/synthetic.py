"""The built-in synthetic training source: clips of the tiny world (``world.py``) in the loader's layout.

Every clip is a pure function of ``(seed, split, index)`` (``index`` = global sample number), so a batch
is a pure function of ``(seed, step)`` and does not depend on how many hosts draw it: host ``p`` of ``P``
draws its own rows of the global batch. Batches have the loader's layout (``data/loader.py``):
``frames (B, 1+F, H, W, 3)`` uint8 (frame 0 the reference), ``pose (B, F, H, W, 3)``, ``face (B, F, H, W, 6)``
and ``is_scene (B,)``. Scene clips (a fraction ``scene_ratio``) have no figure, an empty skeleton and
an all-black face condition, like the dataset's natural-scene videos. ``split`` ("train" / "test") picks
the world's stream; the test split's clips and figures are never drawn for training (``world`` module doc).
"""
from __future__ import annotations

import numpy as np

from .world import world_clip

LAYOUT = ("frames", "pose", "face", "is_scene")


def synthetic_clip(seed: int, index: int, frames: int, height: int, width: int, scene_ratio: float,
                   split: str = "train") -> dict:
    """One clip: reference + ``frames`` frames, pose and face conditions, and what the world drew."""
    return world_clip(seed, index, frames, height, width, scene_ratio, split)


def synthetic_batch(seed: int, step: int, batch_size: int, frames: int, height: int, width: int,
                    scene_ratio: float, rows: slice | None = None, split: str = "train") -> dict:
    """Rows ``rows`` (default: all) of the global batch of ``step``."""
    idx = range(batch_size)[rows or slice(None)]
    clips = [synthetic_clip(seed, step * batch_size + i, frames, height, width, scene_ratio, split) for i in idx]
    return {k: np.stack([c[k] for c in clips]) for k in LAYOUT}
