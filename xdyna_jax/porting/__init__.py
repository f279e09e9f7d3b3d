"""Official (torch) checkpoints <-> our Flax param trees. The naming rules live in ``names``."""
from __future__ import annotations

from .convert import (
    controlnet_params_from_torch,
    controlnet_params_to_torch,
    official_entries,
    resampler_params_from_torch,
    resampler_params_to_torch,
    unet_params_from_torch,
    unet_params_to_torch,
)
from .io import PortingError, read_state_dict, write_safetensors
from .store import load_converted, save_converted
from .loaders import UNetLoadReport, load_controlnet, load_resampler, load_xdyna_unet, unet_params_from_sd15
from .convert import upgrade_vae_state_dict, vae_params_from_torch, vae_params_to_torch
from .loaders import load_vae
from .convert import (clip_text_params_from_torch, clip_text_params_to_torch, clip_vision_params_from_torch,
                      clip_vision_params_to_torch)
from .loaders import load_clip_text, load_clip_vision

__all__ = [
    "unet_params_from_torch", "controlnet_params_from_torch", "resampler_params_from_torch",
    "unet_params_to_torch", "controlnet_params_to_torch", "resampler_params_to_torch",
    "load_xdyna_unet", "unet_params_from_sd15", "load_controlnet", "load_resampler", "PortingError",
    "UNetLoadReport", "load_converted", "save_converted", "official_entries", "read_state_dict", "write_safetensors",
]
__all__ += ["vae_params_from_torch", "vae_params_to_torch", "upgrade_vae_state_dict", "load_vae"]
__all__ += ["clip_vision_params_from_torch", "clip_vision_params_to_torch", "clip_text_params_from_torch",
            "clip_text_params_to_torch", "load_clip_vision", "load_clip_text"]
