"""UNet building blocks shared by the 3D UNet and the (per-frame) ControlNet.

Every tensor is channels-last with an explicit frame axis, (B, F, H, W, C); the ControlNet uses
F = 1. Param names mirror the official modules (``resnets_0/norm1``, ``attentions_0/proj_in``...).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from xdyna_jax import sharding

from . import remat as remat_lib
from .attention import CrossAttention, SelfAttention
from .configs import MotionConfig
from .layers import Conv, Dense, FeedForward, GroupNorm, LayerNorm
from .motion import MotionModule


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """What one down/mid/up block needs to know, resolved from a model config."""

    out_channels: int
    num_layers: int
    heads: int
    has_attention: bool
    has_motion: bool
    add_sampler: bool
    groups: int = 32
    eps: float = 1e-5
    inflated_gn: bool = False
    time_scale_shift: str = "default"
    attn1_mode: str = "default"
    num_ip_tokens: int = 0
    linear_projection: bool = False
    motion: MotionConfig = MotionConfig()
    backend: str = "xla"
    remat: bool | str = False  # a models/remat.py policy
    remat_tie: bool = True  # models/remat.py tied_checkpoint (False: plain nn.remat)
    query_chunk: int = 0


def _remat(cls, spec: BlockSpec):
    return remat_lib.wrap(cls, spec.remat, spec.remat_tie)


# The residual stream between blocks, (B, F, H, W, C): batch over the data-parallel axes, channels whole
# (``act_embed``, see sharding.RULES). Pinned at every remat boundary, so what a block saves for the backward
# is laid out by the rule table rather than by XLA's propagation; a no-op outside sharding.activation_sharding.
RESIDUAL = ("batch", None, None, None, "act_embed")


def pin(h):
    return sharding.constrain(h, RESIDUAL)


class ResnetBlock3D(nn.Module):
    """``ResnetBlock3D``. Its GroupNorms pool statistics over all frames unless ``inflated_gn``."""

    out_channels: int
    spec: BlockSpec
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, temb):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bd = 2 if s.inflated_gn else 1
        h = GroupNorm(s.groups, s.eps, batch_dims=bd, name="norm1", **kw)(x)
        # conv1 -> norm2 -> conv2 is a Megatron pair over ``conv_mid`` (see sharding.RULES)
        h = Conv(self.out_channels, axes=("conv_in", "conv_mid"), name="conv1", **kw)(nn.silu(h))
        scale_shift = s.time_scale_shift == "scale_shift"
        # [scale | shift] would put all scales on one device and all shifts on another: keep it whole
        t_axes = ("embed", "embed") if scale_shift else ("embed", "conv_mid")
        t = Dense(self.out_channels * (2 if scale_shift else 1), axes=t_axes, name="time_emb_proj", **kw)(
            nn.silu(temb))
        t = t[:, None, None, None, :]
        if not scale_shift:
            h = h + t
        h = GroupNorm(s.groups, s.eps, batch_dims=bd, name="norm2", **kw)(h)
        if scale_shift:
            scale, shift = jnp.split(t, 2, axis=-1)
            h = h * (1 + scale) + shift
        h = Conv(self.out_channels, axes=("conv_mid", "conv_out"), name="conv2", **kw)(nn.silu(h))
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, kernel_size=1, padding=0, name="conv_shortcut", **kw)(x)
        return x + h


class TransformerBlock(nn.Module):
    """``BasicTransformerBlock``: attn1 (self / adapter), attn2 (text + IP), GEGLU feed-forward."""

    spec: BlockSpec
    heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, context):  # h (B, F, N, C), context (B, T, D)
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = h + SelfAttention(self.heads, s.attn1_mode, s.backend, name="attn1", query_chunk=s.query_chunk, **kw)(
            LayerNorm(name="norm1", **kw)(h))
        h = h + CrossAttention(self.heads, s.num_ip_tokens, s.backend, name="attn2", query_chunk=s.query_chunk, **kw)(
            LayerNorm(name="norm2", **kw)(h), context)
        return h + FeedForward(name="ff", **kw)(LayerNorm(name="norm3", **kw)(h))


class Transformer(nn.Module):
    """``Transformer3DModel`` / ``Transformer2DModel``: per-frame GN (eps 1e-6), proj_in, block, proj_out."""

    spec: BlockSpec
    heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, context):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, f, hh, ww, c = x.shape
        h = GroupNorm(s.groups, 1e-6, batch_dims=2, name="norm", **kw)(x)
        if s.linear_projection:
            h = Dense(c, name="proj_in", **kw)(h.reshape(b, f, hh * ww, c))
        else:
            h = Conv(c, kernel_size=1, padding=0, name="proj_in", **kw)(h).reshape(b, f, hh * ww, c)
        h = TransformerBlock(s, self.heads, name="transformer_blocks_0", **kw)(h, context)
        if s.linear_projection:
            h = Dense(c, name="proj_out", **kw)(h).reshape(x.shape)
        else:
            h = Conv(c, kernel_size=1, padding=0, name="proj_out", **kw)(h.reshape(x.shape))
        return h + x


def upsample_nearest(x, size=None):
    """torch ``interpolate(mode="nearest")`` on H, W: 2x repeat, or to an explicit (h, w)."""
    if size is None:
        return jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
    h_in, w_in = x.shape[2:4]
    idx = []
    for n_in, n_out in ((h_in, size[0]), (w_in, size[1])):
        scale = np.float32(n_in) / np.float32(n_out)
        idx.append(np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1))
    return x[:, :, idx[0]][:, :, :, idx[1]]


class DownBlock(nn.Module):
    """``CrossAttnDownBlock3D`` / ``DownBlock3D``: (resnet -> attention? -> motion?) x n, downsampler."""

    spec: BlockSpec
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, temb, context):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skips = []
        for j in range(s.num_layers):
            h = pin(_remat(ResnetBlock3D, s)(s.out_channels, s, name=f"resnets_{j}", **kw)(h, temb))
            if s.has_attention:
                h = pin(_remat(Transformer, s)(s, s.heads, name=f"attentions_{j}", **kw)(h, context))
            if s.has_motion:
                h = pin(_remat(MotionModule, s)(s.motion, s.backend, name=f"motion_modules_{j}", **kw)(h))
            skips.append(h)
        if s.add_sampler:
            h = pin(Downsample3D(s.out_channels, name="downsamplers_0", **kw)(h))
            skips.append(h)
        return h, skips


class Downsample3D(nn.Module):
    """``Downsample3D``: a 3x3 stride-2 conv ``conv`` per frame, padding 1 on every side."""

    channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return Conv(self.channels, stride=2, padding=1, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample3D(nn.Module):
    """``Upsample3D``: nearest 2x (or to ``size``, the next skip's), then a 3x3 conv ``conv``."""

    channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, size=None):
        return Conv(self.channels, padding=1, name="conv", dtype=self.dtype,
                    param_dtype=self.param_dtype)(upsample_nearest(x, size))


