"""One attention function and the attention modules built on it.

``attention(q, k, v, heads, backend)`` is the only place where softmax(QK^T/sqrt(d))V is
computed. Backends (a config field, never inferred from strings elsewhere):
  ``xla``   -- einsum with the softmax in float32; exact, runs everywhere.
  ``cudnn`` -- ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU, XLA elsewhere).
``query_chunk > 0`` makes the ``xla`` path attend ``query_chunk`` queries at a time (``lax.map``), so
the logits never exist for all queries at once: the memory knob for TPU and CPU at full size.
Heads split the channel axis with heads as the outer factor, as torch's ``head_to_batch_dim``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .layers import Dense


def attention(q, k, v, heads: int, backend: str = "xla", scale: float | None = None, query_chunk: int = 0,
              causal: bool = False):
    """q: (..., Lq, C), k/v: (..., Lk, C) -> (..., Lq, C); scale 1/sqrt(C/heads).

    No mask, or with ``causal`` query i attends keys j <= i only (CLIP's text encoder).
    """
    *lead, lq, c = q.shape
    lk = k.shape[-2]
    d = c // heads
    scale = d ** -0.5 if scale is None else scale
    qh = q.reshape((-1, lq, heads, d))
    kh = k.reshape((-1, lk, heads, d))
    vh = v.reshape((-1, lk, heads, d))
    if backend == "xla":
        def attend(qc, start=0):
            logits = jnp.einsum("bqhd,bkhd->bhqk", qc, kh, preferred_element_type=jnp.float32) * scale
            if causal:
                seen = jnp.arange(lk)[None, :] <= (start + jnp.arange(qc.shape[1]))[:, None]
                logits = jnp.where(seen, logits, jnp.finfo(jnp.float32).min)
            probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
            return jnp.einsum("bhqk,bkhd->bqhd", probs, vh)

        if 0 < query_chunk < lq:
            n = -(-lq // query_chunk)
            qp = jnp.pad(qh, ((0, 0), (0, n * query_chunk - lq), (0, 0), (0, 0)))
            qp = jnp.moveaxis(qp.reshape((qh.shape[0], n, query_chunk, heads, d)), 1, 0)
            starts = jnp.arange(n) * query_chunk
            out = jax.lax.map(lambda a: attend(*a), (qp, starts))
            out = jnp.moveaxis(out, 0, 1).reshape((qh.shape[0], -1, heads, d))[:, :lq]
        else:
            out = attend(qh)
    elif backend == "cudnn":
        impl = "cudnn" if (jax.default_backend() == "gpu" and q.dtype in (jnp.float16, jnp.bfloat16)) else None
        out = jax.nn.dot_product_attention(qh, kh, vh, scale=scale, is_causal=causal, implementation=impl)
    else:
        raise ValueError(f"attention backend must be 'xla' or 'cudnn', got {backend!r}")
    return out.reshape(tuple(lead) + (lq, c))


class SelfAttention(nn.Module):
    """Spatial ``attn1`` over tokens of one frame, in one of three official flavours.

    ``default``     -- ordinary self-attention (SD1.5).
    ``mixed_cross`` -- X-Dyna's Dynamics-Adapter: to_out(A(q, k, v)) + to_out_ff(A(q_ff, k_ref, v_ref)),
                       with k_ref/v_ref the frozen to_k/to_v of frame 0 of each sample.
    ``first_cross`` -- sparse causal: to_out(A(q, k_ref, v_ref)).
    Input is (B, F, N, C); frame 0 of each sample is the reference.
    """

    heads: int
    mode: str = "mixed_cross"
    backend: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    query_chunk: int = 0

    def attend(self, q, k, v):
        return attention(q, k, v, self.heads, self.backend, query_chunk=self.query_chunk)

    @nn.compact
    def __call__(self, x):
        proj, out_proj = _projections(self, x.shape[-1])
        q = proj("to_q")(x)
        k = proj("to_k")(x)
        v = proj("to_v")(x)
        if self.mode in ("mixed_cross", "first_cross"):
            k_ref = jnp.broadcast_to(k[:, :1], k.shape)
            v_ref = jnp.broadcast_to(v[:, :1], v.shape)
        if self.mode == "first_cross":
            return out_proj("to_out_0")(self.attend(q, k_ref, v_ref))
        out = out_proj("to_out_0")(self.attend(q, k, v))
        if self.mode == "default":
            return out
        if self.mode != "mixed_cross":
            raise ValueError(f"unknown attn1 mode {self.mode!r}")
        q_ff = proj("to_q_ff")(x)
        return out + out_proj("to_out_ff")(self.attend(q_ff, k_ref, v_ref))


class CrossAttention(nn.Module):
    """``attn2``: cross-attention to text tokens, plus IP-Adapter decoupled attention.

    With ``num_ip_tokens > 0`` the last ``num_ip_tokens`` context tokens are image tokens:
    to_out(A(q, to_k(text), to_v(text)) + A(q, to_k_ip(img), to_v_ip(img))), one output bias.
    x: (..., N, C); context: (..., T, D) broadcastable against x's leading axes.
    """

    heads: int
    num_ip_tokens: int = 0
    backend: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    query_chunk: int = 0

    def attend(self, q, k, v):
        return attention(q, k, v, self.heads, self.backend, query_chunk=self.query_chunk)

    @nn.compact
    def __call__(self, x, context):
        proj, out_proj = _projections(self, x.shape[-1])
        n_ip = self.num_ip_tokens
        if n_ip:
            if context.shape[-2] <= n_ip:
                raise ValueError(f"IP-Adapter attention needs text tokens followed by {n_ip} image tokens; "
                                 f"got a context of {context.shape[-2]} tokens")
            text, image = context[..., :-n_ip, :], context[..., -n_ip:, :]
        else:
            text = context
        q = proj("to_q")(x)
        k = proj("to_k")(text)
        v = proj("to_v")(text)
        h = self.attend(q, _bcast(k, q), _bcast(v, q))
        if n_ip:
            k_ip = proj("to_k_ip")(image)
            v_ip = proj("to_v_ip")(image)
            h = h + self.attend(q, _bcast(k_ip, q), _bcast(v_ip, q))
        return out_proj("to_out_0")(h)


def _projections(mod, c: int):
    """Dense factories of an attention module: bias-free q/k/v-style projections (output by heads)
    and biased output projections (input by heads), so ``tensor`` splits them Megatron-style."""
    kw = dict(dtype=mod.dtype, param_dtype=mod.param_dtype)
    proj = lambda name: Dense(c, use_bias=False, axes=("embed", "heads"), name=name, **kw)
    out_proj = lambda name: Dense(c, axes=("heads", "embed"), name=name, **kw)
    return proj, out_proj


def _bcast(kv, q):
    """Broadcast per-sample keys (B, T, C) over the extra leading axes of q (B, F, N, C)."""
    extra = q.ndim - kv.ndim
    if extra <= 0:
        return kv
    kv = kv.reshape(kv.shape[:1] + (1,) * extra + kv.shape[1:])
    return jnp.broadcast_to(kv, q.shape[:-2] + kv.shape[-2:])


class TemporalAttention(nn.Module):
    """AnimateDiff ``VersatileAttention`` (Temporal_Self): attention over frames at each location.

    x: (B, F, N, C) -> same. ``pe`` (F, C) is added to the (normalised) input before q, k, v.
    """

    heads: int
    backend: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    query_chunk: int = 0

    def attend(self, q, k, v):
        return attention(q, k, v, self.heads, self.backend, query_chunk=self.query_chunk)

    @nn.compact
    def __call__(self, x, pe=None):
        proj, out_proj = _projections(self, x.shape[-1])
        h = jnp.swapaxes(x, 1, 2)  # (B, N, F, C): a sequence over frames per location
        if pe is not None:
            h = h + pe.astype(h.dtype)
        q = proj("to_q")(h)
        k = proj("to_k")(h)
        v = proj("to_v")(h)
        out = out_proj("to_out_0")(self.attend(q, k, v))
        return jnp.swapaxes(out, 1, 2)
