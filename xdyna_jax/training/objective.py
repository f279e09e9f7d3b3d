"""The training objectives: X-Dyna's epsilon-prediction MSE (or v), and the VAE's reconstruction + KL.

Diffusion (spec §8, the training-time ``ModelWrapper``): a window of 1+F latents whose frame 0 is the
clean reference latent (never noised, no loss on it); frames 1..F are noised by the DDPM forward process
with the sampler's betas (linear 0.00085-0.012, 1000 steps) at one uniform ``t`` per sample, the same for
all its frames; ``xdyna.denoise`` predicts the noise with the pose (+ S-Face) ControlNet residuals (zero
for frame 0), the empty prompt's text states and the IP-Adapter image tokens, which are replaced by the
zero-image tokens with probability ``image_dropout`` (classifier-free guidance at sampling).

Batch (device arrays, see ``loop.prepare_batch``): ``pixels (B, 1+F, H, W, 3)`` in [-1, 1] or
``vae_moments (B, 1+F, h, w, 2*latent)``; ``clip_pixels (B, S, S, 3)`` CLIP-normalised or ``clip_hidden
(B, tokens, width)`` (hidden_states[-2]); ``pose (B, F, H, W, 3)`` and optionally ``face (B, F, H, W, 6)``
in [0, 1]. The frozen encoders run in the step when the pre-encoded fields are absent.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from xdyna_jax.models import xdyna
from xdyna_jax.models.resampler import Resampler
from xdyna_jax.models.vae import AutoencoderKL, latent_dist_sample
from xdyna_jax.sampling.ddim import make_schedule

from .config import NUM_TRAIN_TIMESTEPS


def alphas_cumprod(cfg=None):
    """The sampler's train-time alpha-bars (one table for training and sampling); ``cfg`` (a ModelsConfig):
    rescaled to zero terminal SNR when ``cfg.unet.rescale_betas_zero_snr``."""
    rescale = cfg is not None and cfg.unet.rescale_betas_zero_snr
    return make_schedule(1, num_train_timesteps=NUM_TRAIN_TIMESTEPS, rescale_zero_snr=rescale).alphas_cumprod


def sample_timesteps(key, b: int, max_timestep: int, shift: float = 1.0):
    """(b,) int timesteps in 0 .. max_timestep - 1: uniform, or with ``shift`` > 1 moved toward the noisy end
    by SD3's map u -> shift u / (1 + (shift - 1) u) of a uniform u (Esser et al. 2024): P(t >= T/2) is
    shift / (shift + 1) instead of 1/2."""
    if shift == 1.0:
        return jax.random.randint(key, (b,), 0, max_timestep)
    u = jax.random.uniform(key, (b,))
    u = shift * u / (1.0 + (shift - 1.0) * u)
    return jnp.minimum(jnp.floor(u * max_timestep).astype(jnp.int32), max_timestep - 1)


def posterior(params, batch, *, cfg):
    """(mean, logvar) of every frame, (B, 1+F, h, w, latent): stored moments or the frozen VAE."""
    if "vae_moments" in batch:
        mean, logvar = jnp.split(batch["vae_moments"].astype(jnp.float32), 2, axis=-1)
        return mean, logvar
    x = batch["pixels"]
    mean, logvar = AutoencoderKL(cfg.vae).apply({"params": params["vae"]}, x.reshape((-1,) + x.shape[2:]),
                                                method="encode")
    return mean.reshape(x.shape[:2] + mean.shape[1:]), logvar.reshape(x.shape[:2] + logvar.shape[1:])


def cond_image_tokens(params, batch, *, cfg):
    if "clip_hidden" in batch:
        return Resampler(cfg.resampler).apply({"params": params["resampler"]}, batch["clip_hidden"])
    return xdyna.image_tokens(params, batch["clip_pixels"], cfg=cfg)


def diffusion_inputs(params, batch, rng, *, cfg, image_dropout: float, max_timestep: int = NUM_TRAIN_TIMESTEPS,
                     timestep_shift: float = 1.0):
    """Everything ``denoise`` sees, and the target: a dict of window, t, noise, text, tokens, pose, face.

    Draws from ``rng`` (split in this order): VAE posterior noise, t in 0 .. max_timestep - 1
    (``sample_timesteps``), the noise, the dropout coins.
    """
    k_post, k_t, k_noise, k_drop = jax.random.split(rng, 4)
    mean, logvar = posterior(params, batch, cfg=cfg)
    latents = jax.lax.stop_gradient(latent_dist_sample(mean, logvar, k_post) * cfg.vae.scaling_factor)
    ref, x0 = latents[:, :1], latents[:, 1:]
    b = latents.shape[0]
    t = sample_timesteps(k_t, b, max_timestep, timestep_shift)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    a = alphas_cumprod(cfg)[t][:, None, None, None, None]
    noisy = jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise
    text = xdyna.text_states(params, xdyna.empty_prompt_ids(cfg, 1), cfg=cfg)
    text = jnp.broadcast_to(text, (b,) + text.shape[1:])
    tokens = cond_image_tokens(params, batch, cfg=cfg)
    uncond = xdyna.uncond_image_tokens(params, 1, cfg=cfg)
    drop = jax.random.uniform(k_drop, (b,)) < image_dropout
    tokens = jnp.where(drop[:, None, None], uncond.astype(tokens.dtype), tokens)
    face = batch.get("face") if cfg.face_controlnet is not None else None
    return dict(window=jnp.concatenate([ref, noisy], axis=1), t=t, noise=noise, x0=x0, text=text, tokens=tokens,
                pose=batch["pose"], face=face, dropped=drop)


def diffusion_loss(params, batch, rng, *, cfg, image_dropout: float = 0.0, snr_gamma: float | None = None,
                   max_timestep: int = NUM_TRAIN_TIMESTEPS, timestep_shift: float = 1.0):
    """Mean squared error of the UNet's output on frames 1..F (frame 0, the reference, has no loss) against
    the noise, or against v = sqrt(a) eps - sqrt(1 - a) x0 when ``cfg.unet.prediction_type`` is v_prediction.

    ``snr_gamma``: Min-SNR-gamma weighting (Hang et al. 2023): each sample's error times
    ``min(SNR(t), gamma) / SNR(t)`` for epsilon, ``min(SNR(t), gamma) / (SNR(t) + 1)`` for v (the same weight
    on the implied x0 error), so the nearly clean timesteps, which dominate the plain epsilon loss, stop
    crowding out the noisy ones where the layout is decided.
    ``max_timestep``: t is drawn below it (``train.max_timestep``); ``timestep_shift``: toward the noisy end
    (``sample_timesteps``, ``train.timestep_shift``).
    """
    d = diffusion_inputs(params, batch, rng, cfg=cfg, image_dropout=image_dropout, max_timestep=max_timestep,
                         timestep_shift=timestep_shift)
    out = xdyna.denoise(params, d["window"], d["t"], d["text"], d["tokens"], d["pose"], d["face"], cfg=cfg)
    a = alphas_cumprod(cfg)[d["t"]]
    v_pred = cfg.unet.prediction_type == "v_prediction"
    if v_pred:
        ab = a[:, None, None, None, None]
        target = jnp.sqrt(ab) * d["noise"] - jnp.sqrt(1.0 - ab) * d["x0"]
    else:
        target = d["noise"]
    sq = jnp.square(out[:, 1:].astype(jnp.float32) - target)
    if snr_gamma is None:
        return jnp.mean(sq)
    snr = a / (1.0 - a)
    weight = jnp.minimum(snr, snr_gamma) / (snr + 1.0 if v_pred else snr)
    return jnp.mean(weight * jnp.mean(sq, axis=tuple(range(1, sq.ndim))))


def vae_loss(params, batch, rng, *, cfg, kl_weight: float, perceptual_weight: float = 0.0,
             perceptual_net: str = "vgg"):
    """Autoencoder objective: pixel MSE of the reconstruction of a posterior sample + kl_weight * KL(q || N(0, I))
    (KL summed over latent elements, averaged over images) + perceptual_weight * LPIPS (``perceptual_net``
    features, averaged over images; the networks are frozen constants of the step)."""
    x = batch["pixels"]
    x = x.reshape((-1,) + x.shape[2:])
    vae = AutoencoderKL(cfg.vae)
    mean, logvar = vae.apply({"params": params["vae"]}, x, method="encode")
    z = latent_dist_sample(mean, logvar, rng)
    rec = vae.apply({"params": params["vae"]}, z, method="decode")
    kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar, axis=(1, 2, 3))
    total = jnp.mean(jnp.square(rec - x)) + kl_weight * jnp.mean(kl)
    if perceptual_weight > 0:
        from xdyna_jax.models.lpips import load_lpips

        m = load_lpips(perceptual_net)
        dist = m["distance"](m["params"], m["lins"], rec, jax.lax.stop_gradient(x))[0]
        total = total + perceptual_weight * jnp.mean(dist)
    return total


def loss(params, batch, rng, *, cfg, train):
    """The objective of ``train.stage`` (a scalar)."""
    if train.stage == "vae":
        return vae_loss(params, batch, rng, cfg=cfg, kl_weight=train.kl_weight,
                        perceptual_weight=train.perceptual_weight, perceptual_net=train.perceptual_net)
    return diffusion_loss(params, batch, rng, cfg=cfg, image_dropout=train.image_dropout, snr_gamma=train.snr_gamma,
                          max_timestep=train.max_timestep, timestep_shift=train.timestep_shift)
