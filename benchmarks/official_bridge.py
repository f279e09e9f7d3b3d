"""Run the official PyTorch X-Dyna next to ours, at the same config and weights, from a benchmark.

Our configs become diffusers-style configs, our params become official-named tensors (the porting
module's ``*_params_to_torch``) in one npz, and ``official_xdyna.py`` runs in the oracle venv
(torch + diffusers 0.24, tools/official_parity/README.md) as a subprocess. The official source is
read from the path given on the command line and never copied here. Without that path or the
oracle python the benchmarks print our figures only.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from xdyna_jax.models import ControlNetConfig, UNet3DConfig
from xdyna_jax.models.clip import CLIPTextConfig
from xdyna_jax.models.vae import VAEConfig
from xdyna_jax.porting import (clip_text_params_to_torch, controlnet_params_to_torch, unet_params_to_torch,
                               vae_params_to_torch)

RUNNER = Path(__file__).with_name("official_xdyna.py")
# the official IPAdapterAttention accepts exactly 77 text + 16 image tokens
OFFICIAL_IP_TOKENS = 16

_COMMON = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim", "norm_num_groups",
           "norm_eps", "flip_sin_to_cos", "freq_shift", "use_linear_projection", "resnet_time_scale_shift")


def _pick(cfg, keys) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(cfg, k)) for k in keys)}


def unet_spec(cfg: UNet3DConfig) -> dict:
    """diffusers ``unet/config.json`` plus X-Dyna's ``unet_additional_kwargs`` for our config."""
    if cfg.unet_use_ipadapter and cfg.num_ip_tokens != OFFICIAL_IP_TOKENS:
        raise ValueError(f"the official UNet needs num_ip_tokens={OFFICIAL_IP_TOKENS}, got {cfg.num_ip_tokens}")
    config = _pick(cfg, _COMMON + ("out_channels", "down_block_types", "up_block_types", "attention_head_dim"))
    config.update(_class_name="UNet3DConditionModel", act_fn="silu", center_input_sample=False, downsample_padding=1,
                  mid_block_scale_factor=1, sample_size=64)
    m = cfg.motion_module_kwargs
    kwargs = _pick(cfg, ("unet_use_cross_frame_attention", "use_motion_module", "unet_use_ipadapter",
                         "use_inflated_groupnorm", "motion_module_resolutions", "motion_module_mid_block",
                         "motion_module_decoder_only"))
    kwargs["motion_module_kwargs"] = _pick(m, ("num_attention_heads", "num_transformer_block",
                                               "attention_block_types", "temporal_position_encoding",
                                               "temporal_position_encoding_max_len", "zero_initialize", "cross_id"))
    return {"config": config, "kwargs": kwargs}


def controlnet_spec(cfg: ControlNetConfig) -> dict:
    out = _pick(cfg, _COMMON + ("conditioning_channels", "conditioning_embedding_out_channels", "down_block_types",
                                "attention_head_dim"))
    out.update(_class_name="ControlNetModel", act_fn="silu", downsample_padding=1, mid_block_scale_factor=1,
               controlnet_conditioning_channel_order="rgb", only_cross_attention=False, upcast_attention=False)
    return out


def vae_spec(cfg: VAEConfig) -> dict:
    n = len(cfg.block_out_channels)
    out = _pick(cfg, ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                      "norm_num_groups", "scaling_factor"))
    out.update(_class_name="AutoencoderKL", act_fn="silu", down_block_types=["DownEncoderBlock2D"] * n,
               up_block_types=["UpDecoderBlock2D"] * n, sample_size=256)
    return out


def text_encoder_spec(cfg: CLIPTextConfig) -> dict:
    return _pick(cfg, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                       "max_position_embeddings", "hidden_act", "layer_norm_eps", "eos_token_id"))


_TO_TORCH = {"unet": unet_params_to_torch, "pose_controlnet": controlnet_params_to_torch,
             "face_controlnet": controlnet_params_to_torch, "vae": vae_params_to_torch,
             "text_encoder": clip_text_params_to_torch}


def official_weights(params: dict, cfgs: dict, extra: dict | None = None) -> dict:
    """``{"part/official key": float32 array}`` for each part in ``cfgs`` (+ ``inputs/...`` arrays)."""
    out = {}
    for part, cfg in cfgs.items():
        for k, v in _TO_TORCH[part](params[part], cfg, np.float32).items():
            out[f"{part}/{k}"] = v
    for k, v in (extra or {}).items():
        out[f"inputs/{k}"] = np.asarray(v, np.float32)
    return out


def run_official(spec: dict, weights: dict, *, xdyna_repo: str | None, python: str | None,
                 timeout: float = 3600) -> dict | None:
    """Run ``official_xdyna.py`` on ``spec``; its JSON result, or None (with the reason on stderr)
    when the official code or the oracle python is missing or the run fails."""
    if not xdyna_repo or not python:
        return None
    if not (Path(xdyna_repo) / "animatediff" / "pipelines" / "pipeline_xdyna.py").is_file() or \
            not Path(python).exists():
        print(f"official run skipped: {xdyna_repo} is no X-Dyna checkout or {python} is missing", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "weights.npz", **weights)
        (Path(tmp) / "spec.json").write_text(json.dumps({**spec, "weights": str(Path(tmp) / "weights.npz")}))
        proc = subprocess.run([python, str(RUNNER), "--xdyna-repo", str(xdyna_repo), "--spec",
                               str(Path(tmp) / "spec.json")], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(f"official run failed ({proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
