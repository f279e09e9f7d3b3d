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

__all__ = [
    "unet_params_from_torch", "controlnet_params_from_torch", "resampler_params_from_torch",
    "unet_params_to_torch", "controlnet_params_to_torch", "resampler_params_to_torch",
    "load_xdyna_unet", "unet_params_from_sd15", "load_controlnet", "load_resampler", "PortingError",
    "UNetLoadReport", "load_converted", "save_converted", "official_entries", "read_state_dict", "write_safetensors",
]
