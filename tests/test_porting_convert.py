"""Strict conversion, bit-exact round trips, file formats and the composing loaders (tiny configs)."""
from __future__ import annotations

import json
import pickle

import jax
import ml_dtypes
import numpy as np
import pytest
import torch
from flax import traverse_util

from official_weights import official_weights
from xdyna_jax.models import (ControlNet, ControlNetConfig, Resampler, ResamplerConfig, UNet3D,
                              UNet3DConfig, param_shapes)
from xdyna_jax.models.motion import sinusoidal_position_encoding
from xdyna_jax.porting import (PortingError, controlnet_params_from_torch, controlnet_params_to_torch,
                               load_controlnet, load_resampler, load_xdyna_unet, official_entries,
                               read_state_dict, resampler_params_from_torch, resampler_params_to_torch,
                               unet_params_from_sd15, unet_params_from_torch, unet_params_to_torch,
                               write_safetensors)

UNET, CNET, RESAMPLER = UNet3DConfig.tiny(), ControlNetConfig.tiny(), ResamplerConfig.tiny()
PE = "down_blocks.0.motion_modules.0.temporal_transformer.transformer_blocks.0.attention_blocks.1.pos_encoder.pe"
TO_Q = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"


def state(cfg, seed=0, pe=False):
    """Non-zero official-named weights for ``cfg`` (and the formula's pe buffers if asked)."""
    entries = official_entries(cfg)
    sd = official_weights({e.key: e.shape for e in entries}, seed)
    if pe:
        sd.update({e.key: sinusoidal_position_encoding(e.shape[1], e.shape[2])[None] for e in entries if e.buffer})
    return sd


def torch_state(sd):
    return {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}


ROUND_TRIPS = [
    (UNET, UNet3D, unet_params_from_torch, unet_params_to_torch),
    (CNET, ControlNet, controlnet_params_from_torch, controlnet_params_to_torch),
    (RESAMPLER, Resampler, resampler_params_from_torch, resampler_params_to_torch),
]