class MidBlock3D(nn.Module):
    """``UNetMidBlock3DCrossAttn``: resnet, then (attention -> motion? -> resnet)."""

    spec: BlockSpec
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, temb, context):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = pin(_remat(ResnetBlock3D, s)(s.out_channels, s, name="resnets_0", **kw)(h, temb))
        h = pin(_remat(Transformer, s)(s, s.heads, name="attentions_0", **kw)(h, context))
        if s.has_motion:
            h = pin(_remat(MotionModule, s)(s.motion, s.backend, name="motion_modules_0", **kw)(h))
        return pin(_remat(ResnetBlock3D, s)(s.out_channels, s, name="resnets_1", **kw)(h, temb))


class UpBlock(nn.Module):
    """``CrossAttnUpBlock3D`` / ``UpBlock3D``: (cat skip -> resnet -> attention? -> motion?) x n, upsampler."""

    spec: BlockSpec
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h, skips, temb, context, upsample_size=None):
        s, kw = self.spec, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        skips = list(skips)
        for j in range(s.num_layers):
            h = jnp.concatenate([h, skips.pop()], axis=-1)
            h = pin(_remat(ResnetBlock3D, s)(s.out_channels, s, name=f"resnets_{j}", **kw)(h, temb))
            if s.has_attention:
                h = pin(_remat(Transformer, s)(s, s.heads, name=f"attentions_{j}", **kw)(h, context))
            if s.has_motion:
                h = pin(_remat(MotionModule, s)(s.motion, s.backend, name=f"motion_modules_{j}", **kw)(h))
        if s.add_sampler:
            h = pin(Upsample3D(s.out_channels, name="upsamplers_0", **kw)(h, upsample_size))
        return h
