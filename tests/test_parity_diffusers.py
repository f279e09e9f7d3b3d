"""Numerical parity of our Flax networks with the diffusers (torch) reference implementations.

* ``ControlNet`` vs diffusers ``ControlNetModel`` (the official X-Dyna ControlNet is a copy of it,
  with the same state-dict names).
* ``UNet3D`` with the X-Dyna additions off (no Dynamics-Adapter, IP layers or motion modules) on a
  single frame vs diffusers ``UNet2DConditionModel``, with and without ControlNet residuals.
* ``Resampler`` vs diffusers ``IPAdapterPlusImageProjection`` (the same Perceiver network as the
  official IP-Adapter-Plus ``Resampler``, under other names; see ``DIFFUSERS_TO_OFFICIAL_RESAMPLER``).

Every torch parameter is filled with random non-zero values (zero-initialised layers such as the
ControlNet zero convs would hide errors), our configs are built with ``*.from_diffusers(torch
config)``, and weights go through the real ``xdyna_jax.porting`` converters. Tiny configs, float32,
max abs error <= 1e-4.
"""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest
import torch

jax.config.update("jax_default_matmul_precision", "highest")

from diffusers import ControlNetModel, UNet2DConditionModel  # noqa: E402
from diffusers.models.embeddings import IPAdapterPlusImageProjection  # noqa: E402

from xdyna_jax.models import (ControlNet, ControlNetConfig, Resampler, ResamplerConfig,  # noqa: E402
                              UNet3D, UNet3DConfig)
from xdyna_jax.porting import (controlnet_params_from_torch, official_entries,  # noqa: E402
                               resampler_params_from_torch, unet_params_from_torch)

ATOL = 1e-4
CROSS_DIM = 48
TOKENS = 7


# ----------------------------------------------------------------------------------------------
# helpers

