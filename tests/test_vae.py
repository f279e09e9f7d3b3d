"""The SD1.5 VAE: parity with diffusers ``AutoencoderKL`` (tiny config, float32, random non-zero
weights), the video helpers, strict porting (old attention names included), the key list and the CLI."""
from __future__ import annotations

import functools
import json

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from official_weights import official_weights
from xdyna_jax.models import param_shapes
from xdyna_jax.models.vae import AutoencoderKL, VAEConfig, latent_dist_sample
from xdyna_jax.porting import (PortingError, load_converted, load_vae,
                               vae_params_from_torch, vae_params_to_torch, write_safetensors)
from xdyna_jax.porting.__main__ import main as cli_main

TOL = 1e-4
CFG = VAEConfig.tiny()  # (32, 64) channels, 1 resnet per level, 16 groups (2 and 4 channels a group)
ATTN = "encoder.mid_block.attentions.0"


def diffusers_config(cfg: VAEConfig) -> dict:
    n = len(cfg.block_out_channels)
    return dict(in_channels=cfg.in_channels, out_channels=cfg.out_channels, latent_channels=cfg.latent_channels,
                block_out_channels=list(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
                norm_num_groups=cfg.norm_num_groups, down_block_types=["DownEncoderBlock2D"] * n,
                up_block_types=["UpDecoderBlock2D"] * n, sample_size=32, scaling_factor=cfg.scaling_factor)


@functools.lru_cache(maxsize=None)
def oracle():
    """(diffusers AutoencoderKL with random non-zero weights, their state dict as numpy)."""
    from diffusers import AutoencoderKL as TorchVAE

    torch.manual_seed(0)
    vae = TorchVAE(**diffusers_config(CFG)).eval()
    sd = official_weights({k: tuple(v.shape) for k, v in vae.state_dict().items()}, seed=7)
    vae.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    return vae, sd


@functools.lru_cache(maxsize=None)
def fn(method: str, cfg: VAEConfig = CFG):
    return jax.jit(functools.partial(AutoencoderKL(cfg).apply, method=method))


def params():
    return {"params": vae_params_from_torch(oracle()[1], CFG)}


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def nhwc(t):
    return np.moveaxis(t.detach().numpy(), 1, -1)


def err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- parity with diffusers -------------------------------------------------------------------

@pytest.mark.parametrize("hw", [(24, 16), (17, 13)], ids=["24x16", "odd_17x13"])
def test_encode_matches_diffusers(hw):
    vae, sd = oracle()
    x = np.random.default_rng(1).uniform(-1, 1, (2,) + hw + (3,)).astype(np.float32)
    with torch.no_grad():
        dist = vae.encode(nchw(x)).latent_dist
    mean, logvar = fn("encode")(params(), x)
    e_mean, e_logvar = err(mean, nhwc(dist.mean)), err(logvar, nhwc(dist.logvar))
    print(f"encode {hw}: mean {e_mean:.2e}, logvar {e_logvar:.2e} (mean |mean| {np.abs(mean).mean():.3f})")
    assert mean.shape == nhwc(dist.mean).shape == (2, hw[0] // 2, hw[1] // 2, 4)
    assert e_mean <= TOL and e_logvar <= TOL


def test_logvar_is_clipped_as_diffusers():
    vae, sd = oracle()
    bias = sd["quant_conv.bias"].copy()
    bias[4:6], bias[6:] = 100.0, -100.0  # logvar channels: far above 20 and far below -30
    with torch.no_grad():
        vae.quant_conv.bias.copy_(torch.from_numpy(bias))
        x = np.random.default_rng(2).uniform(-1, 1, (1, 24, 16, 3)).astype(np.float32)
        dist = vae.encode(nchw(x)).latent_dist
        vae.quant_conv.bias.copy_(torch.from_numpy(sd["quant_conv.bias"]))
    _, logvar = fn("encode")({"params": vae_params_from_torch(dict(sd, **{"quant_conv.bias": bias}), CFG)}, x)
    assert np.all(np.asarray(logvar)[..., :2] == 20.0) and np.all(np.asarray(logvar)[..., 2:] == -30.0)
    assert err(logvar, nhwc(dist.logvar)) == 0.0


def test_decode_matches_diffusers():
    vae, _ = oracle()
    z = np.random.default_rng(3).standard_normal((2, 12, 8, 4)).astype(np.float32)
    with torch.no_grad():
        want = nhwc(vae.decode(nchw(z)).sample)
    got = fn("decode")(params(), z)
    e = err(got, want)
    print(f"decode: {e:.2e} (mean |out| {np.abs(want).mean():.3f})")
    assert got.shape == want.shape == (2, 24, 16, 3) and e <= TOL


def test_sample_path_with_the_same_noise_and_scaling():
    """X-Dyna's reference latent: latent_dist.sample(generator) * 0.18215, and decode(latents / 0.18215)."""
    vae, _ = oracle()
    x = np.random.default_rng(4).uniform(-1, 1, (1, 24, 16, 3)).astype(np.float32)
    with torch.no_grad():
        dist = vae.encode(nchw(x)).latent_dist
        ref = dist.sample(generator=torch.Generator().manual_seed(40)) * 0.18215
        eps = torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(40))  # the same draw
        decoded = nhwc(vae.decode(ref / 0.18215).sample)
    mean, logvar = fn("encode")(params(), x)
    ours = latent_dist_sample(mean, logvar, noise=nhwc(eps)) * CFG.scaling_factor
    e_s = err(ours, nhwc(ref))
    got = fn("decode_video_from_latents")(params(), nhwc(ref)[:, None])[:, 0]
    e_d = err(got, decoded)
    print(f"sample*0.18215: {e_s:.2e}; decode(latents/0.18215): {e_d:.2e}")
    assert e_s <= TOL and e_d <= TOL
    # the rng path is the same formula with eps ~ N(0, 1) from the key
    key = jax.random.key(5)
    lat = fn("encode_video_to_latents")(params(), x[:, None], key)
    want = latent_dist_sample(mean, logvar, key) * CFG.scaling_factor
    assert lat.shape == (1, 1, 12, 8, 4) and err(lat[:, 0], want) <= 1e-6
    with pytest.raises(ValueError, match="exactly one of rng or noise"):
        latent_dist_sample(mean, logvar)


@pytest.mark.parametrize("b,f,chunk", [(1, 5, 2), (2, 2, 3)], ids=["5_frames_chunk2", "2x2_frames_chunk3"])
def test_decode_video_in_chunks_equals_per_frame(b, f, chunk):
    cfg = VAEConfig.tiny(decode_chunk=chunk)
    z = np.random.default_rng(6).standard_normal((b, f, 6, 4, 4)).astype(np.float32)
    got = fn("decode_video", cfg)(params(), z)
    per_frame = np.stack([fn("decode")(params(), z[:, i]) for i in range(f)], axis=1)
    e = err(got, per_frame)
    print(f"decode_video B={b} F={f} chunk={chunk}: {e:.2e}")
    assert got.shape == (b, f, 12, 8, 3) and e <= 1e-5
    mean, _ = fn("encode_video")(params(), np.asarray(per_frame))
    assert mean.shape == (b, f, 6, 4, 4)


# --- porting ---------------------------------------------------------------------------------

def test_round_trip_is_bit_exact_and_fits_param_shapes():
    _, sd = oracle()
    p = vae_params_from_torch(sd, CFG)
    shapes = param_shapes(AutoencoderKL(CFG))
    assert jax.tree.structure(p) == jax.tree.structure(shapes)
    assert all(a.shape == s.shape and a.dtype == s.dtype for a, s in zip(jax.tree.leaves(p), jax.tree.leaves(shapes)))
    back = vae_params_to_torch(p, CFG)
    assert sorted(back) == sorted(sd)
    assert all(back[k].dtype == v.dtype and np.array_equal(back[k], v) for k, v in sd.items())
    flat = traverse_util.flatten_dict(p)
    np.testing.assert_array_equal(flat[("encoder", "mid_block", "attentions_0", "to_out_0", "kernel")],
                                  sd[f"{ATTN}.to_out.0.weight"].T)
    np.testing.assert_array_equal(flat[("encoder", "down_blocks_0", "downsamplers_0", "conv", "kernel")],
                                  sd["encoder.down_blocks.0.downsamplers.0.conv.weight"].transpose(2, 3, 1, 0))


def old_style(sd, conv_shaped=False):
    new_to_old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    out = {}
    for k, v in sd.items():
        for new, old in new_to_old.items():
            if ".mid_block.attentions.0." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{old}.")
                v = v[:, :, None, None] if conv_shaped and v.ndim == 2 else v
        out[k] = v
    return out


@pytest.mark.parametrize("conv_shaped", [False, True], ids=["linear", "conv_1x1"])
def test_old_attention_names_are_accepted(conv_shaped):
    _, sd = oracle()
    old = old_style(sd, conv_shaped)
    assert f"{ATTN}.proj_attn.weight" in old and f"{ATTN}.to_q.weight" not in old
    want, got = vae_params_from_torch(sd, CFG), vae_params_from_torch(old, CFG)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)))
    with pytest.raises(PortingError, match=r"both '.*\.query\.weight' and '.*\.to_q\.weight' hold"):
        vae_params_from_torch(dict(old, **{f"{ATTN}.to_q.weight": sd[f"{ATTN}.to_q.weight"]}), CFG)


