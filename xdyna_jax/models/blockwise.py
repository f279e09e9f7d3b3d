"""Exact attention in memory linear in the sequence lengths, for training: the ``blockwise`` backend.

Rabe & Staats 2021 ("Self-attention does not need O(n^2) memory") with FlashAttention-2's backward pass,
in plain JAX. The forward pass walks key blocks per query block with an online softmax (running row
max, row sum and unnormalised output) and keeps only the output and each row's logsumexp. A custom VJP
recomputes every block's probabilities P from them: with D = rowsum(dO * O), dS = P * (dO V^T - D), and
dQ, dK, dV accumulate block by block. Nothing of size queries x keys is ever stored; the peak is a few
(query block x key block) float32 tiles per (sample, head). Softmax statistics are float32 whatever the
input dtype; products take the input dtype with float32 accumulation.

On TPU the Pallas flash-attention kernel (``jax.experimental.pallas.ops.tpu.flash_attention``) does
the same when the shapes fit it (both lengths >= 128, head dim <= 128 or a multiple of 128); other
shapes take the plain-JAX path. The kernel also runs on the CPU under ``pltpu.force_tpu_interpret_mode``,
which is how the tests check it.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

BLOCK_Q = 512  # queries per block
BLOCK_K = 1024  # keys per block
TPU_BLOCK = 128  # the Pallas kernel's tile granule; its blocks must divide the (padded) lengths
TPU_MAX_BLOCK = 512  # its tiles live in VMEM (tens of MiB): larger blocks gain little there


def blockwise_attention(qh, kh, vh, *, scale, causal=False, block_q=BLOCK_Q, block_k=BLOCK_K):
    """(N, Lq, H, d) x (N, Lk, H, d) -> (N, Lq, H, d), as ``attention._dense``: softmax(q k^T * scale) v,
    with ``causal`` query i attending keys j <= i only. Lengths need not divide the block sizes."""
    q, k, v = (jnp.swapaxes(a, 1, 2) for a in (qh, kh, vh))  # (N, H, L, d): one row of blocks per head
    if jax.default_backend() == "tpu" and pallas_fits(q.shape[-2], k.shape[-2], q.shape[-1]):
        out = pallas_attention(q, k, v, scale=scale, causal=causal, block_q=block_q, block_k=block_k)
    else:
        out = _flash(q, k, v, float(scale), bool(causal), int(block_q), int(block_k))
    return jnp.swapaxes(out, 1, 2)


def _blocks(length, block):
    """(count, size) of the blocks covering ``length``: as even as possible, so padding stays < count."""
    n = -(-length // max(1, min(block, length)))
    return n, -(-length // n)


def _pad(a, length):
    return jnp.pad(a, [(0, 0)] * (a.ndim - 2) + [(0, length - a.shape[-2]), (0, 0)])


def _logits(qb, kb, scale, q0, k0, lk, causal):
    """float32 logits of a (query block, key block) pair starting at rows q0, k0; padded keys (index
    >= lk; ``lk=None``: none padded) and, with ``causal``, keys after the query are -inf: P = 0 exactly."""
    s = jnp.einsum("...qd,...kd->...qk", qb, kb, preferred_element_type=jnp.float32) * scale
    if lk is None and not causal:  # static: no mask pass at all
        return s
    kpos = k0 + jnp.arange(kb.shape[-2])
    keep = jnp.ones((1, kb.shape[-2]), bool) if lk is None else kpos[None, :] < lk
    if causal:
        keep = keep & (kpos[None, :] <= (q0 + jnp.arange(qb.shape[-2]))[:, None])
    return jnp.where(keep, s, -jnp.inf)


def _block(a, i, size):
    return lax.dynamic_slice_in_dim(a, i * size, size, axis=-2)


def _unblock(a, length):
    """(n, ..., b, d) stacked blocks -> (..., length, d)."""
    a = jnp.moveaxis(a, 0, -3)
    return a.reshape(a.shape[:-3] + (-1, a.shape[-1]))[..., :length, :]


def _forward(q, k, v, scale, causal, block_q, block_k):
    """-> output (N, H, Lq, d) and float32 logsumexp per padded query row (N, H, nq * bq)."""
    lq, lk, d = q.shape[-2], k.shape[-2], v.shape[-1]
    nq, bq = _blocks(lq, block_q)
    nk, bk = _blocks(lk, block_k)
    q, k, v = _pad(q, nq * bq), _pad(k, nk * bk), _pad(v, nk * bk)
    key_len = None if nk * bk == lk else lk  # no key padding: no mask unless causal

    def query_block(i):
        qb = _block(q, i, bq)

        def key_block(carry, j):
            acc, m, l = carry
            kb, vb = _block(k, j, bk), _block(v, j, bk)
            s = _logits(qb, kb, scale, i * bq, j * bk, key_len, causal)
            m_new = jnp.maximum(m, s.max(-1))
            # a row with every key so far masked has max -inf: shift by 0 there, so exp gives 0, not NaN
            shift = jnp.where(jnp.isneginf(m_new), 0.0, m_new)
            p = jnp.exp(s - shift[..., None])
            alpha = jnp.exp(m - shift)  # rescales the earlier blocks' sums to the new max
            pv = jnp.einsum("...qk,...kd->...qd", p.astype(v.dtype), vb, preferred_element_type=jnp.float32)
            return (alpha[..., None] * acc + pv, m_new, alpha * l + p.sum(-1)), None

        lead = q.shape[:-2]
        init = (jnp.zeros(lead + (bq, d), jnp.float32), jnp.full(lead + (bq,), -jnp.inf, jnp.float32),
                jnp.zeros(lead + (bq,), jnp.float32))
        (acc, m, l), _ = lax.scan(key_block, init, jnp.arange(nk))
        empty = l == 0  # only a row that sees no key at all; +inf lse gives it P = 0 in the backward pass
        out = acc / jnp.where(empty, 1.0, l)[..., None]
        return out.astype(v.dtype), jnp.where(empty, jnp.inf, m + jnp.log(jnp.where(empty, 1.0, l)))

    out, lse = lax.map(query_block, jnp.arange(nq))
    return _unblock(out, lq), jnp.moveaxis(lse, 0, -2).reshape(lse.shape[1:-1] + (-1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _flash(q, k, v, scale, causal, block_q, block_k):
    """(N, H, Lq, d) x (N, H, Lk, d) -> (N, H, Lq, d)."""
    return _forward(q, k, v, scale, causal, block_q, block_k)[0]


def _flash_fwd(q, k, v, scale, causal, block_q, block_k):
    out, lse = _forward(q, k, v, scale, causal, block_q, block_k)
    return out, (q, k, v, out, lse)


def _flash_bwd(scale, causal, block_q, block_k, res, dout):
    """One pass over key blocks, each walking the query blocks: P is recomputed once per block pair;
    dK and dV accumulate in the inner loop, dQ (one float32 copy of Q's size) in the outer one."""
    q, k, v, out, lse = res
    lq, lk = q.shape[-2], k.shape[-2]
    nq, bq = _blocks(lq, block_q)
    nk, bk = _blocks(lk, block_k)
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), -1)  # D = rowsum(dO * O)
    # padded query rows have dO = 0 and D = 0, so they add nothing; padded keys have P = 0
    qp, dop = _pad(q, nq * bq), _pad(dout.astype(q.dtype), nq * bq)
    delta = jnp.pad(delta, [(0, 0)] * (delta.ndim - 1) + [(0, nq * bq - lq)])
    kp, vp = _pad(k, nk * bk), _pad(v, nk * bk)
    key_len = None if nk * bk == lk else lk

    def key_block(dq, j):
        kb, vb = _block(kp, j, bk), _block(vp, j, bk)

        def query_block(carry, i):
            dk, dv = carry
            qb, dob = _block(qp, i, bq), _block(dop, i, bq)
            lse_b, delta_b = (lax.dynamic_slice_in_dim(a, i * bq, bq, axis=-1)[..., None] for a in (lse, delta))
            p = jnp.exp(_logits(qb, kb, scale, i * bq, j * bk, key_len, causal) - lse_b)
            dv = dv + jnp.einsum("...qk,...qd->...kd", p.astype(dob.dtype), dob, preferred_element_type=jnp.float32)
            dp = jnp.einsum("...qd,...kd->...qk", dob, vb, preferred_element_type=jnp.float32)
            ds = (p * (dp - delta_b) * scale).astype(q.dtype)  # d(logits before scaling)
            dk = dk + jnp.einsum("...qk,...qd->...kd", ds, qb, preferred_element_type=jnp.float32)
            return (dk, dv), jnp.einsum("...qk,...kd->...qd", ds, kb, preferred_element_type=jnp.float32)

        zeros = jnp.zeros(kb.shape[:-1] + (vb.shape[-1],), jnp.float32)
        (dk, dv), dq_blocks = lax.scan(query_block, (zeros, zeros), jnp.arange(nq))
        return dq + dq_blocks, (dk, dv)

    dq0 = jnp.zeros((nq,) + q.shape[:-2] + (bq, q.shape[-1]), jnp.float32)
    dq, (dk, dv) = lax.scan(key_block, dq0, jnp.arange(nk))
    return (_unblock(dq, lq).astype(q.dtype), _unblock(dk, lk).astype(k.dtype),
            _unblock(dv, lk).astype(v.dtype))