@pytest.mark.parametrize("cfg,model,to_flax,to_torch", ROUND_TRIPS, ids=["unet", "controlnet", "resampler"])
def test_round_trip_is_bit_exact(cfg, model, to_flax, to_torch):
    sd = state(cfg, pe=True)
    params = to_flax(sd, cfg)
    shapes = param_shapes(model(cfg))
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shapes)):
        assert isinstance(p, np.ndarray) and p.shape == s.shape and p.dtype == s.dtype
    back = to_torch(params, cfg)
    assert sorted(back) == sorted(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k


def test_layout_of_converted_params():
    sd = state(UNET)
    p = unet_params_from_torch(sd, UNET)
    attn1 = p["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]
    np.testing.assert_array_equal(attn1["to_q"]["kernel"], sd[TO_Q].T)
    np.testing.assert_array_equal(p["conv_in"]["kernel"], sd["conv_in.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(p["conv_norm_out"]["scale"], sd["conv_norm_out.weight"])


def test_pe_buffers_are_optional_on_import_and_checked_when_present():
    sd = state(UNET)
    assert PE not in sd
    unet_params_from_torch(sd, UNET)  # recomputed by the model
    fp16 = dict(sd, **{PE: sinusoidal_position_encoding(24, 32)[None].astype(np.float16)})
    unet_params_from_torch(fp16, UNET)  # fp16 rounding is tolerated
    wrong = sinusoidal_position_encoding(24, 32)[None].copy()
    wrong[0, 3, 5] += 0.01
    with pytest.raises(PortingError, match="attention_blocks.1.pos_encoder.pe: differs"):
        unet_params_from_torch(dict(sd, **{PE: wrong}), UNET)
    longer = sinusoidal_position_encoding(32, 32)[None]
    with pytest.raises(PortingError, match=r"pos_encoder.pe: expected shape \(1, 24, 32\), found \(1, 32, 32\)"):
        unet_params_from_torch(dict(sd, **{PE: longer}), UNET)


def test_missing_and_unknown_keys_are_all_listed():
    sd = state(UNET)
    del sd["conv_in.weight"], sd[TO_Q]
    sd["conv_in.weight_typo"] = np.zeros(1, np.float32)
    sd["extra_block.bias"] = np.zeros(1, np.float32)
    with pytest.raises(PortingError) as e:
        unet_params_from_torch(sd, UNET)
    msg = str(e.value)
    assert "2 unknown key(s)" in msg and "2 missing key(s)" in msg
    for k in ("conv_in.weight_typo", "extra_block.bias", "conv_in.weight", TO_Q):
        assert k in msg


def test_shape_mismatch_names_key_expected_and_found():
    sd = state(CNET)
    c0 = CNET.conditioning_embedding_out_channels[0]
    sd["controlnet_cond_embedding.conv_in.weight"] = np.zeros((c0, 6, 3, 3), np.float32)
    with pytest.raises(PortingError, match=rf"controlnet_cond_embedding\.conv_in\.weight: expected shape "
                                           rf"\({c0}, 3, 3, 3\), found \({c0}, 6, 3, 3\)"):
        controlnet_params_from_torch(sd, CNET)


def test_export_rejects_params_of_another_config():
    params = controlnet_params_from_torch(state(CNET), CNET)
    c0 = CNET.conditioning_embedding_out_channels[0]
    with pytest.raises(PortingError, match=rf"conv_in/kernel: expected shape \(3, 3, 6, {c0}\), found \(3, 3, 3, {c0}\)"):
        controlnet_params_to_torch(params, ControlNetConfig.tiny(conditioning_channels=6))


def test_values_are_cast_to_the_param_dtype_and_export_keeps_it():
    sd = {k: v.astype(np.float16) for k, v in state(RESAMPLER).items()}
    p = resampler_params_from_torch(sd, RESAMPLER)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(p))
    bf = ResamplerConfig.tiny(param_dtype="bfloat16")
    pb = resampler_params_from_torch(sd, bf)
    assert all(x.dtype == ml_dtypes.bfloat16 for x in jax.tree.leaves(pb))
    back = resampler_params_to_torch(p, RESAMPLER, dtype=np.float16)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)


# --- files ------------------------------------------------------------------------------------

def test_safetensors_and_ckpt_files(tmp_path):
    sd = state(CNET)
    write_safetensors(sd, tmp_path / "c.safetensors")
    got = read_state_dict(tmp_path / "c.safetensors")
    assert sorted(got) == sorted(sd) and all(np.array_equal(got[k], sd[k]) for k in sd)
    # an X-Dyna training checkpoint: {"state_dict": {"module." + key: tensor}}
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch_state(sd).items()}, "epoch": 5},
               tmp_path / "c.ckpt")
    got = read_state_dict(tmp_path / "c.ckpt")
    assert sorted(got) == sorted(sd) and all(np.array_equal(got[k], sd[k]) for k in sd)
    params, cfg = load_controlnet(tmp_path / "c.ckpt", CNET)
    assert cfg == CNET
    assert np.array_equal(controlnet_params_to_torch(params, CNET)["conv_in.weight"], sd["conv_in.weight"])


