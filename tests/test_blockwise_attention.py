"""The ``blockwise`` attention backend: the dense result and gradient, in memory linear in the lengths."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_attention_backends import SMALL, _random_params

from xdyna_jax import config
from xdyna_jax.models import ModelsConfig, UNet3D
from xdyna_jax.models.attention import _dense, _tiled, attention
from xdyna_jax.models.blockwise import blockwise_attention, pallas_attention, pallas_fits


def _inputs(seed, n, lq, lk, heads, d, dtype=jnp.float32):
    """q, k, v in (N, L, H, d) and a random cotangent w for the linear loss sum(w * out)."""
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.standard_normal((n, m, heads, d)), dtype) for m in (lq, lk, lk, lq))


def _value_and_grads(fn, q, k, v, w):
    loss = lambda q, k, v: jnp.sum(w.astype(jnp.float32) * fn(q, k, v).astype(jnp.float32))
    return fn(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# blocks: several of each, lengths not divisible (padding, masking); one block of each (very short);
# divisible lengths; causal, also with queries != keys; one query per block
@pytest.mark.parametrize("lq, lk, heads, d, bq, bk, causal", [
    (50, 19, 4, 8, 16, 8, False), (5, 3, 1, 4, 512, 1024, False), (64, 64, 2, 8, 16, 32, False),
    (37, 37, 2, 8, 8, 16, True), (23, 40, 3, 8, 8, 16, True), (9, 33, 2, 4, 1, 7, False)])
def test_forward_and_gradients_match_the_einsum_path(lq, lk, heads, d, bq, bk, causal):
    q, k, v, w = _inputs(0, 2, lq, lk, heads, d)
    scale = 0.7 * d ** -0.5  # not the default: the scale must reach the backward pass too
    got = _value_and_grads(lambda *a: blockwise_attention(*a, scale=scale, causal=causal, block_q=bq, block_k=bk),
                           q, k, v, w)
    want = _value_and_grads(lambda *a: _dense(*a, scale=scale, causal=causal), q, k, v, w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.shape == r.shape and g.dtype == r.dtype
        assert _rel(g, r) < 1e-5


@pytest.mark.parametrize("chunk, causal", [(0, False), (7, False), (0, True)])
def test_attention_backend_matches_xla(chunk, causal):
    """Through ``attention()``: channels split into heads, default scale, ``query_chunk`` as its query block."""
    rng = np.random.default_rng(1)
    q, k, v, w = (jnp.asarray(rng.standard_normal((3, n, 32)), jnp.float32) for n in (50, 50 if causal else 19,
                                                                                      50 if causal else 19, 50))
    run = lambda backend: _value_and_grads(
        lambda *a: attention(*a, heads=4, backend=backend, query_chunk=chunk, causal=causal), q, k, v, w)
    for g, r in zip(jax.tree.leaves(run("blockwise")), jax.tree.leaves(run("xla"))):
        assert _rel(g, r) < 1e-5


def test_bfloat16_inputs_stay_bfloat16_and_close():
    """bf16 in, bf16 out and gradients; statistics in float32, so the error is bf16 rounding only."""
    q, k, v, w = _inputs(2, 2, 70, 45, 2, 16, jnp.bfloat16)
    got = _value_and_grads(lambda *a: blockwise_attention(*a, scale=0.25, block_q=16, block_k=16), q, k, v, w)
    f32 = [a.astype(jnp.float32) for a in (q, k, v, w)]
    want = _value_and_grads(lambda *a: _dense(*a, scale=0.25), *f32)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == jnp.bfloat16
        assert _rel(g, r) < 2e-2


@pytest.mark.parametrize("lq, lk, causal", [(45, 30, False), (33, 33, True)])
def test_matches_torch_sdpa(lq, lk, causal):
    torch = pytest.importorskip("torch")
    q, k, v, w = _inputs(3, 2, lq, lk, 3, 8)
    got = _value_and_grads(lambda *a: blockwise_attention(*a, scale=0.3, causal=causal, block_q=8, block_k=16),
                           q, k, v, w)
    # torch's layout is (N, H, L, d); its is_causal keeps keys j <= i, as ours
    tq, tk, tv, tw = (torch.tensor(np.asarray(a).transpose(0, 2, 1, 3), requires_grad=True) for a in (q, k, v, w))
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal, scale=0.3)
    (out * tw).sum().backward()
    want = [t.detach().numpy().transpose(0, 2, 1, 3) for t in (out, tq.grad, tk.grad, tv.grad)]
    for g, r in zip(jax.tree.leaves(got), want):
        assert _rel(g, r) < 1e-5


def test_unet_forward_matches_xla():
    params = _random_params(UNet3D(SMALL))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 8, 8, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 77 + SMALL.num_ip_tokens, SMALL.cross_attention_dim)).astype(np.float32)
    run = lambda cfg: jax.jit(UNet3D(cfg).apply)({"params": params}, x, 500.0, ctx)
    # query blocks of 24: the 64- and 192-query attentions run several padded blocks
    out = run(dataclasses.replace(SMALL, attention_backend="blockwise", attention_query_chunk=24))
    np.testing.assert_allclose(out, run(SMALL), atol=2e-5, rtol=0)


def test_memory_is_linear_in_the_lengths():
    """value_and_grad at 8192 x 8192 queries x keys, compiled only: the einsum path holds whole logits
    (256 MiB each, several for the backward pass), the blockwise one a few blocks."""
    s = jax.ShapeDtypeStruct((1, 8192, 1, 64), jnp.float32)

    def temp_bytes(fn):
        loss = lambda q, k, v, w: jnp.sum(w * fn(q, k, v, scale=0.125))
        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(s, s, s, s).compile() \
            .memory_analysis().temp_size_in_bytes

    dense, tiled, blockwise = temp_bytes(_dense), temp_bytes(_tiled), temp_bytes(blockwise_attention)
    assert dense >= 8192 * 8192 * 4
    assert blockwise < 32 * 2 ** 20, blockwise  # 512 x 1024 float32 blocks are 2 MiB
    assert blockwise * 20 < min(dense, tiled), (dense, tiled, blockwise)


def test_backend_is_a_config_value_and_named_in_the_error():
    cfg = config.load(ModelsConfig, "configs/tiny.yaml", ["unet.attention_backend=blockwise"])
    assert cfg.unet.attention_backend == "blockwise"
    x = jnp.zeros((1, 4, 8))
    with pytest.raises(ValueError, match="blockwise"):
        attention(x, x, x, heads=2, backend="flash")


def test_pallas_tpu_kernel_in_interpret_mode():
    """The TPU route, run on the CPU by the Pallas TPU interpreter: padded lengths (segment ids), causal."""
    pltpu = pytest.importorskip("jax.experimental.pallas.tpu")
    if not hasattr(pltpu, "force_tpu_interpret_mode"):
        pytest.skip("no Pallas TPU interpret mode in this jax")
    assert pallas_fits(128, 128, 64) and not pallas_fits(77, 4096, 64) and not pallas_fits(128, 128, 160)
    q, k, v, w = (jnp.swapaxes(a, 1, 2) for a in _inputs(4, 1, 200, 130, 2, 32))  # (N, H, L, d)
    dense = lambda *a: jnp.swapaxes(_dense(*(jnp.swapaxes(x, 1, 2) for x in a), scale=0.2, causal=True), 1, 2)
    with pltpu.force_tpu_interpret_mode():
        got = _value_and_grads(lambda *a: pallas_attention(*a, scale=0.2, causal=True), q, k, v, w)
    for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(_value_and_grads(dense, q, k, v, w))):
        assert _rel(g, r) < 1e-5
