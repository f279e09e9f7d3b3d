"""The X-Dyna-specific pieces of our models against independent numpy re-derivations.

Each reference below is written from the formulas of the spec (XDYNA_SPEC.md sections 2, 3 and 10), in
float64 numpy, reading our params only by name; nothing is compared with numbers our code produced
earlier. Params are random and non-zero everywhere (zero-initialised layers would hide errors).

Covered: the Dynamics-Adapter attention (``mixed_cross``) and its ``first_cross`` / ``default``
siblings; IP-Adapter cross-attention; the motion module with the reference bypass and its sinusoidal
position encoding; GroupNorm pooled over frames in the resnets; ControlNet residual injection in the
UNet; timestep embedding, GEGLU and exact GELU; and end-to-end frame-dependency properties of the
UNet (spec section 11).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from scipy.special import erf

jax.config.update("jax_default_matmul_precision", "highest")

from xdyna_jax.models import UNet3D, UNet3DConfig  # noqa: E402
from xdyna_jax.models.attention import CrossAttention, SelfAttention  # noqa: E402
from xdyna_jax.models.blocks import BlockSpec, MidBlock3D, ResnetBlock3D, UpBlock  # noqa: E402
from xdyna_jax.models.configs import MotionConfig  # noqa: E402
from xdyna_jax.models.layers import FeedForward, GEGLU, gelu_exact, timestep_embedding  # noqa: E402
from xdyna_jax.models.motion import MotionModule, sinusoidal_position_encoding  # noqa: E402
from xdyna_jax.porting import names  # noqa: E402

ATOL = 1e-4
SAME = 1e-6  # "unchanged": a different input elsewhere may not move these values at all


# ----------------------------------------------------------------------------------------------
# random params and numpy building blocks

def random_params(module: nn.Module, *inputs, seed: int = 0):
    """Our param tree for ``module``, every leaf random and non-zero.

    kernels: N(0, 1/sqrt(fan_in)); norm scales: 1 + 0.1 N; biases: 0.1 N; anything else N(0, 1).
    """
    # shapes only (eval_shape): running ``init`` for real is slow for the UNet and not needed
    tree = jax.eval_shape(lambda: nn.unbox(module.init(jax.random.key(seed), *inputs)["params"]))
    rng = np.random.default_rng(seed)
    flat = {}
    for path, v in traverse_util.flatten_dict(tree).items():
        n = rng.standard_normal(v.shape)
        leaf = path[-1]
        if leaf == "kernel":
            val = n / math.sqrt(int(np.prod(v.shape[:-1])))
        elif leaf == "scale":
            val = 1.0 + 0.1 * n
        elif leaf == "bias":
            val = 0.1 * n
        else:
            val = n
        flat[path] = val.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


def f64(p):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)


def dense_np(x, p):
    y = x @ p["kernel"]
    return y + p["bias"] if "bias" in p else y


def softmax_np(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def attn_np(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head over the last two axes; torch's ``head_to_batch_dim``
    split: head h owns channels [h*d, (h+1)*d) (heads are the outer factor of the channel axis)."""
    c = q.shape[-1]
    d = c // heads
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        logits = q[..., sl] @ np.swapaxes(k[..., sl], -1, -2) / math.sqrt(d)
        out[..., sl] = softmax_np(logits) @ v[..., sl]
    return out


def attn_np_interleaved(q, k, v, heads):
    """The wrong head layout (heads as the inner factor); used only to show the tests can tell."""
    perm = np.arange(q.shape[-1]).reshape(-1, heads).T.reshape(-1)
    inv = np.argsort(perm)
    return attn_np(q[..., perm], k[..., perm], v[..., perm], heads)[..., inv]