def test_strict_errors_name_the_key():
    _, sd = oracle()
    missing = {k: v for k, v in sd.items() if k != "decoder.up_blocks.1.resnets.1.conv2.bias"}
    with pytest.raises(PortingError, match=r"1 missing key\(s\):\n  decoder\.up_blocks\.1\.resnets\.1\.conv2\.bias"):
        vae_params_from_torch(missing, CFG)
    with pytest.raises(PortingError, match=r"1 unknown key\(s\):\n  encoder\.mid_block\.attentions\.0\.foo\.weight"):
        vae_params_from_torch(dict(sd, **{f"{ATTN}.foo.weight": np.zeros((2, 2), np.float32)}), CFG)
    bad = dict(sd, **{"post_quant_conv.weight": np.zeros((4, 8, 1, 1), np.float32)})
    with pytest.raises(PortingError, match=r"post_quant_conv\.weight: expected shape \(4, 4, 1, 1\), found \(4, 8, 1, 1\)"):
        vae_params_from_torch(bad, CFG)


def test_config_from_diffusers():
    vae, _ = oracle()
    assert VAEConfig.from_diffusers(vae.config) == CFG
    sd15 = json.loads(json.dumps({"_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu",
                                  **diffusers_config(VAEConfig.sd15()), "sample_size": 512}))
    assert VAEConfig.from_diffusers(sd15) == VAEConfig.sd15()
    assert VAEConfig.from_diffusers(sd15, decode_chunk=4).decode_chunk == 4
    for bad, match in [({"use_quant_conv": False}, "use_quant_conv=False is not supported"),
                       ({"shift_factor": 0.1}, "shift_factor=0.1 is not supported"),
                       ({"up_block_types": ["AttnUpDecoderBlock2D"] * 4}, "up_block_types=.*not supported"),
                       ({"frobnicate": 1}, r"unknown VAE config key\(s\) \['frobnicate'\]")]:
        with pytest.raises(ValueError, match=match):
            VAEConfig.from_diffusers({**sd15, **bad})


def test_load_vae_folder_and_cli_convert(tmp_path):
    _, sd = oracle()
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", **diffusers_config(CFG)}))
    write_safetensors(old_style(sd), folder / "diffusion_pytorch_model.safetensors")
    p, cfg = load_vae(folder)
    assert cfg == CFG
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(vae_params_from_torch(sd, CFG))))
    assert cli_main(["convert", "--kind", "vae", "--checkpoint", str(folder), "--out", str(tmp_path / "out")]) == 0
    restored, cfg2 = load_converted(tmp_path / "out", "vae")
    assert cfg2 == CFG
    back = vae_params_to_torch(restored, cfg2)
    assert all(np.array_equal(back[k], v) for k, v in sd.items())
