"""Model configs: YAML presets, diffusers/X-Dyna constructors, validation."""
from pathlib import Path

import pytest

from xdyna_jax import config as config_lib
from xdyna_jax.models import ControlNetConfig, ModelsConfig, MotionConfig, ResamplerConfig, UNet3DConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# SD1.5 unet/config.json and X-Dyna's configs/x_dyna.yaml unet_additional_kwargs, as published
SD15_UNET_JSON = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
    "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
}
XDYNA_KWARGS = {
    "unet_use_cross_frame_attention": "mixed_cross", "unet_use_temporal_attention": False,
    "use_motion_module": True, "unet_use_ipadapter": True, "use_reference_image_cfg": False, "cfg_ratio": 0.0,
    "motion_module_resolutions": [1, 2, 4, 8], "motion_module_mid_block": False,
    "motion_module_decoder_only": False, "motion_module_type": "Vanilla",
    "motion_module_kwargs": {
        "num_attention_heads": 8, "num_transformer_block": 1,
        "attention_block_types": ["Temporal_Self", "Temporal_Self"], "temporal_position_encoding": True,
        "temporal_position_encoding_max_len": 24, "temporal_attention_dim_div": 1, "zero_initialize": True,
        "cross_id": True},
}


def test_from_diffusers_with_xdyna_kwargs_is_the_sd15_preset():
    assert UNet3DConfig.from_diffusers(SD15_UNET_JSON, **XDYNA_KWARGS) == UNet3DConfig.sd15()


def test_plain_diffusers_config_turns_xdyna_features_off():
    cfg = UNet3DConfig.from_diffusers(SD15_UNET_JSON)
    assert (cfg.use_motion_module, cfg.unet_use_ipadapter, cfg.unet_use_cross_frame_attention) == \
        (False, False, "default")


def test_yaml_presets_match_code_presets():
    sd15 = config_lib.load(ModelsConfig, CONFIGS / "sd15.yaml")
    assert sd15.unet == UNet3DConfig.sd15()
    assert sd15.pose_controlnet == ControlNetConfig.sd15()
    assert sd15.face_controlnet == ControlNetConfig.sd15(conditioning_channels=6)
    assert sd15.resampler == ResamplerConfig.sd15()
    tiny = config_lib.load(ModelsConfig, CONFIGS / "tiny.yaml")
    assert tiny.unet == UNet3DConfig.tiny()
    assert tiny.pose_controlnet == ControlNetConfig.tiny()
    assert tiny.resampler == ResamplerConfig.tiny()


def test_overrides_and_unknown_keys():
    cfg = config_lib.load(ModelsConfig, CONFIGS / "tiny.yaml",
                          ["unet.remat=true", "unet.motion_module_kwargs.cross_id=false"])
    assert cfg.unet.remat and not cfg.unet.motion_module_kwargs.cross_id
    with pytest.raises(config_lib.ConfigError, match=r"tiny.yaml.*unknown key.*\['bogus'\]"):
        config_lib.load(ModelsConfig, CONFIGS / "tiny.yaml", ["unet.bogus=1"])
    with pytest.raises(config_lib.ConfigError, match="attention_backend"):
        config_lib.load(ModelsConfig, CONFIGS / "tiny.yaml", ["unet.attention_backend=flash"])


@pytest.mark.parametrize("bad, match", [
    ({"only_cross_attention": True}, "only_cross_attention"),
    ({"unet_use_temporal_attention": True}, "unet_use_temporal_attention"),
    ({"motion_module_type": "Conv"}, "motion_module_type"),
    ({"motion_module_kwargs": {"temporal_attention_dim_div": 2}}, "temporal_attention_dim_div"),
    ({"motion_module_kwargs": {"attention_block_types": ["Temporal_Cross"]}}, "Temporal_Self"),
    ({"block_out_channels": [320, 640, 1280, 1000]}, "divisible"),
    ({"mystery_option": 1}, "mystery_option"),
])
def test_unsupported_official_options_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        UNet3DConfig.from_diffusers({**SD15_UNET_JSON, **bad}, **{k: v for k, v in XDYNA_KWARGS.items() if k not in bad})


def test_controlnet_from_diffusers_openpose_config():
    openpose = {"_class_name": "ControlNetModel", "act_fn": "silu", "attention_head_dim": 8,
                "block_out_channels": [320, 640, 1280, 1280], "class_embed_type": None,
                "conditioning_embedding_out_channels": [16, 32, 96, 256],
                "controlnet_conditioning_channel_order": "rgb", "cross_attention_dim": 768,
                "down_block_types": SD15_UNET_JSON["down_block_types"], "downsample_padding": 1,
                "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
                "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32, "num_class_embeds": None,
                "only_cross_attention": False, "projection_class_embeddings_input_dim": None,
                "resnet_time_scale_shift": "default", "upcast_attention": False, "use_linear_projection": False}
    assert ControlNetConfig.from_diffusers(openpose) == ControlNetConfig.sd15()
    assert ControlNetConfig.from_diffusers(openpose, conditioning_channels=6).conditioning_channels == 6
    with pytest.raises(ValueError, match="bgr|rgb"):
        ControlNetConfig.from_diffusers({**openpose, "controlnet_conditioning_channel_order": "bgr"})


def test_motion_config_defaults_are_xdyna():
    assert UNet3DConfig().motion_module_kwargs == MotionConfig()
