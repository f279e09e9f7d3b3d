"""Frozen configs of the denoiser networks, with SD1.5-size and tiny presets.

Field names follow the diffusers / X-Dyna config keys where one exists, so
``from_diffusers(config_json, **x_dyna_yaml["unet_additional_kwargs"])`` is a plain mapping.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Mapping

AttentionBackend = Literal["xla", "cudnn"]
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


_UNET_DIFFUSERS_IGNORED = {
    # diffusers bookkeeping and inert options of the official UNet3DConditionModel
    "_class_name", "_diffusers_version", "_name_or_path", "sample_size", "mid_block_type",
    "act_fn", "downsample_padding", "mid_block_scale_factor", "dual_cross_attention",
    "motion_module_type", "use_reference_image_cfg", "cfg_ratio", "class_embed_type",
    "num_class_embeds", "upcast_attention", "center_input_sample", "use_input_concat",
    "fuse_first_frame", "only_cross_attention", "resnet_time_scale_shift",
    "unet_use_temporal_attention",
}


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
    # compute / memory knobs (not part of the official config)
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"
    attention_query_chunk: int = 0  # > 0: xla attention over query chunks (bounded memory)
    remat: bool = False

    def __post_init__(self):
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise ValueError("down_block_types, up_block_types and block_out_channels must have the same length")
        if len(self.attention_head_dim) != n:
            raise ValueError(f"attention_head_dim needs {n} entries, got {self.attention_head_dim}")
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
        merged = {**dict(config), **xdyna_kwargs}
        if merged.get("only_cross_attention") not in (None, False):
            raise ValueError("only_cross_attention=True is not supported (the official attn1 forward ignores it)")
        if merged.get("dual_cross_attention"):
            raise ValueError("dual_cross_attention is not supported (the official blocks raise NotImplementedError)")
        if merged.get("unet_use_temporal_attention"):
            raise ValueError("unet_use_temporal_attention=True is not supported (X-Dyna uses motion modules)")
        if merged.get("class_embed_type") is not None or merged.get("num_class_embeds") is not None:
            raise ValueError("class embeddings are not supported")
        if merged.get("center_input_sample") or merged.get("use_input_concat") or merged.get("fuse_first_frame"):
            raise ValueError("center_input_sample / use_input_concat / fuse_first_frame are not supported")
        if merged.get("motion_module_type", "Vanilla") not in (None, "Vanilla"):
            raise ValueError(f"motion_module_type {merged['motion_module_type']!r}: only 'Vanilla' is supported")
        for k, expect in (("act_fn", "silu"), ("downsample_padding", 1), ("mid_block_scale_factor", 1),
                          ("mid_block_type", "UNetMidBlock3DCrossAttn")):
            v = merged.get(k, expect)
            if k == "mid_block_type" and v == "UNetMidBlock2DCrossAttn":
                v = expect
            if v != expect and not (k == "act_fn" and v == "swish"):
                raise ValueError(f"{k}={v!r} is not supported (expected {expect!r})")
        kw: dict[str, Any] = {}
        fields = {f.name for f in dataclasses.fields(cls)}
        for k, v in merged.items():
            if k in _UNET_DIFFUSERS_IGNORED and k not in fields:
                continue
            if k == "down_block_types":
                v = tuple(t.replace("2D", "3D") for t in v)
            elif k == "up_block_types":
                v = tuple(t.replace("2D", "3D") for t in v)
            elif k == "attention_head_dim":
                v = (v,) * len(merged.get("block_out_channels", cls.block_out_channels)) if isinstance(v, int) else tuple(v)
            elif k == "motion_module_kwargs":
                mk = dict(v or {})
                if mk.get("temporal_attention_dim_div", 1) != 1:
                    raise ValueError("temporal_attention_dim_div != 1 is not supported (the official module breaks)")
                mk.pop("temporal_attention_dim_div", None)
                if mk.get("cross_frame_attention_mode") is not None:
                    raise ValueError("cross_frame_attention_mode is not supported")
                mk.pop("cross_frame_attention_mode", None)
                v = MotionConfig(**{**mk, "attention_block_types": tuple(mk.get(
                    "attention_block_types", MotionConfig.attention_block_types))})
            elif k == "unet_use_cross_frame_attention":
                v = "default" if v in (None, False, "default") else v
            elif k in ("block_out_channels", "motion_module_resolutions"):
                v = tuple(v)
            elif k == "unet_use_ipadapter":
                v = bool(v)
            if k not in fields:
                raise ValueError(f"unknown UNet config key {k!r}")
            kw[k] = v
        if "use_motion_module" not in kw:
            kw["use_motion_module"] = False  # a plain diffusers config has none
        if "unet_use_ipadapter" not in kw:
            kw["unet_use_ipadapter"] = False
        if "unet_use_cross_frame_attention" not in kw:
            kw["unet_use_cross_frame_attention"] = "default"
        return cls(**kw)


_CONTROLNET_DIFFUSERS_IGNORED = {
    "_class_name", "_diffusers_version", "_name_or_path", "act_fn", "downsample_padding",
    "mid_block_scale_factor", "controlnet_conditioning_channel_order", "upcast_attention",
    "class_embed_type", "num_class_embeds", "projection_class_embeddings_input_dim",
    "resnet_time_scale_shift", "only_cross_attention", "global_pool_conditions",
    "addition_embed_type", "addition_time_embed_dim", "encoder_hid_dim", "encoder_hid_dim_type",
    "mid_block_type", "num_attention_heads", "transformer_layers_per_block", "sample_size",
}


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
    conditioning_embedding_out_channels: tuple[int, ...] = (16, 32, 96, 256)
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"
    attention_query_chunk: int = 0  # > 0: xla attention over query chunks (bounded memory)
    remat: bool = False

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
        merged = {**dict(config), **overrides}
        if merged.get("controlnet_conditioning_channel_order", "rgb") != "rgb":
            raise ValueError("controlnet_conditioning_channel_order must be 'rgb'")
        if merged.get("class_embed_type") is not None or merged.get("addition_embed_type") is not None:
            raise ValueError("class / addition embeddings are not supported")
        if merged.get("num_attention_heads") is not None:
            # diffusers: num_attention_heads overrides attention_head_dim (both mean "heads" here)
            merged["attention_head_dim"] = merged["num_attention_heads"]
        tl = merged.get("transformer_layers_per_block", 1)
        if tl not in (1, None) and not (isinstance(tl, (list, tuple)) and set(tl) == {1}):
            raise ValueError("transformer_layers_per_block != 1 is not supported")
        if merged.get("only_cross_attention") not in (None, False):
            raise ValueError("only_cross_attention=True is not supported")
        fields = {f.name for f in dataclasses.fields(cls)}
        kw: dict[str, Any] = {}
        for k, v in merged.items():
            if k in _CONTROLNET_DIFFUSERS_IGNORED and k not in fields:
                continue
            if k not in fields:
                raise ValueError(f"unknown ControlNet config key {k!r}")
            if k == "attention_head_dim":
                v = (v,) * len(merged.get("block_out_channels", cls.block_out_channels)) if isinstance(v, int) else tuple(v)
            elif isinstance(v, list):
                v = tuple(v)
            kw[k] = v
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


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
    """The whole X-Dyna network set: ``configs/sd15.yaml`` (full size) and ``configs/tiny.yaml``."""

    unet: UNet3DConfig = UNet3DConfig()
    pose_controlnet: ControlNetConfig = ControlNetConfig()
    face_controlnet: ControlNetConfig | None = ControlNetConfig(conditioning_channels=6)
    resampler: ResamplerConfig = ResamplerConfig()
