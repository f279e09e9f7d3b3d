"""AnimateDiff v1 "Vanilla" motion module, with X-Dyna's reference-frame bypass (``cross_id``).

Param path: ``motion_modules_i/temporal_transformer/{norm,proj_in,transformer_blocks_k,proj_out}``.
The sinusoidal position encoding is a deterministic buffer in the official state dict; here it is
recomputed (``sinusoidal_position_encoding``) and never stored as a parameter.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from .attention import TemporalAttention
from .configs import MotionConfig
from .layers import Dense, FeedForward, GroupNorm, LayerNorm


def sinusoidal_position_encoding(max_len: int, dim: int) -> np.ndarray:
    """The official ``PositionalEncoding.pe[0]`` (max_len, dim), float32 as torch computes it."""
    position = np.arange(max_len, dtype=np.float32)[:, None]
    div_term = np.exp(np.arange(0, dim, 2).astype(np.float32) * np.float32(-math.log(10000.0) / dim))
    pe = np.zeros((max_len, dim), np.float32)
    pe[:, 0::2] = np.sin(position * div_term)
    pe[:, 1::2] = np.cos(position * div_term[: dim // 2])
    return pe


class TemporalTransformerBlock(nn.Module):
    cfg: MotionConfig
    backend: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h):  # (B, F, N, C)
        c, frames = h.shape[-1], h.shape[1]
        pe = None
        if self.cfg.temporal_position_encoding:
            max_len = self.cfg.temporal_position_encoding_max_len
            if frames > max_len:
                raise ValueError(f"motion module: {frames} frames exceed temporal_position_encoding_max_len={max_len}")
            pe = jnp.asarray(sinusoidal_position_encoding(max_len, c)[:frames])
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        for i, _ in enumerate(self.cfg.attention_block_types):
            n = LayerNorm(name=f"norms_{i}", **kw)(h)
            h = h + TemporalAttention(self.cfg.num_attention_heads, self.backend,
                                      name=f"attention_blocks_{i}", **kw)(n, pe)
        return h + FeedForward(name="ff", **kw)(LayerNorm(name="ff_norm", **kw)(h))


class TemporalTransformer(nn.Module):
    cfg: MotionConfig
    backend: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # (B, F, H, W, C)
        b, f, hh, ww, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm(self.cfg.norm_num_groups, 1e-6, batch_dims=2, name="norm", **kw)(x)
        h = Dense(c, name="proj_in", **kw)(h.reshape(b, f, hh * ww, c))
        for i in range(self.cfg.num_transformer_block):
            h = TemporalTransformerBlock(self.cfg, self.backend, name=f"transformer_blocks_{i}", **kw)(h)
        h = Dense(c, zero_init=self.cfg.zero_initialize, name="proj_out", **kw)(h)
        return h.reshape(x.shape) + x


class MotionModule(nn.Module):
    """``VanillaTemporalModule``: with ``cross_id`` frame 0 passes through untouched, and the
    temporal positions 0.. belong to frames 1.. in the order given."""

    cfg: MotionConfig
    backend: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        tt = TemporalTransformer(self.cfg, self.backend, self.dtype, self.param_dtype, name="temporal_transformer")
        if not self.cfg.cross_id:
            return tt(x)
        return jnp.concatenate([x[:, :1], tt(x[:, 1:])], axis=1)
