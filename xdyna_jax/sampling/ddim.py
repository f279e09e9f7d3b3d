"""A functional DDIM scheduler (eta = 0; epsilon or v prediction): its whole state is one pytree.

The official sampler uses diffusers' ``DDIMScheduler`` with ``configs/x_dyna.yaml`` (spec §1.5):
1000 train steps, *linear* betas 0.00085 -> 0.012, ``steps_offset=1``, ``set_alpha_to_one=True``,
"leading" timestep spacing. With 25 steps the timesteps are 961, 921, ..., 41, 1.

Two options of Lin et al. 2023 ("Common diffusion noise schedules and sample steps are flawed"), off by
default: ``rescale_zero_snr`` (the betas rescaled so that t = T-1 is pure noise, for models trained that
way) and ``timestep_spacing="trailing"`` (the timesteps end at T-1: 999, 959, ..., 39 for 25 steps, so
the first step starts where training's noisiest sample is).

``make_schedule`` runs once on the host (numpy); ``add_noise`` and ``ddim_step`` are pure jnp
functions of the schedule, so they trace inside ``lax.scan`` with the step index as a loop value.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

BetaSchedule = Literal["linear", "scaled_linear"]
Spacing = Literal["leading", "trailing"]


class DDIMSchedule(NamedTuple):
    """The scheduler state (a pytree; arrays only, no Python state).

    timesteps: (S,) int32, descending (``[961, ..., 1]`` for 25 steps).
    prev_timesteps: (S,) int32, ``timesteps - T // S``; negative at the last step.
    alphas_cumprod: (T,) float32, the train-time cumulative products of ``1 - beta``.
    final_alpha_cumprod: () float32, the alpha-bar used when the previous timestep is negative.
    """

    timesteps: jax.Array
    prev_timesteps: jax.Array
    alphas_cumprod: jax.Array
    final_alpha_cumprod: jax.Array


def kept_steps(steps: int, strength: float) -> int:
    """How many of ``steps`` timesteps a ``strength`` keeps (the official ``get_timesteps``): the last
    ``int(steps * strength)``, so the sampler starts from the reference noised to a lower timestep."""
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must be in (0, 1], got {strength}")
    kept = min(int(steps * strength), steps)
    if kept < 1:
        raise ValueError(f"strength {strength} keeps no step of {steps} (int(steps * strength) = 0)")
    return kept


def make_schedule(steps: int = 25, *, strength: float = 1.0, num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                  beta_end: float = 0.012, beta_schedule: BetaSchedule = "linear", steps_offset: int = 1,
                  set_alpha_to_one: bool = True, rescale_zero_snr: bool = False,
                  timestep_spacing: Spacing = "leading") -> DDIMSchedule:
    """The DDIM schedule of ``steps`` inference steps (defaults: X-Dyna's, spec §1.5); ``strength`` < 1
    keeps only its last ``kept_steps(steps, strength)`` timesteps (the official pipeline's ``strength``).

    Products are taken in float64 and rounded once to float32: closer to the exact values than a
    float32 running product, and within 2e-7 (relative) of diffusers' torch float32 ones.
    """
    if not 0 < steps <= num_train_timesteps:
        raise ValueError(f"DDIM steps must be in 1..{num_train_timesteps}, got {steps}")
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float64) ** 2
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r} (linear or scaled_linear)")
    alphas_cumprod = train_alphas_cumprod(betas, rescale_zero_snr)
    ratio = num_train_timesteps // steps
    if timestep_spacing == "leading":  # multiples of the ratio, descending, shifted by steps_offset
        timesteps = (np.arange(steps) * ratio)[::-1] + steps_offset
    elif timestep_spacing == "trailing":  # T, T - T/steps, ... rounded, minus one: the first is T - 1
        timesteps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / steps)).astype(np.int64) - 1
    else:
        raise ValueError(f"unknown timestep_spacing {timestep_spacing!r} (leading or trailing)")
    if timesteps[0] >= num_train_timesteps:
        raise ValueError(f"steps_offset={steps_offset} puts the first timestep at {timesteps[0]}, "
                         f"past the {num_train_timesteps} train steps")
    final = 1.0 if set_alpha_to_one else alphas_cumprod[0]
    start = steps - kept_steps(steps, strength)
    return DDIMSchedule(timesteps=jnp.asarray(timesteps[start:], jnp.int32),
                        prev_timesteps=jnp.asarray(timesteps[start:] - ratio, jnp.int32),
                        alphas_cumprod=jnp.asarray(alphas_cumprod, jnp.float32),
                        final_alpha_cumprod=jnp.asarray(final, jnp.float32))


def train_alphas_cumprod(betas: np.ndarray, rescale_zero_snr: bool = False) -> np.ndarray:
    """Cumulative products of ``1 - betas`` (float64); ``rescale_zero_snr``: Lin et al. 2023, Algorithm 1 —
    sqrt(alpha-bar) shifted so its last value is 0 and scaled so its first is unchanged."""
    alphas_cumprod = np.cumprod(1.0 - np.asarray(betas, np.float64))
    if not rescale_zero_snr:
        return alphas_cumprod
    s = np.sqrt(alphas_cumprod)
    first, last = s[0], s[-1]
    s = (s - last) * first / (first - last)
    return s ** 2


def alpha_cumprod(sched: DDIMSchedule, t) -> jax.Array:
    """alpha-bar at timestep ``t`` (traced ok); negative ``t`` gives ``final_alpha_cumprod``."""
    t = jnp.asarray(t, jnp.int32)
    return jnp.where(t >= 0, sched.alphas_cumprod[jnp.maximum(t, 0)], sched.final_alpha_cumprod)


def add_noise(sched: DDIMSchedule, x0, noise, t) -> jax.Array:
    """Forward diffusion to timestep ``t``: ``sqrt(a) x0 + sqrt(1 - a) noise`` (a scalar ``t``)."""
    a = alpha_cumprod(sched, t)
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise


def ddim_step(sched: DDIMSchedule, i, sample, model_output, prediction_type: str = "epsilon") -> jax.Array:
    """One deterministic DDIM step (eta = 0) from ``timesteps[i]`` to ``prev_timesteps[i]``.

    ``model_output`` is the noise (``prediction_type="epsilon"``) or v (``"v_prediction"``, then
    x0 = sqrt(a_t) x - sqrt(1 - a_t) v and eps = sqrt(1 - a_t) x + sqrt(a_t) v).
    x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t);  x_prev = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps.
    No clipping or thresholding (``clip_sample=False``). Computed in float32 whatever the output's dtype.
    """
    a_t = alpha_cumprod(sched, sched.timesteps[i])
    a_prev = alpha_cumprod(sched, sched.prev_timesteps[i])
    sample = jnp.asarray(sample, jnp.float32)
    out = jnp.asarray(model_output, jnp.float32)
    if prediction_type == "epsilon":
        eps = out
        x0 = (sample - jnp.sqrt(1.0 - a_t) * eps) / jnp.sqrt(a_t)
    elif prediction_type == "v_prediction":
        x0 = jnp.sqrt(a_t) * sample - jnp.sqrt(1.0 - a_t) * out
        eps = jnp.sqrt(1.0 - a_t) * sample + jnp.sqrt(a_t) * out
    else:
        raise ValueError(f"prediction_type must be epsilon or v_prediction, got {prediction_type!r}")
    return jnp.sqrt(a_prev) * x0 + jnp.sqrt(1.0 - a_prev) * eps
