"""Pixel-side helpers of the sampler: ControlNet condition range in, video frames out."""
from __future__ import annotations

import jax.numpy as jnp


def normalize_condition(cond):
    """Clip-global min-max normalisation of a ControlNet condition (spec §7.3, ``prepare_condition``).

    cond: (..., F, H, W, C), one clip per leading index, usually the [-1, 1] images (x / 127.5 - 1).
    Min and max are taken over all frames, pixels and channels of each clip, so a dim clip is
    contrast-stretched to [0, 1]. A constant clip (the official code divides by zero there) gives 0.
    Local and global face maps are separate clips: normalise each, then concatenate them.
    """
    cond = jnp.asarray(cond, jnp.float32)
    axes = tuple(range(cond.ndim - 4, cond.ndim))
    lo = cond.min(axis=axes, keepdims=True)
    span = cond.max(axis=axes, keepdims=True) - lo
    return jnp.where(span > 0, (cond - lo) / jnp.where(span > 0, span, 1.0), 0.0)


def to_uint8(frames01, round: bool = False):
    """Decoded frames in [0, 1] to uint8: ``x * 255`` truncated as the official writer (spec §1.9),
    or rounded with ``round=True``."""
    x = jnp.clip(jnp.asarray(frames01, jnp.float32), 0.0, 1.0) * 255.0
    return (jnp.round(x) if round else jnp.floor(x)).astype(jnp.uint8)
