"""One attention function and the attention modules built on it.

``attention(q, k, v, heads, backend)`` is the only place where softmax(QK^T/sqrt(d))V is
computed. Backends (a config field, never inferred from strings elsewhere):
  ``xla``   -- exact, with the softmax in float32; runs everywhere. On the CPU it attends in
               cache-sized tiles (``_tiled``); on GPU and TPU it is one einsum (``_dense``).
  ``cudnn`` -- ``jax.nn.dot_product_attention`` (cuDNN flash attention on GPU, XLA elsewhere).
  ``blockwise`` -- exact, memory linear in the lengths, for training (``blockwise.py``): an online
               softmax over key blocks and a custom VJP that recomputes the blocks (FlashAttention-2's
               algorithm in plain JAX); on TPU the Pallas flash-attention kernel where the shapes fit it.
               ``query_chunk > 0`` sets its query block.
``query_chunk > 0`` makes the ``xla`` path attend at most ``query_chunk`` queries at a time, so the
logits never exist for all queries at once, in the backward pass too (each chunk is recomputed there): the
memory knob for GPU and TPU at full size. (The CPU tiles
are bounded anyway; there it only caps their query count.)
Heads split the channel axis with heads as the outer factor, as torch's ``head_to_batch_dim``.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .blockwise import BLOCK_Q, blockwise_attention
from .layers import Dense

# Logits per CPU tile: 2^20 float32 values (4 MiB) stay in the L2/L3 caches. Whole-batch logits do
# not, and on XLA:CPU writing and re-reading them cost 6-14x the tiled time at the window shape
# (benchmarks/RESULTS.md, "Attention on the CPU").
CPU_TILE = 1 << 20


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
        kw = dict(scale=scale, query_chunk=query_chunk, causal=causal)
        # chosen when lowering, per platform: GPU/TPU programs keep the one-einsum form
        out = jax.lax.platform_dependent(qh, kh, vh, cpu=functools.partial(_tiled, **kw),
                                         default=functools.partial(_dense, **kw))
    elif backend == "cudnn":
        impl = "cudnn" if (jax.default_backend() == "gpu" and q.dtype in (jnp.float16, jnp.bfloat16)) else None
        out = jax.nn.dot_product_attention(qh, kh, vh, scale=scale, is_causal=causal, implementation=impl)
    elif backend == "blockwise":
        block_q = query_chunk if query_chunk > 0 else BLOCK_Q
        out = blockwise_attention(qh, kh, vh, scale=scale, causal=causal, block_q=block_q)
    else:
        raise ValueError(f"attention backend must be 'xla', 'cudnn' or 'blockwise', got {backend!r}")
    return out.reshape(tuple(lead) + (lq, c))


def _dense(qh, kh, vh, *, scale, query_chunk=0, causal=False):
    """(N, Lq, H, d) x (N, Lk, H, d): einsum logits for all queries, or ``query_chunk`` at a time."""
    lq, heads, d = qh.shape[1:]
    lk = kh.shape[1]

    def attend(qc, start=0):
        logits = jnp.einsum("bqhd,bkhd->bhqk", qc, kh, preferred_element_type=jnp.float32) * scale
        if causal:
            logits = _causal_mask(logits, start, lk)
        probs = jax.nn.softmax(logits, axis=-1).astype(vh.dtype)
        return jnp.einsum("bhqk,bkhd->bqhd", probs, vh)

    if not 0 < query_chunk < lq:
        return attend(qh)
    n = -(-lq // query_chunk)
    qp = jnp.pad(qh, ((0, 0), (0, n * query_chunk - lq), (0, 0), (0, 0)))
    qp = jnp.moveaxis(qp.reshape((qh.shape[0], n, query_chunk, heads, d)), 1, 0)
    starts = jnp.arange(n) * query_chunk
    # rematerialised per chunk: under a gradient the loop would otherwise keep every chunk's probabilities
    # for the backward pass, i.e. all the logits the chunks exist to avoid (the training memory knob)
    out = jax.lax.map(jax.checkpoint(lambda a: attend(*a)), (qp, starts))
    return jnp.moveaxis(out, 0, 1).reshape((qh.shape[0], -1, heads, d))[:, :lq]


def _tiled(qh, kh, vh, *, scale, query_chunk=0, causal=False, tile=CPU_TILE):
    """(N, Lq, H, d) x (N, Lk, H, d), heads moved to the batch axis, attended in tiles of about
    ``tile`` logits: ``nb`` (sample, head) rows by ``qc`` queries. A loop over tiles that fit in cache
    beats one pass over logits that do not, on a CPU."""
    n, lq, heads, d = qh.shape
    lk = kh.shape[1]
    rows = n * heads
    q, k, v = (jnp.swapaxes(a, 1, 2).reshape((rows, -1, d)) for a in (qh, kh, vh))
    per_tile = max(8, tile // max(lk, 1))
    if 0 < query_chunk:
        per_tile = min(per_tile, query_chunk)
    n_q = -(-lq // per_tile)
    qc = -(-lq // n_q)
    n_b = -(-rows // max(1, per_tile // qc)) if n_q == 1 else rows
    nb = -(-rows // n_b)
    if n_b == 1 and n_q == 1:
        out = _attend_tile(q, k, v, scale, causal, 0)
    else:
        pad_b = n_b * nb - rows
        q = jnp.pad(q, ((0, pad_b), (0, n_q * qc - lq), (0, 0)))
        k, v = (jnp.pad(a, ((0, pad_b), (0, 0), (0, 0))).reshape((n_b, nb, lk, d)) for a in (k, v))
        # tile i: rows block i // n_q, queries block i % n_q; one loop, its keys indexed per tile
        qt = jnp.swapaxes(q.reshape((n_b, nb, n_q, qc, d)), 1, 2).reshape((n_b * n_q, nb, qc, d))
        out = jax.lax.map(lambda a: _attend_tile(a[0], k[a[1] // n_q], v[a[1] // n_q], scale, causal,
                                                 (a[1] % n_q) * qc), (qt, jnp.arange(n_b * n_q)))
        out = jnp.swapaxes(out.reshape((n_b, n_q, nb, qc, d)), 1, 2).reshape((n_b * nb, n_q * qc, d))[:rows, :lq]
    return jnp.swapaxes(out.reshape((n, heads, lq, d)), 1, 2)


def _attend_tile(q, k, v, scale, causal, start):
    """(R, Q, d) x (R, K, d) -> (R, Q, d), float32 logits and softmax; queries start at ``start``."""
    logits = jnp.matmul(q, jnp.swapaxes(k, -1, -2), preferred_element_type=jnp.float32) * scale
    if causal:
        logits = _causal_mask(logits, start, k.shape[-2])
    p = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
    # normalising after the product with v is one pass less over the logits
    out = jnp.matmul(p.astype(v.dtype), v, preferred_element_type=jnp.float32) / p.sum(-1, keepdims=True)
    return out.astype(v.dtype)


def _causal_mask(logits, start, lk):
    seen = jnp.arange(lk)[None, :] <= (start + jnp.arange(logits.shape[-2]))[:, None]
    return jnp.where(seen, logits, jnp.finfo(jnp.float32).min)


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
        if self.mode == "first_cross":
            return out_proj("to_out_0")(self.attend_ref(q, k, v))
        out = out_proj("to_out_0")(self.attend(q, k, v))
        if self.mode == "default":
            return out
        if self.mode != "mixed_cross":
            raise ValueError(f"unknown attn1 mode {self.mode!r}")
        q_ff = proj("to_q_ff")(x)
        return out + out_proj("to_out_ff")(self.attend_ref(q_ff, k, v))

    def attend_ref(self, q, k, v):
        """Every frame's queries against frame 0's keys and values: the reference's keys are shared
        by all frames of a sample, so the frames fold into the query axis, one key set per sample."""
        b, f, n, c = q.shape
        return self.attend(q.reshape(b, f * n, c), k[:, 0], v[:, 0]).reshape(q.shape)


class CrossAttention(nn.Module):
    """``attn2``: cross-attention to text tokens, plus IP-Adapter decoupled attention.

    With ``num_ip_tokens > 0`` the last ``num_ip_tokens`` context tokens are image tokens:
    to_out(A(q, to_k(text), to_v(text)) + A(q, to_k_ip(img), to_v_ip(img))), one output bias.
    x: (..., N, C); context: (..., T, D) whose leading axes are x's first ones.
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
        qf = _fold_queries(q, k)
        h = self.attend(qf, k, v)
        if n_ip:
            k_ip = proj("to_k_ip")(image)
            v_ip = proj("to_v_ip")(image)
            h = h + self.attend(qf, k_ip, v_ip)
        return out_proj("to_out_0")(h.reshape(q.shape))


def _projections(mod, c: int):
    """Dense factories of an attention module: bias-free q/k/v-style projections (output by heads)
    and biased output projections (input by heads), so ``tensor`` splits them Megatron-style."""
    kw = dict(dtype=mod.dtype, param_dtype=mod.param_dtype)
    proj = lambda name: Dense(c, use_bias=False, axes=("embed", "heads"), name=name, **kw)
    out_proj = lambda name: Dense(c, axes=("heads", "embed"), name=name, **kw)
    return proj, out_proj


def _fold_queries(q, kv):
    """Per-sample keys (B, T, C) serve every frame of q (B, F, N, C): fold the frames into the query
    axis, (B, F*N, C), rather than broadcasting the keys to each frame."""
    extra = q.ndim - kv.ndim
    if extra <= 0:
        return q
    return q.reshape(kv.shape[:-2] + (-1, q.shape[-1]))


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
