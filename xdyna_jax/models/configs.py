"""Frozen configs of the denoiser networks, with SD1.5-size and tiny presets.

Field names follow the diffusers / X-Dyna config keys where one exists, so
``from_diffusers(config_json, **x_dyna_yaml["unet_additional_kwargs"])`` is a plain mapping.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

from . import remat as remat_lib

PredictionType = Literal["epsilon", "v_prediction"]
# blockwise: exact attention in memory linear in the lengths, for training (models/blockwise.py)
AttentionBackend = Literal["xla", "cudnn", "blockwise"]
DType = Literal["float32", "bfloat16", "float16"]
Attn1Mode = Literal["default", "mixed_cross", "first_cross"]


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    """AnimateDiff "Vanilla" temporal module (``motion_module_kwargs`` of x_dyna.yaml)."""

    num_attention_heads: int = 8
    num_transformer_block: int = 1
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = True
    temporal_position_encoding_max_len: int = 24
    # The official module builds its GroupNorm with 32 groups whatever the UNet says.
    norm_num_groups: int = 32
    zero_initialize: bool = True
    # X-Dyna's ``cross_id``: frame 0 (the reference) bypasses temporal attention.
    cross_id: bool = True

    def __post_init__(self):
        for t in self.attention_block_types:
            if t != "Temporal_Self":
                raise ValueError(f"motion attention_block_types: only 'Temporal_Self' is supported, got {t!r}")


# diffusers / X-Dyna options that only exist at one (inert) value here: accepted at that value,
# refused with a clear error at any other. Bookkeeping keys are dropped.
_INERT_DEFAULTS: dict[str, tuple] = {
    "act_fn": ("silu", "swish"), "downsample_padding": (1,), "mid_block_scale_factor": (1, 1.0),
    "dropout": (0.0, 0), "only_cross_attention": (False, None), "dual_cross_attention": (False, None),
    "class_embed_type": (None,), "num_class_embeds": (None,), "addition_embed_type": (None,),
    "addition_time_embed_dim": (None,), "addition_embed_type_num_heads": (64,), "encoder_hid_dim": (None,),
    "encoder_hid_dim_type": (None,), "projection_class_embeddings_input_dim": (None,),
    "center_input_sample": (False,), "use_input_concat": (False,), "fuse_first_frame": (False,),
    "unet_use_temporal_attention": (False, None), "motion_module_type": ("Vanilla", None),
    "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1.0, 1), "time_embedding_type": ("positional",),
    "time_embedding_dim": (None,), "time_embedding_act_fn": (None,), "timestep_post_act": (None,),
    "time_cond_proj_dim": (None,), "conv_in_kernel": (3,), "conv_out_kernel": (3,), "attention_type": ("default",),
    "class_embeddings_concat": (False,), "mid_block_only_cross_attention": (None, False),
    "cross_attention_norm": (None,), "reverse_transformer_layers_per_block": (None,),
    "mid_block_type": ("UNetMidBlock3DCrossAttn", "UNetMidBlock2DCrossAttn"),
    "controlnet_conditioning_channel_order": ("rgb",), "global_pool_conditions": (False,),
}
# bookkeeping, or options with no effect in float32 (upcast_attention: our softmax is always float32;
# use_reference_image_cfg / cfg_ratio are stored but never read by the official forward)
_DROPPED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "sample_size",
            "upcast_attention", "use_reference_image_cfg", "cfg_ratio"}


def _common_diffusers_keys(merged: dict) -> dict:
    """Check inert options, resolve head counts; return the remaining keys."""
    out = {}
    for k, v in merged.items():
        if k in _DROPPED:
            continue
        if k in _INERT_DEFAULTS:
            if v not in _INERT_DEFAULTS[k]:
                raise ValueError(f"{k}={v!r} is not supported (supported: {_INERT_DEFAULTS[k][0]!r})")
            continue
        out[k] = v
    tl = out.pop("transformer_layers_per_block", 1)
    if not (tl == 1 or (isinstance(tl, (list, tuple)) and set(tl) == {1})):
        raise ValueError(f"transformer_layers_per_block={tl!r} is not supported (only 1)")
    heads = out.pop("num_attention_heads", None)
    if heads is not None:  # diffusers: num_attention_heads wins; X-Dyna's attention_head_dim means heads
        out["attention_head_dim"] = heads
    n = len(out.get("block_out_channels", (0, 0, 0, 0)))
    if isinstance(out.get("attention_head_dim"), int):
        out["attention_head_dim"] = (out["attention_head_dim"],) * n
    return {k: tuple(v) if isinstance(v, list) else v for k, v in out.items()}


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
    in_channels: int = 4
    out_channels: int = 4
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    # X-Dyna passes diffusers' ``attention_head_dim`` as the number of heads (head dim = C / heads).
    attention_head_dim: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    use_linear_projection: bool = False
    resnet_time_scale_shift: Literal["default", "scale_shift"] = "default"
    # True = per-frame GroupNorm in resnets; X-Dyna leaves it False (statistics pooled over frames).
    use_inflated_groupnorm: bool = False
    # attn1 flavour: "mixed_cross" is the Dynamics-Adapter (to_q_ff / to_out_ff).
    unet_use_cross_frame_attention: Attn1Mode = "mixed_cross"
    unet_use_ipadapter: bool = True
    num_ip_tokens: int = 16
    use_motion_module: bool = True
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_kwargs: MotionConfig = MotionConfig()
    # What the output means: the noise (X-Dyna's and SD1.5's "epsilon"), or v = sqrt(a) eps - sqrt(1 - a) x0
    # ("v_prediction", Salimans & Ho 2022). The training loss and the DDIM sampler read it.
    prediction_type: PredictionType = "epsilon"
    # The training schedule's betas rescaled to zero terminal SNR (Lin et al. 2023, Algorithm 1): t = 999 is pure
    # noise, so training sees the sampler's starting point. Off for X-Dyna (its checkpoints were trained without);
    # needs v_prediction (an epsilon model cannot recover x0 from pure noise). Training and the sampler read it.
    rescale_betas_zero_snr: bool = False
    # compute / memory knobs (not part of the official config)
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"
    attention_query_chunk: int = 0  # > 0: xla attention over query chunks (bounded memory); blockwise: its query block
    # gradient checkpointing per resnet / transformer / motion module: a policy name of models/remat.py
    # (none, blocks, dots_saveable, ...; true/on = blocks, false/off = none), stored as remat.config_value
    remat: bool | str = False
    # true: each checkpointed block recomputes after its output's cotangent and hands back its weight gradients
    # before the backward moves on (models/remat.py tied_checkpoint); false: plain nn.remat, ordered by XLA
    remat_tie: bool = True

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_lib.config_value(self.remat))
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        if len(self.attention_head_dim) != n:
            raise ValueError(f"attention_head_dim needs {n} entries, got {self.attention_head_dim}")
        if self.rescale_betas_zero_snr and self.prediction_type != "v_prediction":
            raise ValueError("rescale_betas_zero_snr=true needs prediction_type=v_prediction (at zero terminal SNR "
                             f"the noise says nothing about x0), got prediction_type={self.prediction_type}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}")

    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    @classmethod
    def sd15(cls, **kw) -> "UNet3DConfig":
        """The full-size X-Dyna UNet (SD1.5 + AnimateDiff v1 + IP-Adapter-Plus + Dynamics-Adapter)."""
        return dataclasses.replace(cls(), **kw)

    @classmethod
    def tiny(cls, **kw) -> "UNet3DConfig":
        """A few-channel UNet with every X-Dyna feature on, for tests (32 groups as the official GN)."""
        base = cls(block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 2, 2, 2),
                   cross_attention_dim=48, layers_per_block=1, num_ip_tokens=4,
                   motion_module_kwargs=MotionConfig(num_attention_heads=2))
        return dataclasses.replace(base, **kw)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], **xdyna_kwargs) -> "UNet3DConfig":
        """From a diffusers ``unet/config.json`` dict plus X-Dyna's ``unet_additional_kwargs``.

        As the official ``from_pretrained_ip`` does, 2D block types are read as their 3D versions.
        """
        kw = _common_diffusers_keys({**dict(config), **xdyna_kwargs})
        for k in ("down_block_types", "up_block_types"):
            if k in kw:
                kw[k] = tuple(t.replace("2D", "3D") for t in kw[k])
        if "motion_module_kwargs" in kw:
            mk = dict(kw["motion_module_kwargs"] or {})
            if mk.pop("temporal_attention_dim_div", 1) != 1:
                raise ValueError("temporal_attention_dim_div != 1 is not supported (the official module breaks)")
            if mk.pop("cross_frame_attention_mode", None) is not None:
                raise ValueError("cross_frame_attention_mode is not supported")
            mk["attention_block_types"] = tuple(mk.get("attention_block_types", MotionConfig.attention_block_types))
            unknown = sorted(set(mk) - {f.name for f in dataclasses.fields(MotionConfig)})
            if unknown:
                raise ValueError(f"unknown motion_module_kwargs key(s) {unknown}")
            kw["motion_module_kwargs"] = MotionConfig(**mk)
        if "unet_use_cross_frame_attention" in kw:
            v = kw["unet_use_cross_frame_attention"]
            kw["unet_use_cross_frame_attention"] = "default" if v in (None, False, "default") else v
        if "unet_use_ipadapter" in kw:
            kw["unet_use_ipadapter"] = bool(kw["unet_use_ipadapter"])
        unknown = sorted(set(kw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown UNet config key(s) {unknown}")
        if "use_motion_module" not in kw:
            kw["use_motion_module"] = False  # a plain diffusers config has none
        if "unet_use_ipadapter" not in kw:
            kw["unet_use_ipadapter"] = False
        if "unet_use_cross_frame_attention" not in kw:
            kw["unet_use_cross_frame_attention"] = "default"
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class ControlNetConfig:
    in_channels: int = 4
    conditioning_channels: int = 3
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    attention_head_dim: tuple[int, ...] = (8, 8, 8, 8)
    cross_attention_dim: int = 768
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    use_linear_projection: bool = False
    resnet_time_scale_shift: Literal["default", "scale_shift"] = "default"
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"
    attention_query_chunk: int = 0  # > 0: xla attention over query chunks (bounded memory); blockwise: its query block
    remat: bool | str = False  # as UNet3DConfig.remat
    remat_tie: bool = True  # as UNet3DConfig.remat_tie

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_lib.config_value(self.remat))

    @classmethod
    def sd15(cls, **kw) -> "ControlNetConfig":
        return dataclasses.replace(cls(), **kw)

    @classmethod
    def tiny(cls, **kw) -> "ControlNetConfig":
        base = cls(block_out_channels=(32, 64, 64, 64), attention_head_dim=(2, 2, 2, 2),
                   cross_attention_dim=48, layers_per_block=1,
                   conditioning_embedding_out_channels=(8, 8, 16, 16))
        return dataclasses.replace(base, **kw)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], **overrides) -> "ControlNetConfig":
        kw = _common_diffusers_keys({**dict(config), **overrides})
        unknown = sorted(set(kw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown ControlNet config key(s) {unknown}")
        return cls(**kw)


@dataclasses.dataclass(frozen=True)
class ResamplerConfig:
    """IP-Adapter-Plus image projection (Perceiver resampler)."""

    dim: int = 768
    depth: int = 4
    dim_head: int = 64
    heads: int = 12
    num_queries: int = 16
    embedding_dim: int = 1280
    output_dim: int = 768
    ff_mult: int = 4
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"

    @classmethod
    def sd15(cls, **kw) -> "ResamplerConfig":
        return dataclasses.replace(cls(), **kw)

    @classmethod
    def tiny(cls, **kw) -> "ResamplerConfig":
        base = cls(dim=32, depth=2, dim_head=8, heads=4, num_queries=4, embedding_dim=40, output_dim=48)
        return dataclasses.replace(base, **kw)
