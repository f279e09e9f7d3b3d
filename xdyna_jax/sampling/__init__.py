"""The X-Dyna sampler: DDIM (``ddim``), closed-loop context windows (``windows``), initial latents
(``init``), the jitted denoising loop (``pipeline.sample_latents``) and pixel helpers (``pixels``)."""
from __future__ import annotations

from .ddim import DDIMSchedule, add_noise, ddim_step, make_schedule
from .init import gaussian_blur, initial_latents
from .pipeline import Draws, SampleConfig, job_keys, make_draws, sample_latents, stream_key
from .pixels import normalize_condition, to_uint8
from .windows import context_windows, window_count, window_length

__all__ = ["DDIMSchedule", "make_schedule", "add_noise", "ddim_step", "gaussian_blur", "initial_latents",
           "Draws", "SampleConfig", "job_keys", "make_draws", "stream_key", "sample_latents",
           "normalize_condition", "to_uint8", "context_windows", "window_count", "window_length"]
