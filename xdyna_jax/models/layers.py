"""The few shared building blocks, each parameter tagged with logical axis names by role.

Logical names (mapped to mesh axes by the one rule table, ``xdyna_jax.sharding.RULES``):
  ``embed``                  -- model width: the residual stream a layer reads or writes
  ``heads``                  -- q/k/v outputs (heads x head_dim, heads outermost), the input of ``to_out``
  ``mlp``                    -- hidden units of a feed-forward (GEGLU, CLIP MLP, Resampler FF, time embedding)
  ``conv_in`` / ``conv_out`` -- input / output channels of a conv
  ``conv_mid``               -- a resnet's hidden channels (conv1 out, conv2 in)
  ``conv_h`` / ``conv_w``    -- spatial taps of conv kernels (never sharded)
  ``norm``                   -- scale and bias of norms
  ``vocab``                  -- rows of embedding tables
``Dense`` and ``Conv`` take their kernel's names from the caller (``axes``); a bias carries the name
of the kernel's output axis. Param names mirror the official torch modules (``kernel`` for
``weight``, ``scale`` for norm weights).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    return DTYPES[name]


def _torch_uniform(fan_in_axes: Sequence[int]):
    """torch's default Linear/Conv init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = int(np.prod([shape[a] for a in fan_in_axes]))
        bound = 1.0 / math.sqrt(max(fan_in, 1))
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _partitioned(init, names):
    return nn.with_logical_partitioning(init, names)


class Dense(nn.Module):
    """Linear layer; ``kernel`` is (in, out) = torch ``weight.T``, logical names ``axes``."""

    features: int
    use_bias: bool = True
    zero_init: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axes: tuple[str, str] = ("embed", "embed")  # default: a width-preserving projection, no tensor split

    @nn.compact
    def __call__(self, x):
        in_features = x.shape[-1]
        kinit = nn.initializers.zeros_init() if self.zero_init else _torch_uniform((0,))
        kernel = self.param("kernel", _partitioned(kinit, tuple(self.axes)),
                            (in_features, self.features), self.param_dtype)
        y = jnp.einsum("...i,io->...o", x.astype(self.dtype), jnp.asarray(kernel, self.dtype))
        if self.use_bias:
            if self.zero_init:
                binit = nn.initializers.zeros_init()
            else:
                def binit(key, shape, dtype=jnp.float32):
                    b = 1.0 / math.sqrt(in_features)
                    return jax.random.uniform(key, shape, dtype, -b, b)
            bias = self.param("bias", _partitioned(binit, (self.axes[-1],)), (self.features,), self.param_dtype)
            y = y + jnp.asarray(bias, self.dtype)
        return y


