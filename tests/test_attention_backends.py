"""Attention backends and memory knobs change how, never what, is computed."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xdyna_jax.models import UNet3D, UNet3DConfig, param_shapes
from xdyna_jax.models.attention import _dense, _tiled, attention


def _reference(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, heads as the outer factor of channels (numpy, float64)."""
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, lq, c = q.shape
    d = c // heads
    qh, kh, vh = (a.reshape(b, -1, heads, d).transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, lq, c)


@pytest.mark.parametrize("backend, chunk", [("xla", 0), ("xla", 7), ("xla", 64), ("cudnn", 0)])
def test_attention_matches_softmax_reference(backend, chunk):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((3, n, 32)).astype(np.float32) for n in (50, 19, 19))
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), heads=4, backend=backend, query_chunk=chunk)
    np.testing.assert_allclose(np.asarray(out), _reference(q, k, v, 4), atol=2e-5, rtol=0)


def _causal_reference(q, k, v, heads):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, lq, c = q.shape
    d = c // heads
    qh, kh, vh = (a.reshape(b, -1, heads, d).transpose(0, 2, 1, 3) for a in (q, k, v))
    logits = qh @ kh.transpose(0, 1, 3, 2) / np.sqrt(d)
    logits = np.where(np.arange(k.shape[1])[None, :] <= np.arange(lq)[:, None], logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ vh).transpose(0, 2, 1, 3).reshape(b, lq, c)


# tiles: one; query blocks of one row, padded; several rows each, padded; capped by query_chunk
@pytest.mark.parametrize("lq, lk, tile, chunk, causal", [
    (19, 19, 1 << 20, 0, False), (19, 19, 200, 0, False), (19, 19, 2888, 0, False), (50, 19, 100, 0, False), (50, 19, 1 << 20, 16, False),
    (19, 19, 1 << 20, 0, True), (23, 23, 100, 0, True), (23, 23, 1 << 20, 8, True)])
def test_both_xla_paths_match_the_reference(lq, lk, tile, chunk, causal):
    """The CPU's tiled path and the GPU/TPU einsum path, each called directly (a CPU run picks one)."""
    rng = np.random.default_rng(2)
    heads, d = 4, 8
    q, k, v = (rng.standard_normal((3, n, heads * d)).astype(np.float32) for n in (lq, lk, lk))
    want = (_causal_reference if causal else _reference)(q, k, v, heads)
    split = lambda a: jnp.asarray(a).reshape(a.shape[0], a.shape[1], heads, d)
    for path in (functools.partial(_tiled, tile=tile), _dense):
        out = path(split(q), split(k), split(v), scale=d ** -0.5, query_chunk=chunk, causal=causal)
        np.testing.assert_allclose(np.asarray(out).reshape(want.shape), want, atol=2e-5, rtol=0)


def test_tiled_path_gradient_matches_the_einsum_path():
    rng = np.random.default_rng(4)
    q, k, v = (jnp.asarray(rng.standard_normal((3, n, 2, 8)), jnp.float32) for n in (21, 19, 19))
    loss = lambda path: lambda q, k, v: jnp.sum(jnp.sin(path(q, k, v, scale=0.3, causal=False)))
    got = jax.grad(loss(functools.partial(_tiled, tile=100)), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(_dense), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=0)


def test_query_chunks_keep_the_gradient_and_do_not_store_all_logits():
    """Chunked attention's gradient equals the one-einsum path's; the chunk body is rematerialised, so the
    backward pass keeps no (chunks x chunk x keys) probabilities (a ``checkpoint`` inside the loop)."""
    rng = np.random.default_rng(5)
    q, k, v = (jnp.asarray(rng.standard_normal((2, n, 2, 8)), jnp.float32) for n in (37, 29, 29))
    loss = lambda chunk: lambda q, k, v: jnp.sum(jnp.sin(_dense(q, k, v, scale=0.3, query_chunk=chunk)))
    got = jax.grad(loss(8), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(0), argnums=(0, 1, 2))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=2e-5, rtol=0)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(8)))(q, k, v))
    assert "checkpoint" in jaxpr or "remat" in jaxpr


def test_tiled_path_keeps_low_precision_dtype():
    rng = np.random.default_rng(3)
    q, k, v = (jnp.asarray(rng.standard_normal((2, 40, 2, 8)), jnp.bfloat16) for _ in range(3))
    out = _tiled(q, k, v, scale=8 ** -0.5, tile=64)
    assert out.dtype == jnp.bfloat16
    ref = _dense(*(a.astype(jnp.float32) for a in (q, k, v)), scale=8 ** -0.5)
    assert float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref))) < 0.05


def test_unknown_backend_is_refused():
    x = jnp.zeros((1, 4, 8))
    with pytest.raises(ValueError, match="backend"):
        attention(x, x, x, heads=2, backend="flash")


# two resolution levels: every layer kind, a short compile
SMALL = UNet3DConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                          down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                          up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))


def _random_params(model, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(model))


def _out_and_grad(cfg, params, x, ctx):
    def f(p):
        out = UNet3D(cfg).apply({"params": p}, x, 500.0, ctx)
        return jnp.mean(out ** 2), out
    (_, out), g = jax.jit(jax.value_and_grad(f, has_aux=True))(params)
    return out, g


@pytest.fixture(scope="module")
def small_f32():
    """SMALL's params, inputs, float32 forward and gradient: one program, shared by the tests below (the dtype
    cases compare with its forward)."""
    params = _random_params(UNet3D(SMALL))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 8, 8, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 77 + SMALL.num_ip_tokens, SMALL.cross_attention_dim)).astype(np.float32)
    return (params, x, ctx, *_out_and_grad(SMALL, params, x, ctx))


def test_unet_backends_chunking_and_remat_agree(small_f32):
    """cudnn (XLA's dot_product_attention off GPU): the same forward. Query chunks and remat together: the same
    forward and the same gradient (one program each way: a compile of the UNet's gradient dominates this test)."""
    base = SMALL
    params, x, ctx, ref, ref_grad = small_f32
    cudnn = jax.jit(UNet3D(dataclasses.replace(base, attention_backend="cudnn")).apply)({"params": params}, x, 500.0,
                                                                                         ctx)
    np.testing.assert_allclose(cudnn, ref, atol=2e-5, rtol=0)
    out, grad = _out_and_grad(dataclasses.replace(base, attention_query_chunk=24, remat=True), params, x, ctx)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=0)
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), grad, ref_grad)
    assert max(jax.tree.leaves(diff)) < 1e-5


@pytest.mark.parametrize("dtype, param_dtype, tol", [("bfloat16", "float32", 0.1), ("bfloat16", "bfloat16", 0.1),
                                                      ("float16", "float16", 0.03)])
def test_low_precision_compute_stays_close_to_float32(small_f32, dtype, param_dtype, tol):
    """The dtype plumbing: half-precision compute runs end to end, returns its dtype, and stays near the
    float32 result (which the parity tests tie to the official model); norms and softmax stay float32."""
    params, x, ctx, ref, _ = small_f32
    low = dataclasses.replace(SMALL, dtype=dtype, param_dtype=param_dtype)
    # jitted: one compile of the forward is much cheaper than eager dispatch of each of its ops
    out = jax.jit(UNet3D(low).apply)({"params": jax.tree.map(lambda a: a.astype(param_dtype), params)}, x, 500.0, ctx)
    assert out.dtype == jnp.dtype(dtype)
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - ref)))
    assert err < tol * float(jnp.max(jnp.abs(ref))), err
