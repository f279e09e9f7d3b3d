"""``ff_chunk``: feed-forwards over token chunks (bounded GEGLU memory) compute the same values with the same params."""
from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xdyna_jax.models import ControlNet, ControlNetConfig, UNet3D, UNet3DConfig, param_shapes
from xdyna_jax.models.layers import feed_forward

_erf = np.vectorize(math.erf)


def _ff_reference(p, x):
    """diffusers FeedForward(geglu) in float64 numpy: value * GELU_exact(gate) -> Dense. Our ``proj`` columns
    are interleaved (2i value, 2i+1 gate; layers.GEGLU)."""
    x = np.asarray(x, np.float64)
    h = x @ np.asarray(p["net_0"]["proj"]["kernel"], np.float64) + np.asarray(p["net_0"]["proj"]["bias"], np.float64)
    value, gate = h[..., 0::2], h[..., 1::2]
    g = value * 0.5 * gate * (1.0 + _erf(gate / math.sqrt(2.0)))
    return g @ np.asarray(p["net_2"]["kernel"], np.float64) + np.asarray(p["net_2"]["bias"], np.float64)


class _Wrap(nn.Module):
    chunk: int

    @nn.compact
    def __call__(self, x):
        return feed_forward(x, chunk=self.chunk, name="ff")


@pytest.mark.parametrize("chunk", [0, 5, 13, 37, 64])  # none; padded (37 = 5 x 8 - 3); uneven; one; more than n
def test_feed_forward_chunks_match_the_reference_and_keep_the_params(chunk):
    x = jax.random.normal(jax.random.key(0), (2, 3, 37, 16))
    plain = jax.tree.map(np.asarray, nn.unbox(_Wrap(0).init(jax.random.key(1), x)["params"]))
    chunked = jax.tree.map(np.asarray, nn.unbox(_Wrap(chunk).init(jax.random.key(1), x)["params"]))
    assert jax.tree.structure(chunked) == jax.tree.structure(plain)  # the same param tree (bundles, porting)
    jax.tree.map(np.testing.assert_array_equal, chunked, plain)
    out = jax.jit(_Wrap(chunk).apply)({"params": plain}, x)
    np.testing.assert_allclose(np.asarray(out), _ff_reference(plain["ff"], x), atol=2e-5, rtol=0)


def _random_params(model, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(model))


def test_unet_and_controlnet_with_ff_chunk_equal_the_plain_networks():
    """The knob reaches every feed-forward (transformer blocks and motion modules): chunks smaller than every
    level's token count change nothing but the loop."""
    unet = UNet3DConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                             down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                             up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 3, 8, 8, 4)).astype(np.float32)
    ctx = rng.standard_normal((1, 77 + unet.num_ip_tokens, unet.cross_attention_dim)).astype(np.float32)
    params = _random_params(UNet3D(unet))
    run = lambda cfg: np.asarray(jax.jit(UNet3D(cfg).apply)({"params": params}, x, 500.0, ctx))  # noqa: E731
    ref = run(unet)
    np.testing.assert_allclose(run(dataclasses.replace(unet, ff_chunk=7)), ref, atol=2e-5, rtol=1e-5)

    cn = ControlNetConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                               down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"))
    cond = rng.standard_normal((1, 3, 64, 64, cn.conditioning_channels)).astype(np.float32)
    ctx = ctx[:, :77, :cn.cross_attention_dim]
    cparams = _random_params(ControlNet(cn))

    def run_cn(cfg):
        down, mid = jax.jit(ControlNet(cfg).apply)({"params": cparams}, x, 500.0, ctx, cond)
        return [np.asarray(a) for a in (*down, mid)]

    for got, want in zip(run_cn(dataclasses.replace(cn, ff_chunk=9)), run_cn(cn)):
        np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)  # residuals reach |10|: float32 sums


def test_negative_ff_chunk_is_refused():
    with pytest.raises(ValueError, match="ff_chunk must be >= 0"):
        UNet3DConfig.tiny(ff_chunk=-1)
