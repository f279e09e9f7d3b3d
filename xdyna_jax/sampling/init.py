"""Initial latents of the X-Dyna sampler (spec §1.6, the ``repeat_latents`` + ``gaussian_blur`` path).

Every generated frame starts from the reference latent, with a random half of its elements
replaced by a blurred copy (torchvision ``GaussianBlur((9, 9), sigma=18)``, reflect padding), then
noised to the first timestep. The reference frame itself (frame 0) stays clean and lives apart
from these frames in the sampler.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .ddim import DDIMSchedule, add_noise

BLUR_SIZE = 9
BLUR_SIGMA = 18.0


def gaussian_kernel1d(size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """torchvision's kernel: exp(-x^2 / 2 sigma^2) on x = -(size-1)/2 .. (size-1)/2, summing to 1."""
    x = np.linspace(-(size - 1) / 2.0, (size - 1) / 2.0, size)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(x, size: int = BLUR_SIZE, sigma: float = BLUR_SIGMA) -> jax.Array:
    """Blur over the two spatial axes of ``x`` (..., h, w, C), per channel, reflect padding.

    The 2D kernel is the outer product of ``gaussian_kernel1d``, so it runs as two 1D passes.
    Reflect padding (no edge repeat) needs h, w > size // 2, as in torch.
    """
    r = size // 2
    h, w = x.shape[-3], x.shape[-2]
    if h <= r or w <= r:
        raise ValueError(f"reflect padding of {r} needs spatial sizes > {r}, got {h}x{w}")
    k = jnp.asarray(gaussian_kernel1d(size, sigma))
    lead = [(0, 0)] * (x.ndim - 3)
    xp = jnp.pad(x, lead + [(r, r), (0, 0), (0, 0)], mode="reflect")
    x = sum(k[i] * xp[..., i:i + h, :, :] for i in range(size))
    xp = jnp.pad(x, lead + [(0, 0), (r, r), (0, 0)], mode="reflect")
    return sum(k[i] * xp[..., :, i:i + w, :] for i in range(size))


def initial_latents(sched: DDIMSchedule, ref_latent, mask, noise) -> jax.Array:
    """The noisy frames 1..N at the first timestep, from the reference latent and the two draws.

    ref_latent (B, h, w, C); mask (B, N, h, w, C): 1 keeps the reference element, 0 takes its blur
    (the official ``torch.rand(...) >= 0.5``); noise (B, N, h, w, C) standard normal.
    Returns ``add_noise(ref * mask + blur(ref) * (1 - mask), noise, timesteps[0])``, (B, N, h, w, C).
    """
    ref = jnp.asarray(ref_latent, jnp.float32)[:, None]  # every frame is the same reference
    mask = jnp.asarray(mask, jnp.float32)
    mixed = ref * mask + gaussian_blur(ref) * (1.0 - mask)
    return add_noise(sched, mixed, jnp.asarray(noise, jnp.float32), sched.timesteps[0])