class Conv(nn.Module):
    """2D convolution over the two axes before channels; ``kernel`` is (kh, kw, in, out).

    Padding is explicit and symmetric, as torch's ``padding=p`` (Flax 'SAME' would pad
    asymmetrically for stride 2). Any leading axes (batch, frames) are folded and restored.
    """

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    zero_init: bool = False
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    axes: tuple[str, str] = ("conv_in", "conv_out")  # names of the (in, out) channel axes

    @nn.compact
    def __call__(self, x):
        lead, (h, w, c) = x.shape[:-3], x.shape[-3:]
        k = self.kernel_size
        kinit = nn.initializers.zeros_init() if self.zero_init else _torch_uniform((0, 1, 2))
        kernel = self.param("kernel", _partitioned(kinit, ("conv_h", "conv_w") + tuple(self.axes)),
                            (k, k, c, self.features), self.param_dtype)
        y = jax.lax.conv_general_dilated(
            x.reshape((-1, h, w, c)).astype(self.dtype), jnp.asarray(kernel, self.dtype),
            window_strides=(self.stride, self.stride),
            padding=((self.padding, self.padding), (self.padding, self.padding)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            if self.zero_init:
                binit = nn.initializers.zeros_init()
            else:
                def binit(key, shape, dtype=jnp.float32):
                    b = 1.0 / math.sqrt(c * k * k)
                    return jax.random.uniform(key, shape, dtype, -b, b)
            bias = self.param("bias", _partitioned(binit, (self.axes[-1],)), (self.features,), self.param_dtype)
            y = y + jnp.asarray(bias, self.dtype)
        return y.reshape(lead + y.shape[1:])


class GroupNorm(nn.Module):
    """torch.nn.GroupNorm over all axes after ``batch_dims`` except channels (last).

    ``batch_dims=1`` on (B, F, H, W, C) pools statistics over frames (X-Dyna's resnets);
    ``batch_dims=2`` is per frame. Statistics are computed in float32 with a two-pass variance.
    """

    num_groups: int
    epsilon: float
    batch_dims: int = 1
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        g = self.num_groups
        if c % g:
            raise ValueError(f"GroupNorm: {c} channels are not divisible by {g} groups")
        scale = self.param("scale", _partitioned(nn.initializers.ones_init(), ("norm",)), (c,), self.param_dtype)
        bias = self.param("bias", _partitioned(nn.initializers.zeros_init(), ("norm",)), (c,), self.param_dtype)
        xf = x.astype(jnp.float32)
        grouped = xf.reshape(x.shape[:-1] + (g, c // g))
        axes = tuple(range(self.batch_dims, grouped.ndim - 2)) + (grouped.ndim - 1,)
        mean = grouped.mean(axis=axes, keepdims=True)
        var = jnp.square(grouped - mean).mean(axis=axes, keepdims=True)
        y = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        y = y * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


class LayerNorm(nn.Module):
    """torch.nn.LayerNorm over the last axis (eps 1e-5 by default), float32 statistics."""

    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        scale = self.param("scale", _partitioned(nn.initializers.ones_init(), ("norm",)), (c,), self.param_dtype)
        bias = self.param("bias", _partitioned(nn.initializers.zeros_init(), ("norm",)), (c,), self.param_dtype)
        xf = x.astype(jnp.float32)
        mean = xf.mean(-1, keepdims=True)
        var = jnp.square(xf - mean).mean(-1, keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return y.astype(self.dtype)


def gelu_exact(x):
    return jax.nn.gelu(x, approximate=False)


class GEGLU(nn.Module):
    """diffusers GEGLU: value * GELU(gate), both from one ``proj`` of width 2*inner.

    The official ``proj`` is [values | gates]; ours stores them interleaved (column 2i = value i,
    2i+1 = gate i; ``porting.names`` converts). So a contiguous split of the ``mlp`` axis over
    ``tensor`` gives every device the gates of its own values and GEGLU needs no communication.
    """

    inner: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = Dense(self.inner * 2, dtype=self.dtype, param_dtype=self.param_dtype, axes=("embed", "mlp"),
                  name="proj")(x)
        h = h.reshape(h.shape[:-1] + (self.inner, 2))
        value, gate = h[..., 0], h[..., 1]
        return value * gelu_exact(gate.astype(jnp.float32)).astype(self.dtype)


class FeedForward(nn.Module):
    """diffusers FeedForward(geglu): ``net_0`` = GEGLU(dim -> 4 dim), ``net_2`` = Dense(4 dim -> dim).

    Megatron-style under ``tensor``: ``net_0`` splits its output (``mlp``), ``net_2`` its input, so
    the only collective is the sum after ``net_2``.
    """

    mult: int = 4
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        dim = x.shape[-1]
        h = GEGLU(dim * self.mult, dtype=self.dtype, param_dtype=self.param_dtype, name="net_0")(x)
        return Dense(dim, dtype=self.dtype, param_dtype=self.param_dtype, axes=("mlp", "embed"), name="net_2")(h)


def timestep_embedding(t, dim: int, flip_sin_to_cos: bool, freq_shift: float, max_period: float = 10000.0):
    """diffusers ``get_timestep_embedding`` in float32: (B,) -> (B, dim)."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = jnp.asarray(t, jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    if flip_sin_to_cos:
        emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """``time_embedding``: linear_1 -> SiLU -> linear_2."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = nn.silu(Dense(self.features, axes=("embed", "mlp"), name="linear_1", **kw)(x))
        return Dense(self.features, axes=("mlp", "embed"), name="linear_2", **kw)(x)