def randomize_torch_(model: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with random non-zero values.

    weights (ndim >= 2): N(0, 1/sqrt(fan_in)); norm weights (1-D ``weight``): 1 + 0.1 N;
    biases: 0.1 N; anything else (the resampler ``latents``): N(0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            n = torch.randn(p.shape, generator=g, dtype=torch.float64)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "bias":
                v = 0.1 * n
            elif leaf == "weight" and p.ndim == 1:
                v = 1.0 + 0.1 * n
            elif leaf == "weight":
                v = n / np.sqrt(p[0].numel())
            else:
                v = n
            p.copy_(v.to(p.dtype))


def state_dict_np(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def official_keys(cfg) -> set[str]:
    return {e.key for e in official_entries(cfg) if not e.buffer}


def nchw(x: np.ndarray) -> np.ndarray:
    """(..., H, W, C) -> (..., C, H, W)."""
    return np.moveaxis(np.asarray(x), -1, -3)


def nhwc(x: np.ndarray) -> np.ndarray:
    """(..., C, H, W) -> (..., H, W, C)."""
    return np.moveaxis(np.asarray(x), -3, -1)


def t_(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def max_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


def skip_shapes(block_out_channels, layers_per_block, h, w):
    """Per-sample (h, w, C) of the 2D UNet skips, in order: conv_in, each down layer, each downsampler."""
    shapes = [(h, w, block_out_channels[0])]
    n = len(block_out_channels)
    for i, c in enumerate(block_out_channels):
        shapes += [(h, w, c)] * layers_per_block
        if i < n - 1:  # 3x3 conv, stride 2, padding 1
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            shapes.append((h, w, c))
    return shapes, (h, w, block_out_channels[-1])


def report(name, err):
    print(f"[parity] {name}: max abs err {err:.3e}")


# ----------------------------------------------------------------------------------------------
# ControlNet

TINY_CN = dict(block_out_channels=(32, 64, 64, 64), attention_head_dim=2, cross_attention_dim=CROSS_DIM,
               norm_num_groups=32, conditioning_embedding_out_channels=(16, 32, 32, 64))


def _controlnet(cond_channels: int, layers_per_block: int, seed: int):
    torch_model = ControlNetModel(conditioning_channels=cond_channels, layers_per_block=layers_per_block,
                                  **TINY_CN).eval()
    randomize_torch_(torch_model, seed)
    cfg = ControlNetConfig.from_diffusers(torch_model.config)
    return torch_model, cfg


def test_controlnet_config_from_diffusers():
    torch_model = ControlNetModel(conditioning_channels=6, layers_per_block=2, **TINY_CN)
    cfg = ControlNetConfig.from_diffusers(torch_model.config)
    assert cfg.conditioning_channels == 6
    assert cfg.block_out_channels == (32, 64, 64, 64)
    assert cfg.attention_head_dim == (2, 2, 2, 2)
    assert cfg.layers_per_block == 2
    assert cfg.cross_attention_dim == CROSS_DIM
    assert cfg.conditioning_embedding_out_channels == (16, 32, 32, 64)
    assert cfg.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert cfg.norm_eps == 1e-5 and cfg.norm_num_groups == 32
    assert cfg.flip_sin_to_cos is True and cfg.freq_shift == 0 and cfg.use_linear_projection is False


@pytest.mark.parametrize("cond_channels", [3, 6])
def test_controlnet_key_names_match_official(cond_channels):
    torch_model, cfg = _controlnet(cond_channels, 2, seed=0)
    assert set(torch_model.state_dict()) == official_keys(cfg)


@pytest.mark.parametrize("cond_channels,layers_per_block,scale", [
    (3, 1, 1.0), (3, 2, 0.5), (6, 2, 1.0), (6, 1, 0.5)])
def test_controlnet_matches_diffusers(cond_channels, layers_per_block, scale):
    torch_model, cfg = _controlnet(cond_channels, layers_per_block, seed=cond_channels + layers_per_block)
    sd = state_dict_np(torch_model)
    assert set(sd) == official_keys(cfg)
    params = controlnet_params_from_torch(sd, cfg)

    rng = np.random.default_rng(1)
    n, h, w = 2, 8, 16
    sample = rng.standard_normal((n, h, w, 4)).astype(np.float32)
    cond = rng.random((n, 8 * h, 8 * w, cond_channels)).astype(np.float32)
    context = rng.standard_normal((n, TOKENS, CROSS_DIM)).astype(np.float32)
    t = np.array([961.0, 41.0], np.float32)

    with torch.no_grad():
        ref_down, ref_mid = torch_model(t_(nchw(sample)), torch.from_numpy(t), t_(context),
                                        t_(nchw(cond)), conditioning_scale=scale, return_dict=False)
    down, mid = ControlNet(cfg).apply({"params": params}, sample, t, context, cond, conditioning_scale=scale)
    assert len(down) == len(ref_down) == 1 + 4 * layers_per_block + 3
    errs = [max_err(d, nhwc(r.numpy())) for d, r in zip(down, ref_down)]
    errs.append(max_err(mid, nhwc(ref_mid.numpy())))
    report(f"controlnet cc={cond_channels} lpb={layers_per_block} scale={scale}", max(errs))
    assert max(errs) <= ATOL, errs


def test_controlnet_video_call_matches_per_frame_diffusers():
    """5-D (B, F, ...) call == diffusers on the "(b f)" batch with each sample's text and timestep."""
    torch_model, cfg = _controlnet(3, 1, seed=11)
    params = controlnet_params_from_torch(state_dict_np(torch_model), cfg)
    rng = np.random.default_rng(2)
    # 16x16 latents: at 8x8 the mid block is 1x1 and its GroupNorm (2 channels x 1 pixel per group)
    # is ill-conditioned enough to amplify fp32 rounding to ~2e-4 (the 4-D call agrees bit for bit).
    b, f, h, w = 2, 3, 16, 16
    sample = rng.standard_normal((b, f, h, w, 4)).astype(np.float32)
    cond = rng.random((b, f, 8 * h, 8 * w, 3)).astype(np.float32)
    context = rng.standard_normal((b, TOKENS, CROSS_DIM)).astype(np.float32)
    t = np.array([961.0, 1.0], np.float32)

    with torch.no_grad():
        ref_down, ref_mid = torch_model(
            t_(nchw(sample.reshape((b * f, h, w, 4)))), torch.from_numpy(np.repeat(t, f)),
            t_(np.repeat(context, f, axis=0)), t_(nchw(cond.reshape((b * f, 8 * h, 8 * w, 3)))),
            conditioning_scale=0.5, return_dict=False)
    down, mid = ControlNet(cfg).apply({"params": params}, sample, t, context, cond, conditioning_scale=0.5)
    errs = []
    for d, r in zip(list(down) + [mid], list(ref_down) + [ref_mid]):
        r = nhwc(r.numpy())
        assert d.shape == (b, f) + r.shape[1:]
        errs.append(max_err(np.asarray(d).reshape(r.shape), r))
    report("controlnet video (B=2, F=3)", max(errs))
    assert max(errs) <= ATOL, errs


# ----------------------------------------------------------------------------------------------
# UNet3D (adapter, IP and motion off) on one frame vs UNet2DConditionModel

TINY_UNET = dict(block_out_channels=(32, 64, 64, 64), attention_head_dim=2, cross_attention_dim=CROSS_DIM,
                 norm_num_groups=32, sample_size=16,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)


def _unet(layers_per_block: int, use_linear_projection: bool, seed: int):
    torch_model = UNet2DConditionModel(layers_per_block=layers_per_block,
                                       use_linear_projection=use_linear_projection, **TINY_UNET).eval()
    randomize_torch_(torch_model, seed)
    cfg = UNet3DConfig.from_diffusers(torch_model.config)
    return torch_model, cfg


def test_unet_config_from_plain_diffusers_turns_xdyna_parts_off():
    torch_model = UNet2DConditionModel(layers_per_block=2, **TINY_UNET)
    cfg = UNet3DConfig.from_diffusers(torch_model.config)
    assert cfg.use_motion_module is False
    assert cfg.unet_use_ipadapter is False
    assert cfg.unet_use_cross_frame_attention == "default"
    assert cfg.down_block_types == ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    assert cfg.up_block_types == ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    assert cfg.attention_head_dim == (2, 2, 2, 2) and cfg.block_out_channels == (32, 64, 64, 64)
    assert cfg.layers_per_block == 2 and cfg.cross_attention_dim == CROSS_DIM


@pytest.mark.parametrize("use_linear_projection", [False, True])
def test_unet_key_names_match_diffusers(use_linear_projection):
    torch_model, cfg = _unet(2, use_linear_projection, seed=0)
    assert set(torch_model.state_dict()) == official_keys(cfg)
    assert not any(e.buffer for e in official_entries(cfg))


UNET_CASES = [
    # (layers_per_block, use_linear_projection, (h, w), with_residuals)
    pytest.param(1, False, (16, 16), False, id="lpb1-16x16"),
    pytest.param(2, False, (16, 16), True, id="lpb2-16x16-residuals"),
    pytest.param(1, False, (12, 20), True, id="lpb1-12x20-residuals"),
    pytest.param(2, False, (12, 20), False, id="lpb2-12x20"),
    pytest.param(1, True, (16, 8), True, id="lpb1-linear-proj-16x8-residuals"),
]


@pytest.mark.parametrize("layers_per_block,linear,size,with_residuals", UNET_CASES)
def test_unet3d_one_frame_matches_unet2d(layers_per_block, linear, size, with_residuals):
    torch_model, cfg = _unet(layers_per_block, linear, seed=layers_per_block + 10 * linear + size[1])
    sd = state_dict_np(torch_model)
    assert set(sd) == official_keys(cfg)
    params = unet_params_from_torch(sd, cfg)

    rng = np.random.default_rng(3)
    b, (h, w) = 2, size
    sample = rng.standard_normal((b, h, w, 4)).astype(np.float32)
    context = rng.standard_normal((b, TOKENS, CROSS_DIM)).astype(np.float32)
    t = np.array([961.0, 41.0], np.float32)
    kw_t, kw_j = {}, {}
    if with_residuals:
        shapes, mid_shape = skip_shapes(cfg.block_out_channels, layers_per_block, h, w)
        down = [rng.standard_normal((b,) + s).astype(np.float32) for s in shapes]
        mid = rng.standard_normal((b,) + mid_shape).astype(np.float32)
        kw_t = dict(down_block_additional_residuals=tuple(t_(nchw(r)) for r in down),
                    mid_block_additional_residual=t_(nchw(mid)))
        kw_j = dict(down_residuals=[r[:, None] for r in down], mid_residual=mid[:, None])

    with torch.no_grad():
        ref = torch_model(t_(nchw(sample)), torch.from_numpy(t), t_(context), return_dict=False, **kw_t)[0]
    out = UNet3D(cfg).apply({"params": params}, sample[:, None], t, context, **kw_j)
    assert out.shape == (b, 1, h, w, 4)
    err = max_err(out[:, 0], nhwc(ref.numpy()))
    report(f"unet3d-vs-unet2d lpb={layers_per_block} linear={linear} {h}x{w} residuals={with_residuals}", err)
    assert err <= ATOL
    if with_residuals:  # the residuals must actually matter
        without = UNet3D(cfg).apply({"params": params}, sample[:, None], t, context)
        assert max_err(without, out) > 1e-2


# ----------------------------------------------------------------------------------------------
# Resampler vs IPAdapterPlusImageProjection

def diffusers_to_official_resampler_key(key: str) -> str | None:
    """diffusers ``IPAdapterPlusImageProjection`` key -> official IP-Adapter ``Resampler`` key.

    The networks are identical; only the module names differ. This is the inverse of what
    ``UNet2DConditionLoadersMixin._convert_ip_adapter_image_proj_to_diffusers`` (diffusers
    ``loaders/unet.py``) does when it loads an ``ip-adapter-plus`` ``image_proj`` state dict:

      official ``layers.i.0`` = PerceiverAttention        diffusers ``layers.i`` = Block
        ``layers.i.0.norm1``  (LN of the image features)    ``layers.i.ln0``
        ``layers.i.0.norm2``  (LN of the latents)           ``layers.i.ln1``
        ``layers.i.0.to_q``                                  ``layers.i.attn.to_q``
        ``layers.i.0.to_kv``  (rows: k then v)               ``layers.i.attn.to_k`` / ``to_v`` (concat)
        ``layers.i.0.to_out`` (no bias)                      ``layers.i.attn.to_out.0``
      official ``layers.i.1`` = Sequential(LN, Linear, GELU, Linear)
        ``layers.i.1.0``                                     ``layers.i.ff.0``
        ``layers.i.1.1``                                     ``layers.i.ff.1.net.0.proj`` (GELU module's Linear)
        ``layers.i.1.3``                                     ``layers.i.ff.1.net.2``
      ``latents``, ``proj_in``, ``proj_out``, ``norm_out`` keep their names.

    Returns None for ``to_k``/``to_v``, which ``resampler_state_from_diffusers`` fuses into ``to_kv``.
    """
    rules = [
        (r"^layers\.(\d+)\.ln0\.", r"layers.\1.0.norm1."),
        (r"^layers\.(\d+)\.ln1\.", r"layers.\1.0.norm2."),
        (r"^layers\.(\d+)\.attn\.to_q\.", r"layers.\1.0.to_q."),
        (r"^layers\.(\d+)\.attn\.to_out\.0\.", r"layers.\1.0.to_out."),
        (r"^layers\.(\d+)\.ff\.0\.", r"layers.\1.1.0."),
        (r"^layers\.(\d+)\.ff\.1\.net\.0\.proj\.", r"layers.\1.1.1."),
        (r"^layers\.(\d+)\.ff\.1\.net\.2\.", r"layers.\1.1.3."),
    ]
    if re.match(r"^layers\.\d+\.attn\.to_[kv]\.", key):
        return None
    for pat, rep in rules:
        if re.match(pat, key):
            return re.sub(pat, rep, key)
    if re.match(r"^(latents|proj_in\.|proj_out\.|norm_out\.)", key):
        return key
    raise KeyError(f"unmapped diffusers resampler key {key!r}")


def resampler_state_from_diffusers(sd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in sd.items():
        new = diffusers_to_official_resampler_key(k)
        if new is not None:
            out[new] = v
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("layers."))
    for i in range(depth):
        out[f"layers.{i}.0.to_kv.weight"] = np.concatenate(
            [sd[f"layers.{i}.attn.to_k.weight"], sd[f"layers.{i}.attn.to_v.weight"]], axis=0)
    return out


RESAMPLER_CASES = [
    # our ResamplerConfig fields; inner = heads * dim_head equal to / different from dim
    pytest.param(dict(dim=32, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=40, output_dim=48),
                 id="tiny"),
    pytest.param(dict(dim=32, depth=3, dim_head=8, heads=2, num_queries=5, embedding_dim=24, output_dim=40),
                 id="inner-ne-dim"),
]


@pytest.mark.parametrize("kw", RESAMPLER_CASES)
def test_resampler_matches_diffusers_ip_adapter_plus_projection(kw):
    torch_model = IPAdapterPlusImageProjection(
        embed_dims=kw["embedding_dim"], output_dims=kw["output_dim"], hidden_dims=kw["dim"], depth=kw["depth"],
        dim_head=kw["dim_head"], heads=kw["heads"], num_queries=kw["num_queries"], ffn_ratio=4).eval()
    randomize_torch_(torch_model, seed=kw["depth"])
    cfg = ResamplerConfig(ff_mult=4, **kw)
    sd = resampler_state_from_diffusers(state_dict_np(torch_model))
    assert set(sd) == official_keys(cfg)
    params = resampler_params_from_torch(sd, cfg)

    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 13, kw["embedding_dim"])).astype(np.float32)
    with torch.no_grad():
        ref = torch_model(t_(x)).numpy()
    out = Resampler(cfg).apply({"params": params}, x)
    assert out.shape == (3, kw["num_queries"], kw["output_dim"])
    err = max_err(out, ref)
    report(f"resampler {kw}", err)
    assert err <= ATOL
    # non-degenerate outputs: the tokens differ between queries and between images
    assert np.std(np.asarray(out)) > 0.1
    assert max_err(out[0], out[1]) > 1e-2
