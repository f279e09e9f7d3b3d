"""The official closed-loop context windows (spec §1.7; ``animatediff/utils/context.py:uniform``).

X-Dyna denoises a video of N frames in windows of ``size`` (16) frames that overlap by ``overlap``
(4), over a closed loop, shifted by a fresh ``offset`` (0..size-1) at every step:
  * N <= size: one window ``[0, ..., N-1]``; the offset is not applied.
  * N > size: for j = 0, s, 2s, ... < N (s = size - overlap) the window
    ``[(j + e + offset) mod N for e in 0..size-1]``, in that order (the last windows wrap around).
Frame order inside a window is the list order: the motion module's position encoding follows it.

The official call always passes ``step=0`` and ``context_stride=1``, so its ``ordered_halving`` pad
is 0 and its dilated windows never occur; neither is modelled here.

``context_windows`` works on numpy or traced jnp offsets: its shape depends only on N, so a jitted
loop gathers windows at fixed shapes whatever the offset.
"""
from __future__ import annotations

import math

import numpy as np


def _check(frames: int, size: int, overlap: int):
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"context windows need size >= 1 and 0 <= overlap < size, got {size}, {overlap}")


def window_count(frames: int, size: int = 16, overlap: int = 4) -> int:
    """Number of windows per step: 1 when ``frames <= size``, else ceil(frames / (size - overlap))."""
    _check(frames, size, overlap)
    return 1 if frames <= size else math.ceil(frames / (size - overlap))


def window_length(frames: int, size: int = 16) -> int:
    """Frames per window: ``size``, or all frames when the video is not longer than one window."""
    return min(frames, size)


def context_windows(frames: int, offset=0, size: int = 16, overlap: int = 4, xp=np):
    """Index array ``(window_count, window_length)`` of the windows of one step, in official order.

    frames, size, overlap: static ints. offset: an int, or a (traced) integer scalar with ``xp=jnp``.
    """
    n = window_count(frames, size, overlap)
    if frames <= size:
        return xp.arange(frames, dtype=xp.int32)[None, :]
    starts = xp.arange(n, dtype=xp.int32) * (size - overlap)
    local = xp.arange(size, dtype=xp.int32)
    return (starts[:, None] + local[None, :] + xp.asarray(offset, dtype=xp.int32)) % frames