def test_module_prefix_is_stripped_only_as_a_prefix_and_dtypes_are_kept(tmp_path):
    t = {"module.a.motion_modules.0.weight": torch.ones(2, dtype=torch.float16),
         "b.module.c": torch.tensor([1.0, 2.5, -3.0], dtype=torch.bfloat16),
         "motion_modules.x": torch.zeros(1)}
    torch.save(t, tmp_path / "m.pth")
    got = read_state_dict(tmp_path / "m.pth")
    assert sorted(got) == ["a.motion_modules.0.weight", "b.module.c", "motion_modules.x"]
    assert got["a.motion_modules.0.weight"].dtype == np.float16
    assert got["b.module.c"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(got["b.module.c"].astype(np.float32), [1.0, 2.5, -3.0])


class _NotATensor:
    pass


def test_unreadable_files_are_named(tmp_path):
    with open(tmp_path / "evil.ckpt", "wb") as f:
        pickle.dump({"x": _NotATensor()}, f, protocol=2)
    with pytest.raises(PortingError, match=r"evil\.ckpt: torch\.load\(weights_only=True\) failed"):
        read_state_dict(tmp_path / "evil.ckpt")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(PortingError, match=r"w\.npz: unknown checkpoint format"):
        read_state_dict(tmp_path / "w.npz")
    with pytest.raises(PortingError, match=r"nope\.safetensors: no such file"):
        read_state_dict(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(PortingError, match=r"bad\.safetensors: cannot read"):
        read_state_dict(tmp_path / "bad.safetensors")
    torch.save({"ip_adapter": {"a": torch.zeros(1)}}, tmp_path / "ip.bin")
    with pytest.raises(PortingError, match=r"ip\.bin: no 'image_proj' sub-dict"):
        read_state_dict(tmp_path / "ip.bin", select="image_proj")


# --- composing loaders ------------------------------------------------------------------------

def _is_adapter(k):
    return ".to_q_ff." in k or ".to_out_ff." in k


def test_xdyna_unet_init_plus_overlay(tmp_path):
    full = state(UNET, seed=1, pe=True)
    # init file: SD1.5 + AnimateDiff + IP-Adapter, no Dynamics-Adapter, plus a key the model lacks
    init = {k: v for k, v in full.items() if not _is_adapter(k)}
    init["some_unused.weight"] = np.ones(3, np.float32)
    torch.save(torch_state(init), tmp_path / "init.pth")
    # checkpoint: new values for everything except conv_in and one to_q_ff
    ckpt = {k: v + 1 for k, v in state(UNET, seed=2).items()}
    skipped_ff = TO_Q.replace("to_q", "to_q_ff")
    for k in ("conv_in.weight", "conv_in.bias", skipped_ff):
        del ckpt[k]
    torch.save({"state_dict": {f"module.{k}": v for k, v in torch_state(ckpt).items()}}, tmp_path / "x.ckpt")

    params, report = load_xdyna_unet(tmp_path / "x.ckpt", tmp_path / "init.pth", UNET)
    assert report.init_only == sorted(["conv_in.weight", "conv_in.bias", skipped_ff])
    assert report.ignored_init_keys == ["some_unused.weight"]
    n_ff = sum(k.endswith("attn1.to_q_ff.weight") for k in full)
    assert len(report.copied_to_q_ff) == n_ff > 0
    out = unet_params_to_torch(params, UNET)
    np.testing.assert_array_equal(out[skipped_ff], init[TO_Q])  # to_q copied into to_q_ff
    np.testing.assert_array_equal(out["conv_in.weight"], init["conv_in.weight"])
    for k, v in ckpt.items():
        np.testing.assert_array_equal(out[k], v)

    bad = dict(ckpt, **{"unexpected.weight": np.zeros(1, np.float32)})
    torch.save(torch_state(bad), tmp_path / "bad.ckpt")
    with pytest.raises(PortingError, match=r"bad\.ckpt: 1 unexpected key.*unexpected\.weight"):
        load_xdyna_unet(tmp_path / "bad.ckpt", tmp_path / "init.pth", UNET)
    no_ff = {k: v for k, v in ckpt.items() if ".to_out_ff." not in k}
    write_safetensors(no_ff, tmp_path / "no_ff.safetensors")
    with pytest.raises(PortingError, match=r"in neither .*to_out_ff"):
        load_xdyna_unet(tmp_path / "no_ff.safetensors", tmp_path / "init.pth", UNET)


def test_unet_from_sd15():
    full = state(UNET, seed=3)
    added = (".to_q_ff.", ".to_out_ff.", ".to_k_ip.", ".to_v_ip.", "motion_modules.")
    sd15 = {k: v for k, v in full.items() if not any(a in k for a in added)}
    params, report = unet_params_from_sd15(sd15, UNET, jax.random.key(0))
    out = unet_params_to_torch(params, UNET)
    assert sorted(report) == sorted(set(full) - set(sd15))
    for k, how in report.items():
        if k.endswith("attn1.to_q_ff.weight"):
            assert how == f"copy of {k.replace('to_q_ff', 'to_q')}"
            np.testing.assert_array_equal(out[k], sd15[k.replace("to_q_ff", "to_q")])
        elif "_ip." in k:
            src = k.replace("_ip.", ".")
            assert how == f"copy of {src}"
            np.testing.assert_array_equal(out[k], sd15[src])
        else:
            assert how == "init"
        if "proj_out" in k and "motion_modules" in k:
            assert not out[k].any(), k  # zero-initialised, as the official module
        if ".to_out_ff.weight" in k:
            bound = 1 / np.sqrt(out[k].shape[1])  # torch default Linear init
            assert out[k].any() and np.abs(out[k]).max() <= bound
    for k, v in sd15.items():
        np.testing.assert_array_equal(out[k], v)
    with pytest.raises(PortingError, match="not_in_unet"):
        unet_params_from_sd15(dict(sd15, not_in_unet=np.zeros(1)), UNET, jax.random.key(0))


def _diffusers_controlnet_config(cfg):
    return {"_class_name": "ControlNetModel", "_diffusers_version": "0.24.0", "act_fn": "silu",
            "attention_head_dim": list(cfg.attention_head_dim), "block_out_channels": list(cfg.block_out_channels),
            "conditioning_embedding_out_channels": list(cfg.conditioning_embedding_out_channels),
            "conditioning_channels": cfg.conditioning_channels,
            "controlnet_conditioning_channel_order": "rgb", "cross_attention_dim": cfg.cross_attention_dim,
            "down_block_types": list(cfg.down_block_types), "downsample_padding": 1, "flip_sin_to_cos": True,
            "freq_shift": 0, "in_channels": 4, "layers_per_block": cfg.layers_per_block,
            "mid_block_scale_factor": 1, "norm_eps": 1e-5, "norm_num_groups": cfg.norm_num_groups,
            "only_cross_attention": False, "upcast_attention": False, "use_linear_projection": False}


@pytest.mark.parametrize("weights", ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"])
def test_controlnet_from_a_diffusers_folder(tmp_path, weights):
    cfg = ControlNetConfig.tiny(conditioning_channels=6)
    sd = state(cfg)
    (tmp_path / "config.json").write_text(json.dumps(_diffusers_controlnet_config(cfg)))
    if weights.endswith(".bin"):
        torch.save(torch_state(sd), tmp_path / weights)
    else:
        write_safetensors(sd, tmp_path / weights)
    params, got_cfg = load_controlnet(tmp_path)
    assert got_cfg == cfg
    back = controlnet_params_to_torch(params, cfg)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)


def test_resampler_from_an_ip_adapter_bin(tmp_path):
    sd = state(RESAMPLER)
    torch.save({"image_proj": torch_state(sd), "ip_adapter": {"1.to_k_ip.weight": torch.zeros(2, 2)}},
               tmp_path / "ip-adapter-plus_sd15.bin")
    params, cfg = load_resampler(tmp_path / "ip-adapter-plus_sd15.bin", RESAMPLER)
    back = resampler_params_to_torch(params, cfg)
    assert all(np.array_equal(back[k], sd[k]) for k in sd)
    assert back["latents"].shape == (1, RESAMPLER.num_queries, RESAMPLER.dim)
    flat = traverse_util.flatten_dict(params)
    np.testing.assert_array_equal(flat[("layers_0_1_1", "kernel")], sd["layers.0.1.1.weight"].T)
