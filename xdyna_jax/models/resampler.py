"""IP-Adapter-Plus image projection: a Perceiver resampler from CLIP hidden states to image tokens.

``Resampler(cfg).apply({"params": p}, clip_hidden_states (B, 257, 1280)) -> (B, 16, 768)``.
Param names mirror the official ``Resampler`` (``layers_i_0`` attention, ``layers_i_1_{0,1,3}`` FF).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import attention
from .configs import ResamplerConfig
from .layers import Dense, LayerNorm, dtype_of, gelu_exact


class PerceiverAttention(nn.Module):
    dim_head: int
    heads: int
    backend: str = "xla"
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, latents):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.dim_head * self.heads
        x = LayerNorm(name="norm1", **kw)(x)
        latents_n = LayerNorm(name="norm2", **kw)(latents)
        q = Dense(inner, use_bias=False, axes=("embed", "heads"), name="to_q", **kw)(latents_n)
        # [k | v] split over ``tensor`` puts k on one half of the devices and v on the other; GSPMD moves
        # them, which costs nothing worth a layout change at 16 queries and 273 keys
        kv = Dense(inner * 2, use_bias=False, axes=("embed", "heads"), name="to_kv", **kw)(
            jnp.concatenate([x, latents_n], axis=-2))
        k, v = jnp.split(kv, 2, axis=-1)
        out = attention(q, k, v, self.heads, self.backend)
        return Dense(latents.shape[-1], use_bias=False, axes=("heads", "embed"), name="to_out", **kw)(out)


class Resampler(nn.Module):
    cfg: ResamplerConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        latents = self.param("latents", nn.with_logical_partitioning(
            lambda key, shape, dtype=jnp.float32: jax.random.normal(key, shape, dtype) / cfg.dim ** 0.5,
            (None, None, "embed")), (1, cfg.num_queries, cfg.dim), kw["param_dtype"])
        latents = jnp.broadcast_to(latents.astype(kw["dtype"]), (x.shape[0],) + latents.shape[1:])
        x = Dense(cfg.dim, name="proj_in", **kw)(x.astype(kw["dtype"]))
        for i in range(cfg.depth):
            latents = latents + PerceiverAttention(cfg.dim_head, cfg.heads, cfg.attention_backend,
                                                   name=f"layers_{i}_0", **kw)(x, latents)
            h = LayerNorm(name=f"layers_{i}_1_0", **kw)(latents)
            h = Dense(cfg.dim * cfg.ff_mult, use_bias=False, axes=("embed", "mlp"), name=f"layers_{i}_1_1", **kw)(h)
            latents = latents + Dense(cfg.dim, use_bias=False, axes=("mlp", "embed"), name=f"layers_{i}_1_3",
                                      **kw)(gelu_exact(h))
        latents = Dense(cfg.output_dim, name="proj_out", **kw)(latents)
        return LayerNorm(name="norm_out", **kw)(latents)

    def example_inputs(self, batch: int = 1):
        return (jnp.zeros((batch, 257, self.cfg.embedding_dim), jnp.float32),)