def layer_norm_np(x, p, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def group_norm_np(x, p, groups, eps, pooled_over_frames):
    """torch GroupNorm on (B, F, H, W, C): statistics over (C/G, H, W) per frame, or over
    (C/G, F, H, W) when ``pooled_over_frames`` (torch GroupNorm on the 5-D (b, c, f, h, w) tensor)."""
    b, f, h, w, c = x.shape
    g = x.reshape(b, f, h, w, groups, c // groups)
    axes = (1, 2, 3, 5) if pooled_over_frames else (2, 3, 5)
    mean = g.mean(axes, keepdims=True)
    var = ((g - mean) ** 2).mean(axes, keepdims=True)
    return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * p["scale"] + p["bias"]


def gelu_exact_np(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def gelu_tanh_np(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def silu_np(x):
    return x / (1.0 + np.exp(-x))


def official_geglu_proj(p):
    """Our ``net_0/proj`` params in the official layout (torch weight (2 inner, in), bias): ours
    interleave value and gate columns for tensor parallelism; the porting rule undoes that."""
    path = ("ff", "net_0", "proj")
    return (names.to_torch(np.asarray(p["kernel"]), path + ("kernel",)),
            names.to_torch(np.asarray(p["bias"]), path + ("bias",)))


def geglu_ff_np(x, p):
    """diffusers FeedForward(geglu): proj -> [value | gate] -> value * GELU_exact(gate) -> net_2."""
    weight, bias = official_geglu_proj(p["net_0"]["proj"])
    h = x @ weight.T + bias
    inner = h.shape[-1] // 2
    return dense_np(h[..., :inner] * gelu_exact_np(h[..., inner:]), p["net_2"])


def conv_np(x, p, pad):
    """Stride-1 conv with symmetric zero padding; x (..., H, W, Ci), kernel (kh, kw, Ci, Co)."""
    k = p["kernel"]
    kh, kw = k.shape[:2]
    h, w = x.shape[-3:-1]
    xp = np.pad(x, [(0, 0)] * (x.ndim - 3) + [(pad, pad), (pad, pad), (0, 0)])
    y = np.zeros(x.shape[:-1] + (k.shape[-1],))
    for i in range(kh):
        for j in range(kw):
            y += xp[..., i:i + h, j:j + w, :] @ k[i, j]
    return y + p["bias"]


def pe_formula(length, dim):
    """Official AnimateDiff PositionalEncoding: pe[p, 2i] = sin(p 10000^(-2i/C)), pe[p, 2i+1] = cos(...)."""
    pe = np.zeros((length, dim))
    for pos in range(length):
        for i in range(dim // 2):
            a = pos * 10000.0 ** (-2.0 * i / dim)
            pe[pos, 2 * i] = math.sin(a)
            pe[pos, 2 * i + 1] = math.cos(a)
    return pe


def err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


# ----------------------------------------------------------------------------------------------
# Dynamics-Adapter attention (attn1)

B, F, N, C, HEADS = 2, 3, 5, 8, 2


def _attn1_np(p, x, mode):
    q, k, v = (x @ p[n]["kernel"] for n in ("to_q", "to_k", "to_v"))
    # reference keys / values: frame 0 of each sample, seen by every frame of that sample
    k_ref = np.broadcast_to(k[:, :1], k.shape)
    v_ref = np.broadcast_to(v[:, :1], v.shape)
    if mode == "default":
        return dense_np(attn_np(q, k, v, HEADS), p["to_out_0"])
    if mode == "first_cross":
        return dense_np(attn_np(q, k_ref, v_ref, HEADS), p["to_out_0"])
    q_ff = x @ p["to_q_ff"]["kernel"]
    return (dense_np(attn_np(q, k, v, HEADS), p["to_out_0"])
            + dense_np(attn_np(q_ff, k_ref, v_ref, HEADS), p["to_out_ff"]))


EXPECTED_ATTN1_PARAMS = {
    "default": {"to_q/kernel", "to_k/kernel", "to_v/kernel", "to_out_0/kernel", "to_out_0/bias"},
    "first_cross": {"to_q/kernel", "to_k/kernel", "to_v/kernel", "to_out_0/kernel", "to_out_0/bias"},
    "mixed_cross": {"to_q/kernel", "to_k/kernel", "to_v/kernel", "to_out_0/kernel", "to_out_0/bias",
                    "to_q_ff/kernel", "to_out_ff/kernel", "to_out_ff/bias"},
}


@pytest.mark.parametrize("mode", ["mixed_cross", "first_cross", "default"])
def test_self_attention_modes_match_formula(mode):
    x = np.random.default_rng(0).standard_normal((B, F, N, C)).astype(np.float32)
    mod = SelfAttention(heads=HEADS, mode=mode)
    params = random_params(mod, x, seed=1)
    names = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    assert names == EXPECTED_ATTN1_PARAMS[mode]
    out = mod.apply({"params": params}, x)
    want = _attn1_np(f64(params), x.astype(np.float64), mode)
    assert err(out, want) <= ATOL
    if mode == "mixed_cross":
        # the head layout matters, so the reference above really pins torch's head_to_batch_dim split
        p = f64(params)
        q, k, v = (x @ p[n]["kernel"] for n in ("to_q", "to_k", "to_v"))
        wrong = dense_np(attn_np_interleaved(q, k, v, HEADS), p["to_out_0"])
        assert err(dense_np(attn_np(q, k, v, HEADS), p["to_out_0"]), wrong) > 1e-3


@pytest.mark.parametrize("mode", ["mixed_cross", "first_cross"])
def test_reference_frame_attention_sees_only_itself(mode):
    """Frame 0's output depends on frame 0 alone; frames >= 1 depend on frame 0."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((B, F, N, C)).astype(np.float32)
    mod = SelfAttention(heads=HEADS, mode=mode)
    params = random_params(mod, x, seed=3)
    out = mod.apply({"params": params}, x)
    x2 = x.copy()
    x2[:, 1:] = rng.standard_normal(x2[:, 1:].shape)
    assert err(mod.apply({"params": params}, x2)[:, 0], out[:, 0]) <= SAME
    x3 = x.copy()
    x3[:, 0] += 1.0
    assert err(mod.apply({"params": params}, x3)[:, 1:], out[:, 1:]) > 1e-3


# ----------------------------------------------------------------------------------------------
# IP-Adapter cross-attention (attn2)

@pytest.mark.parametrize("n_ip", [0, 3])
def test_ip_cross_attention_matches_formula(n_ip):
    rng = np.random.default_rng(4)
    d_ctx, t = 6, 7
    x = rng.standard_normal((B, F, N, C)).astype(np.float32)
    ctx = rng.standard_normal((B, t, d_ctx)).astype(np.float32)
    mod = CrossAttention(heads=HEADS, num_ip_tokens=n_ip)
    params = random_params(mod, x, ctx, seed=5)
    names = {"/".join(k) for k in traverse_util.flatten_dict(params)}
    want_names = {"to_q/kernel", "to_k/kernel", "to_v/kernel", "to_out_0/kernel", "to_out_0/bias"}
    if n_ip:
        want_names |= {"to_k_ip/kernel", "to_v_ip/kernel"}  # no bias, as the official Linear(bias=False)
    assert names == want_names
    out = mod.apply({"params": params}, x, ctx)

    p, x64, c64 = f64(params), x.astype(np.float64), ctx.astype(np.float64)
    text, img = (c64[:, :t - n_ip], c64[:, t - n_ip:]) if n_ip else (c64, None)
    q = x64 @ p["to_q"]["kernel"]
    # the context of sample b is shared by all its frames: broadcast (B, T, C) -> (B, F, T, C)
    per_frame = lambda a: np.broadcast_to(a[:, None], (B, F) + a.shape[1:])
    h = attn_np(q, per_frame(text @ p["to_k"]["kernel"]), per_frame(text @ p["to_v"]["kernel"]), HEADS)
    if n_ip:  # decoupled image attention, summed *before* the single to_out (one bias, IP scale 1)
        h = h + attn_np(q, per_frame(img @ p["to_k_ip"]["kernel"]), per_frame(img @ p["to_v_ip"]["kernel"]), HEADS)
    want = dense_np(h, p["to_out_0"])
    assert err(out, want) <= ATOL
    if n_ip:  # one bias, not two: to_out(A) + to_out(B) would add the bias twice
        two_bias = dense_np(h, p["to_out_0"]) + p["to_out_0"]["bias"]
        assert err(want, two_bias) > 1e-2


@pytest.mark.parametrize("tokens", [3, 2])
def test_ip_cross_attention_rejects_too_short_context(tokens):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((B, F, N, C)).astype(np.float32)
    mod = CrossAttention(heads=HEADS, num_ip_tokens=3)
    params = random_params(mod, x, rng.standard_normal((B, 7, 6)).astype(np.float32), seed=7)
    with pytest.raises(ValueError, match="image tokens"):
        mod.apply({"params": params}, x, rng.standard_normal((B, tokens, 6)).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# motion module

MC = 64  # 32 GroupNorm groups (hard-coded in the official module) -> 2 channels per group
MOTION = MotionConfig(num_attention_heads=2)


def _temporal_transformer_np(p, x, heads):
    """TemporalTransformer3DModel on frames given (B, F, H, W, C): per-frame GN(32, 1e-6) -> proj_in ->
    [LN -> +PE -> temporal self-attention] x 2 -> LN -> GEGLU FF -> proj_out -> + input."""
    b, f, hh, ww, c = x.shape
    h = group_norm_np(x, p["norm"], 32, 1e-6, pooled_over_frames=False)
    h = dense_np(h.reshape(b, f, hh * ww, c), p["proj_in"])
    blk = p["transformer_blocks_0"]
    pe = pe_formula(f, c)  # positions 0.. follow the frames given
    for i in range(2):
        a = blk[f"attention_blocks_{i}"]
        n = layer_norm_np(h, blk[f"norms_{i}"]) + pe[None, :, None, :]  # PE on the LN output only
        seq = np.swapaxes(n, 1, 2)  # (B, HW, F, C): a sequence over frames per location
        o = attn_np(seq @ a["to_q"]["kernel"], seq @ a["to_k"]["kernel"], seq @ a["to_v"]["kernel"], heads)
        h = h + np.swapaxes(dense_np(o, a["to_out_0"]), 1, 2)
    h = h + geglu_ff_np(layer_norm_np(h, blk["ff_norm"]), blk["ff"])
    return dense_np(h, p["proj_out"]).reshape(x.shape) + x


def _motion_np(p, x, cross_id):
    tt = p["temporal_transformer"]
    if cross_id:  # the reference frame bypasses the temporal transformer
        return np.concatenate([x[:, :1], _temporal_transformer_np(tt, x[:, 1:], 2)], axis=1)
    return _temporal_transformer_np(tt, x, 2)


@pytest.mark.parametrize("cross_id", [True, False])
def test_motion_module_matches_formula(cross_id):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 5, 2, 3, MC)).astype(np.float32)
    mod = MotionModule(MotionConfig(num_attention_heads=2, cross_id=cross_id))
    params = random_params(mod, x, seed=9)
    out = np.asarray(mod.apply({"params": params}, x))
    assert err(out, _motion_np(f64(params), x.astype(np.float64), cross_id)) <= ATOL
    x2 = x.copy()
    x2[:, 0] = rng.standard_normal(x2[:, 0].shape)
    out2 = np.asarray(mod.apply({"params": params}, x2))
    if cross_id:
        assert np.array_equal(out[:, 0], x[:, 0])  # frame 0 passes through untouched
        assert np.array_equal(out2[:, 0], x2[:, 0])
        assert err(out2[:, 1:], out[:, 1:]) <= SAME  # frames 1.. do not see frame 0
    else:
        assert err(out2[:, 1:], out[:, 1:]) > 1e-3


def test_position_encoding_matches_official_formula():
    for dim in (8, 64, 320):
        assert err(sinusoidal_position_encoding(24, dim), pe_formula(24, dim)) <= 1e-5


@pytest.mark.parametrize("cross_id,frames,ok", [(True, 25, True), (True, 26, False),
                                                (False, 24, True), (False, 25, False)])
def test_motion_module_max_len(cross_id, frames, ok):
    """More temporal frames than ``temporal_position_encoding_max_len`` (24) raise; with cross_id the
    reference frame does not count."""
    mod = MotionModule(MotionConfig(num_attention_heads=2, cross_id=cross_id))
    small = jnp.zeros((1, 3, 1, 1, MC))
    params = random_params(mod, small, seed=10)
    x = jnp.asarray(np.random.default_rng(11).standard_normal((1, frames, 1, 1, MC)), jnp.float32)
    if ok:
        assert mod.apply({"params": params}, x).shape == x.shape
    else:
        with pytest.raises(ValueError, match="max_len"):
            mod.apply({"params": params}, x)


# ----------------------------------------------------------------------------------------------
# resnet GroupNorm pooled over frames

def _resnet_spec(c_out, inflated):
    return BlockSpec(out_channels=c_out, num_layers=1, heads=1, has_attention=False, has_motion=False,
                     add_sampler=False, groups=32, eps=1e-5, inflated_gn=inflated)


def _resnet_np(p, x, temb, pooled):
    """ResnetBlock3D: GN1 -> SiLU -> conv1 -> + time_emb_proj(SiLU(temb)) -> GN2 -> SiLU -> conv2,
    plus the (1x1-conv) shortcut; both GNs eps 1e-5 with 32 groups."""
    h = conv_np(silu_np(group_norm_np(x, p["norm1"], 32, 1e-5, pooled)), p["conv1"], 1)
    h = h + dense_np(silu_np(temb), p["time_emb_proj"])[:, None, None, None, :]
    h = conv_np(silu_np(group_norm_np(h, p["norm2"], 32, 1e-5, pooled)), p["conv2"], 1)
    sc = conv_np(x, p["conv_shortcut"], 0) if "conv_shortcut" in p else x
    return sc + h


@pytest.mark.parametrize("inflated", [False, True])
@pytest.mark.parametrize("c_in", [64, 32])
def test_resnet_groupnorm_over_frames(inflated, c_in):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 4, 4, 4, c_in)).astype(np.float32)
    temb = rng.standard_normal((2, 16)).astype(np.float32)
    mod = ResnetBlock3D(64, _resnet_spec(64, inflated))
    params = random_params(mod, x, temb, seed=13)
    out = mod.apply({"params": params}, x, temb)
    assert err(out, _resnet_np(f64(params), x.astype(np.float64), temb.astype(np.float64),
                               pooled=not inflated)) <= ATOL
    x2 = x.copy()
    x2[:, 3] = 3.0 * rng.standard_normal(x2[:, 3].shape) + 1.0  # change frame 3 only
    out2 = mod.apply({"params": params}, x2, temb)
    moved = err(out2[:, 0], out[:, 0])
    if inflated:
        assert moved <= SAME
    else:  # X-Dyna (use_inflated_groupnorm=False): window content reaches the reference frame
        assert moved > 1e-2


# ----------------------------------------------------------------------------------------------
# timestep embedding, GEGLU, GELU

@pytest.mark.parametrize("dim", [32, 320, 31])
@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("shift", [0, 1])
def test_timestep_embedding_matches_diffusers_formula(dim, flip, shift):
    t = np.array([0.0, 1.0, 41.0, 500.5, 961.0, 999.0], np.float32)
    half = dim // 2
    # diffusers get_timestep_embedding: exponent = -ln(10000) k / (half - shift), args = t * exp(.) (fp32)
    freqs = np.exp(-math.log(10000.0) * np.arange(half, dtype=np.float32) / np.float32(half - shift))
    args = (t[:, None] * freqs.astype(np.float32)[None]).astype(np.float64)
    emb = np.concatenate([np.sin(args), np.cos(args)], -1)
    if flip:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], -1)
    if dim % 2:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    ours = np.asarray(timestep_embedding(jnp.asarray(t), dim, flip, shift))
    assert err(ours, emb) <= ATOL

    import torch
    from diffusers.models.embeddings import get_timestep_embedding
    ref = get_timestep_embedding(torch.from_numpy(t), dim, flip_sin_to_cos=flip, downscale_freq_shift=shift).numpy()
    assert err(ours, ref) <= ATOL


def test_gelu_is_exact_not_tanh():
    x = np.array([-2.7, -1.0, -0.3, 0.0, 0.5, 1.7, 2.7, 4.0])
    ours = np.asarray(gelu_exact(jnp.asarray(x, jnp.float32)))
    assert err(ours, gelu_exact_np(x)) <= 1e-6
    # the tanh approximation differs by ~4.7e-4 at |x| = 2.7: this test would catch it
    assert np.abs(gelu_tanh_np(x) - gelu_exact_np(x)).max() > 3e-4


def test_geglu_value_then_gate():
    rng = np.random.default_rng(14)
    x = (2.0 * rng.standard_normal((4, 5, 6))).astype(np.float32)
    mod = GEGLU(inner=7)
    params = random_params(mod, x, seed=15)
    weight, bias = official_geglu_proj(f64(params)["proj"])
    h = x.astype(np.float64) @ weight.T + bias
    want = h[..., :7] * gelu_exact_np(h[..., 7:])  # official layout: first half value, second half gate
    out = mod.apply({"params": params}, x)
    assert err(out, want) <= ATOL
    assert err(want, h[..., 7:] * gelu_exact_np(h[..., :7])) > 1e-2  # the swapped order is different
    assert err(want, h[..., :7] * gelu_tanh_np(h[..., 7:])) > 1e-5
    ours = x.astype(np.float64) @ f64(params)["proj"]["kernel"] + f64(params)["proj"]["bias"]
    assert err(want, ours[..., :7] * gelu_exact_np(ours[..., 7:])) > 1e-2  # our stored layout is not the official

    ff = FeedForward()
    fparams = random_params(ff, x, seed=16)
    assert err(ff.apply({"params": fparams}, x), geglu_ff_np(x.astype(np.float64), f64(fparams))) <= ATOL
    assert fparams["net_0"]["proj"]["kernel"].shape == (6, 48) and fparams["net_2"]["kernel"].shape == (24, 6)


# ----------------------------------------------------------------------------------------------
# UNet3D: ControlNet residual injection and frame dependencies

# mixed_cross + IP (4 tokens) + motion modules with cross_id, pooled GN. Two resolution levels (a cross-attention
# down block, a plain one, the mid block, their up blocks): every layer kind and skip kind (conv_in, down layer,
# downsampler) while the properties below do not depend on depth (the 4-level tiny UNet's eager calls took most
# of this file's time).
TINY = UNet3DConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                         down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                         up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
UB, UF, US, TEXT = 2, 4, 16, 6


def _unet_inputs(cfg, seed, frames=UF):
    rng = np.random.default_rng(seed)
    sample = rng.standard_normal((UB, frames, US, US, 4)).astype(np.float32)
    ctx = rng.standard_normal((UB, TEXT + cfg.num_ip_tokens, cfg.cross_attention_dim)).astype(np.float32)
    t = np.array([961.0, 41.0], np.float32)
    return sample, t, ctx


_PARAMS_CACHE = {}


def _unet(cfg):
    if cfg not in _PARAMS_CACHE:
        model = UNet3D(cfg)
        sample, t, ctx = _unet_inputs(cfg, 0)
        params = random_params(model, sample[:, :2, :8, :8], t, ctx, seed=17)
        # eager on purpose: jit would compile the tiny UNet (~25 s) for every residual structure,
        # while eager JAX caches its per-op executables across calls and configs (~1.5 s a call)
        fn = lambda p, x, t, c, d, m: np.asarray(model.apply({"params": p}, x, t, c, d, m))
        _PARAMS_CACHE[cfg] = (model, params, fn)
    return _PARAMS_CACHE[cfg]


def _skip_shapes(cfg, frames, size):
    """Per-sample (F, h, w, C) of the UNet skips: conv_in, each down layer, each downsampler."""
    shapes, s = [(frames, size, size, cfg.block_out_channels[0])], size
    n = len(cfg.block_out_channels)
    for i, c in enumerate(cfg.block_out_channels):
        shapes += [(frames, s, s, c)] * cfg.layers_per_block
        if i < n - 1:
            s = (s - 1) // 2 + 1
            shapes.append((frames, s, s, c))
    return shapes, (frames, s, s, cfg.block_out_channels[-1])


def _residuals(cfg, frames, seed):
    rng = np.random.default_rng(seed)
    shapes, mid = _skip_shapes(cfg, frames, US)
    return ([rng.standard_normal((UB,) + s).astype(np.float32) for s in shapes],
            rng.standard_normal((UB,) + mid).astype(np.float32))


def _with_zero_reference(down, mid):
    pad = lambda r: np.concatenate([np.zeros_like(r[:, :1]), r], axis=1)
    return [pad(r) for r in down], pad(mid)


def test_unet_residual_k_is_added_to_skip_k():
    """Running with residuals == running without them while adding r_k to skip k on its way into the
    up path (the up block that consumes it) and m to the mid-block output, as the spec's section 1.8
    describes: skips in order conv_in, down layers, downsamplers; up block i takes the last
    layers_per_block+1 remaining skips. Also: the stream entering the mid block is not modified."""
    cfg = TINY
    model, params, _ = _unet(cfg)
    sample, t, ctx = _unet_inputs(cfg, 3)
    down, mid = _residuals(cfg, UF, 4)  # full frames, so the reference frame is perturbed as well

    n_up = len(cfg.up_block_types)
    remaining = list(range(len(down)))
    per_up = []
    for _ in range(n_up):
        take = cfg.layers_per_block + 1
        per_up.append(remaining[-take:])
        remaining = remaining[:-take]
    assert not remaining

    mid_inputs = {}

    def add_residuals(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(mod, UpBlock):
            idx = per_up[int(mod.name.rsplit("_", 1)[1])]
            skips = [s + down[k] for s, k in zip(args[1], idx)]
            return next_fun(args[0], skips, *args[2:], **kwargs)
        if isinstance(mod, MidBlock3D):
            return next_fun(*args, **kwargs) + mid
        return next_fun(*args, **kwargs)

    def record_mid_input(tag):
        def icpt(next_fun, args, kwargs, context):
            if isinstance(context.module, MidBlock3D) and context.method_name == "__call__":
                mid_inputs[tag] = np.asarray(args[0])
            return next_fun(*args, **kwargs)
        return icpt

    with nn.intercept_methods(record_mid_input("with")):
        want = model.apply({"params": params}, sample, t, ctx, down, mid)
    with nn.intercept_methods(add_residuals):
        got = model.apply({"params": params}, sample, t, ctx)
    with nn.intercept_methods(record_mid_input("without")):
        model.apply({"params": params}, sample, t, ctx)
    assert err(got, want) <= SAME
    assert np.array_equal(mid_inputs["with"], mid_inputs["without"])


def test_unet_rejects_bad_residuals():
    model, params, _ = _unet(TINY)
    sample, t, ctx = _unet_inputs(TINY, 5)
    down, mid = _residuals(TINY, UF, 6)
    apply = lambda d, m: model.apply({"params": params}, sample, t, ctx, d, m)
    with pytest.raises(ValueError, match=f"expected {len(down)} down residuals, got {len(down) - 1}"):
        apply(down[:-1], mid)
    bad = list(down)
    bad[3] = np.zeros(bad[3].shape[:-1] + (bad[3].shape[-1] + 1,), np.float32)
    with pytest.raises(ValueError, match="does not fit"):
        apply(bad, mid)
    bad = list(down)
    bad[0] = bad[0][:, 1:]  # F-1 frames: the reference frame's residual is never implied by a shape
    with pytest.raises(ValueError, match="does not fit"):
        apply(bad, mid)
    with pytest.raises(ValueError, match="does not fit"):
        apply(down, mid[:, :, :1])


def test_unet_reference_frame_isolated_except_pooled_groupnorm():
    """Spec section 11: with mixed_cross + motion cross_id and per-frame (inflated) GroupNorm, frame 0's
    output is independent of frames >= 1 (and of zero-padded ControlNet residuals); frames >= 1 depend
    on frame 0. With X-Dyna's pooled GroupNorm, frame 0 does depend on the other frames."""
    cfg = dataclass_replace(TINY, use_inflated_groupnorm=True)
    assert cfg.unet_use_cross_frame_attention == "mixed_cross" and cfg.motion_module_kwargs.cross_id
    _, params, fn = _unet(cfg)
    sample, t, ctx = _unet_inputs(cfg, 7)
    out = np.asarray(fn(params, sample, t, ctx, None, None))
    other = sample.copy()
    other[:, 1:] = np.random.default_rng(8).standard_normal(other[:, 1:].shape)
    out_other = np.asarray(fn(params, other, t, ctx, None, None))
    assert err(out_other[:, 0], out[:, 0]) <= SAME
    down, mid = _with_zero_reference(*_residuals(cfg, UF - 1, 9))
    out_res = np.asarray(fn(params, sample, t, ctx, down, mid))
    assert err(out_res[:, 0], out[:, 0]) <= SAME
    assert err(out_res[:, 1:], out[:, 1:]) > 1e-2
    ref = sample.copy()
    ref[:, 0] += 0.5
    out_ref = np.asarray(fn(params, ref, t, ctx, None, None))
    assert err(out_ref[:, 1:], out[:, 1:]) > 1e-3

    # the official setting (pooled GroupNorm): the window reaches the reference frame
    cfg_pooled = dataclass_replace(cfg, use_inflated_groupnorm=False)
    _, params_p, fn_p = _unet(cfg_pooled)
    a = np.asarray(fn_p(params_p, sample, t, ctx, None, None))
    changed = sample.copy()
    changed[:, 3] = np.random.default_rng(10).standard_normal(changed[:, 3].shape)
    b = np.asarray(fn_p(params_p, changed, t, ctx, None, None))
    assert err(a[:, 0], b[:, 0]) > 1e-3

    # without the motion-module bypass the reference frame sees the others even with per-frame GN
    cfg_nocross = dataclass_replace(cfg, motion_module_kwargs=MotionConfig(num_attention_heads=2, cross_id=False))
    _, params_n, fn_n = _unet(cfg_nocross)
    a = np.asarray(fn_n(params_n, sample, t, ctx, None, None))
    b = np.asarray(fn_n(params_n, other, t, ctx, None, None))
    assert err(a[:, 0], b[:, 0]) > 1e-3


def dataclass_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)
