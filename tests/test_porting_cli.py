"""``python -m xdyna_jax.porting`` end to end, in subprocesses, on tiny configs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import yaml

from official_weights import official_weights
from xdyna_jax import config as config_lib
from xdyna_jax.models import ControlNetConfig, UNet3DConfig
from xdyna_jax.models.motion import sinusoidal_position_encoding
from xdyna_jax.porting import (load_converted, official_entries, read_state_dict, unet_params_to_torch,
                               write_safetensors)

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, check=True):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.porting", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def full_state(cfg, seed=0):
    entries = official_entries(cfg)
    sd = official_weights({e.key: e.shape for e in entries}, seed)
    sd.update({e.key: sinusoidal_position_encoding(e.shape[1], e.shape[2])[None] for e in entries if e.buffer})
    return sd


def write_yaml(cfg, path):
    path.write_text(yaml.safe_dump(config_lib.to_dict(cfg)))
    return path


def assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k


def test_convert_export_round_trip_unet(tmp_path):
    cfg = UNet3DConfig.tiny()
    sd = full_state(cfg)
    write_safetensors(sd, tmp_path / "unet.safetensors")
    cfg_yaml = write_yaml(cfg, tmp_path / "tiny.yaml")
    cli("convert", "--kind", "unet", "--config", cfg_yaml, "--checkpoint", tmp_path / "unet.safetensors",
        "--out", tmp_path / "conv")
    assert (tmp_path / "conv" / "params").is_dir()
    assert config_lib.load(UNet3DConfig, tmp_path / "conv" / "config.yaml") == cfg
    params, loaded_cfg = load_converted(tmp_path / "conv", "unet")
    assert loaded_cfg == cfg
    assert_same(unet_params_to_torch(params, cfg), sd)
    cli("export", "--kind", "unet", "--params", tmp_path / "conv", "--out", tmp_path / "back.safetensors")
    assert_same(read_state_dict(tmp_path / "back.safetensors"), sd)
    cli("export", "--kind", "unet", "--params", tmp_path / "conv", "--out", tmp_path / "h.safetensors",
        "--dtype", "float16")
    half = read_state_dict(tmp_path / "h.safetensors")
    assert all(v.dtype == np.float16 for v in half.values())

    # the existing output is protected; convert refuses a second write without --force
    r = cli("convert", "--kind", "unet", "--config", cfg_yaml, "--checkpoint", tmp_path / "unet.safetensors",
            "--out", tmp_path / "conv", check=False)
    assert r.returncode == 2 and "exists (use --force" in r.stderr

    out = cli("inspect", tmp_path / "back.safetensors").stdout.splitlines()
    assert len(out) == len(sd)
    assert "conv_in.weight\t(32, 4, 3, 3)\tfloat32" in out


def test_convert_xdyna_unet_from_init_and_checkpoint_with_diffusers_config(tmp_path):
    tiny = UNet3DConfig.tiny()
    sd = full_state(tiny)
    init = {k: v for k, v in sd.items() if "_ff." not in k}
    torch.save({k: torch.from_numpy(v) for k, v in init.items()}, tmp_path / "init.pth")
    ckpt = {k: v for k, v in sd.items() if k != "conv_out.bias"}
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in ckpt.items()}}, tmp_path / "x.ckpt")
    # the official way of stating the config: SD1.5's unet/config.json + x_dyna.yaml's kwargs
    diffusers = {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": 2,
                 "block_out_channels": list(tiny.block_out_channels), "center_input_sample": False,
                 "cross_attention_dim": tiny.cross_attention_dim,
                 "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], "downsample_padding": 1,
                 "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 1,
                 "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4,
                 "sample_size": 64, "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    (tmp_path / "config.json").write_text(json.dumps(diffusers))
    xdyna = {"unet_additional_kwargs": {
        "use_motion_module": True, "motion_module_resolutions": [1, 2, 4, 8], "unet_use_cross_frame_attention":
        "mixed_cross", "unet_use_temporal_attention": False, "unet_use_ipadapter": True,
        "motion_module_mid_block": False, "motion_module_decoder_only": False, "motion_module_type": "Vanilla",
        "motion_module_kwargs": {"num_attention_heads": 2, "num_transformer_block": 1,
                                 "attention_block_types": ["Temporal_Self", "Temporal_Self"],
                                 "temporal_position_encoding": True, "temporal_position_encoding_max_len": 24,
                                 "temporal_attention_dim_div": 1, "zero_initialize": True, "cross_id": True}}}
    (tmp_path / "x_dyna.yaml").write_text(yaml.safe_dump(xdyna))
    r = cli("convert", "--kind", "unet", "--config", tmp_path / "config.json", "--xdyna-yaml", tmp_path / "x_dyna.yaml",
            "--set", "num_ip_tokens=4", "--init", tmp_path / "init.pth", "--checkpoint", tmp_path / "x.ckpt",
            "--out", tmp_path / "conv")
    assert "1 only from the init file" in r.stdout
    assert "init only: conv_out.bias" in (tmp_path / "conv" / "report.txt").read_text()
    assert config_lib.load(UNet3DConfig, tmp_path / "conv" / "config.yaml") == tiny
    cli("export", "--kind", "unet", "--params", tmp_path / "conv", "--out", tmp_path / "back.safetensors")
    assert_same(read_state_dict(tmp_path / "back.safetensors"), sd)


def test_convert_controlnet_folder_and_errors(tmp_path):
    cfg = ControlNetConfig.tiny(conditioning_channels=6)
    sd = full_state(cfg)
    folder = tmp_path / "controlnet"
    folder.mkdir()
    write_safetensors(sd, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(
        {"_class_name": "ControlNetModel", "attention_head_dim": list(cfg.attention_head_dim),
         "block_out_channels": list(cfg.block_out_channels), "conditioning_channels": 6,
         "conditioning_embedding_out_channels": list(cfg.conditioning_embedding_out_channels),
         "cross_attention_dim": cfg.cross_attention_dim, "layers_per_block": cfg.layers_per_block}))
    cli("convert", "--kind", "controlnet", "--checkpoint", folder, "--out", tmp_path / "conv")
    assert config_lib.load(ControlNetConfig, tmp_path / "conv" / "config.yaml") == cfg
    cli("export", "--kind", "controlnet", "--params", tmp_path / "conv", "--out", tmp_path / "back.safetensors")
    assert_same(read_state_dict(tmp_path / "back.safetensors"), sd)

    # errors are one clear line naming the problem, with exit status 2
    r = cli("convert", "--kind", "controlnet", "--checkpoint", tmp_path / "missing.ckpt", "--out", tmp_path / "o",
            check=False)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "missing.ckpt: no such file" in r.stderr
    r = cli("convert", "--kind", "controlnet", "--preset", "tiny", "--checkpoint",
            folder / "diffusion_pytorch_model.safetensors", "--out", tmp_path / "o", check=False)
    c0 = cfg.conditioning_embedding_out_channels[0]
    assert r.returncode == 2 and f"expected shape ({c0}, 3, 3, 3), found ({c0}, 6, 3, 3)" in r.stderr
    assert "Traceback" not in r.stderr