_flash.defvjp(_flash_fwd, _flash_bwd)


def pallas_fits(lq, lk, d):
    """Shapes the TPU kernel takes: lengths padded to 128 cost little only from 128 on; its row
    statistics are 128 lanes wide, so the head dim is at most 128 or a multiple of it."""
    return lq >= TPU_BLOCK and lk >= TPU_BLOCK and (d <= TPU_BLOCK or d % TPU_BLOCK == 0)


def pallas_attention(q, k, v, *, scale, causal=False, block_q=BLOCK_Q, block_k=BLOCK_K):
    """(N, H, Lq, d) x (N, H, Lk, d) through the Pallas TPU flash-attention kernel (forward and backward).

    Its blocks must divide the lengths: lengths are padded to multiples of 128 and the padding masked
    with segment ids (real tokens 1, padding 0; padded queries see only padded keys, and are dropped).
    """
    from jax.experimental.pallas.ops.tpu import flash_attention as fa

    lq, lk = q.shape[-2], k.shape[-2]
    pq, pk = -(-lq // TPU_BLOCK) * TPU_BLOCK, -(-lk // TPU_BLOCK) * TPU_BLOCK
    segments = None
    if (pq, pk) != (lq, lk):
        ids = lambda n, p: jnp.broadcast_to((jnp.arange(p) < n).astype(jnp.int32), (q.shape[0], p))
        segments = fa.SegmentIds(q=ids(lq, pq), kv=ids(lk, pk))
        q, k, v = _pad(q, pq), _pad(k, pk), _pad(v, pk)

    def fit(length, want):  # the largest multiple of 128 up to ``want`` that divides ``length``
        b = max(TPU_BLOCK, min(want, TPU_MAX_BLOCK, length) // TPU_BLOCK * TPU_BLOCK)
        while length % b:
            b -= TPU_BLOCK
        return b

    bq, bk = fit(pq, block_q), fit(pk, block_k)
    sizes = fa.BlockSizes(block_q=bq, block_k_major=bk, block_k=bk, block_b=1,
                          block_q_major_dkv=bq, block_k_major_dkv=bk, block_k_dkv=bk, block_q_dkv=bq,
                          block_k_major_dq=bk, block_k_dq=bk, block_q_dq=bq)
    out = fa.flash_attention(q, k, v, segment_ids=segments, causal=causal, sm_scale=float(scale),
                             block_sizes=sizes)
    return out[..., :lq, :]
