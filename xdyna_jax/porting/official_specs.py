"""Our network configs as the official code builds them: a diffusers ``config.json`` (+ X-Dyna's
``unet_additional_kwargs`` for the UNet), the Resampler's constructor arguments, transformers CLIP configs.

``official_runner.build`` reads these specs; ``porting verify`` and the benchmarks that run the official code
(benchmarks/official_bridge.py) write them. Settings our configs do not have take the official defaults
(``act_fn`` silu, ``downsample_padding`` 1, ...), the ones the official release uses.
"""
from __future__ import annotations

from typing import Any

from .official_runner import OFFICIAL_IP_TOKENS

_COMMON = ("in_channels", "block_out_channels", "layers_per_block", "cross_attention_dim", "norm_num_groups",
           "norm_eps", "flip_sin_to_cos", "freq_shift", "use_linear_projection", "resnet_time_scale_shift")


def _pick(cfg, keys) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in ((k, getattr(cfg, k)) for k in keys)}


def official_unet_problem(cfg) -> str | None:
    """Why the official UNet cannot run ``cfg`` (None when it can)."""
    if cfg.unet_use_ipadapter and cfg.num_ip_tokens != OFFICIAL_IP_TOKENS:
        return (f"unet.num_ip_tokens={cfg.num_ip_tokens}: the official IPAdapterAttention takes exactly "
                f"{OFFICIAL_IP_TOKENS} image tokens")
    return None


def unet_spec(cfg) -> dict:
    """diffusers ``unet/config.json`` plus X-Dyna's ``unet_additional_kwargs`` for a ``UNet3DConfig``."""
    problem = official_unet_problem(cfg)
    if problem:
        raise ValueError(problem)
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


def controlnet_spec(cfg) -> dict:
    out = _pick(cfg, _COMMON + ("conditioning_channels", "conditioning_embedding_out_channels", "down_block_types",
                                "attention_head_dim"))
    out.update(_class_name="ControlNetModel", act_fn="silu", downsample_padding=1, mid_block_scale_factor=1,
               controlnet_conditioning_channel_order="rgb", only_cross_attention=False, upcast_attention=False)
    return out


def resampler_spec(cfg) -> dict:
    return _pick(cfg, ("dim", "depth", "dim_head", "heads", "num_queries", "embedding_dim", "output_dim", "ff_mult"))


def vae_spec(cfg) -> dict:
    n = len(cfg.block_out_channels)
    out = _pick(cfg, ("in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                      "norm_num_groups", "scaling_factor"))
    out.update(_class_name="AutoencoderKL", act_fn="silu", down_block_types=["DownEncoderBlock2D"] * n,
               up_block_types=["UpDecoderBlock2D"] * n, sample_size=256)
    return out


def image_encoder_spec(cfg) -> dict:
    out = _pick(cfg, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                      "patch_size", "num_channels", "hidden_act", "layer_norm_eps"))
    if cfg.projection_dim is not None:
        out["projection_dim"] = cfg.projection_dim
    return out


def text_encoder_spec(cfg) -> dict:
    out = _pick(cfg, ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                      "max_position_embeddings", "hidden_act", "layer_norm_eps", "eos_token_id"))
    # only the tokenizer reads these; inside the vocabulary so transformers does not warn on a small one
    out.update(bos_token_id=min(49406, cfg.vocab_size - 1), pad_token_id=min(1, cfg.vocab_size - 1))
    if cfg.projection_dim is not None:
        out["projection_dim"] = cfg.projection_dim
    return out


KINDS = {"unet": "unet", "pose_controlnet": "controlnet", "face_controlnet": "controlnet", "resampler": "resampler",
         "vae": "vae", "image_encoder": "clip_vision", "text_encoder": "clip_text"}
_SPECS = {"unet": unet_spec, "controlnet": controlnet_spec, "resampler": resampler_spec, "vae": vae_spec,
          "clip_vision": image_encoder_spec, "clip_text": text_encoder_spec}


def network_spec(part: str, cfg) -> dict[str, Any]:
    """``{"kind", "config"[, "kwargs"]}`` of one bundle part, as ``official_runner.build`` reads it."""
    kind = KINDS[part]
    spec = _SPECS[kind](cfg)
    return {"kind": kind, **spec} if kind == "unet" else {"kind": kind, "config": spec}
