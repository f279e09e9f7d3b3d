"""Pre-encoded training inputs, made once at build time: VAE posteriors and CLIP image hidden states.

``frame_encoders(...)`` returns ``(features, extra_fn)`` for ``datasets.build_dataset``; every example
then carries, for each of its ``T`` frames (one row per stored frame, same order):

    vae_moments  float16 (T, H/f, W/f, 2*latent)  the VAE posterior ``mean | logvar`` (unscaled; logvar
                 clipped as diffusers does). Moments, not a sample: training draws a fresh
                 ``latent_dist_sample(mean, logvar, rng) * scaling_factor`` each step, as X-Dyna
                 samples the reference posterior (spec 1.3), instead of freezing one draw into the data.
    clip_hidden  float16 (T, tokens, width)  CLIP vision ``hidden_states[-2]`` of
                 ``clip_pixel_values(frame)``: what the IP-Adapter-Plus Resampler reads (spec 1.3).
                 Every frame, because the loader may draw any frame as the reference.

Frames go to the VAE as ``uint8 / 127.5 - 1`` at their stored size, which must be a multiple of the
VAE's downscale factor (set ``BuildSettings.size`` otherwise): a video that is not is reported and
skipped like any other unusable input. Size: SD1.5 VAE moments of a 512x512 frame are 64x64x8 float16
= 64 KB; ViT-H/14 hidden states are 257x1280 float16 = 658 KB per frame (a 512x896 example frame is
56 KB as JPEG q95), so
``clip_hidden`` is worth it only when CLIP time matters more than disk.

Frames are encoded ``batch_size`` at a time by one jitted function (the last batch padded, so there is
one compilation per frame size), on JAX's default device.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

# field -> the rows the loader returns: "frames" (reference + clip, as ``frames``) or "reference" only
FIELDS = {"vae_moments": "frames", "clip_hidden": "reference"}


class EncodeError(ValueError):
    """A video the encoders cannot take (its file is skipped and reported by the builder)."""


def vae_inputs(frames: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 in [-1, 1], the VAE's input range."""
    return frames.astype(np.float32) / 127.5 - 1.0


def _batched(fn: Callable, xs: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` over ``xs`` in fixed-size batches (the last padded with copies of the first row)."""
    out = []
    for a in range(0, len(xs), batch_size):
        chunk = xs[a:a + batch_size]
        n = len(chunk)
        if n < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], batch_size - n, axis=0)])
        out.append(np.asarray(fn(chunk))[:n])
    return np.concatenate(out)


def frame_encoders(vae: Optional[tuple[Any, Any]] = None, clip: Optional[tuple[Any, Any]] = None,
                   batch_size: int = 8, processor: Any = None) -> tuple[dict, Callable]:
    """``(features, extra_fn)`` for ``build_dataset`` from ``vae=(params, VAEConfig)`` and/or
    ``clip=(params, CLIPVisionConfig)`` (as ``porting.loaders.load_vae`` / ``load_clip_vision`` return).
    """
    import jax
    import tensorflow_datasets as tfds

    from xdyna_jax.models.clip import CLIPVisionModel
    from xdyna_jax.models.clip_preprocess import clip_pixel_values, default_image_processor
    from xdyna_jax.models.vae import AutoencoderKL

    if vae is None and clip is None:
        raise ValueError("frame_encoders: give vae=(params, VAEConfig), clip=(params, CLIPVisionConfig), or both")
    if batch_size < 1:
        raise ValueError(f"frame_encoders: batch_size must be >= 1, got {batch_size}")
    feats: dict = {}
    steps: list[Callable[[np.ndarray], tuple[str, np.ndarray]]] = []
    # ragged dims need a byte encoding in TFDS; float16 latents barely compress, so no zlib
    tensor = lambda *shape: tfds.features.Tensor(shape=shape, dtype=np.float16, encoding="bytes")  # noqa: E731

    if vae is not None:
        vae_params, vae_cfg = vae
        model = AutoencoderKL(vae_cfg)
        f = vae_cfg.downscale

        @jax.jit
        def _moments(p, x):
            mean, logvar = model.apply({"params": p}, x, method=AutoencoderKL.encode)
            return jax.numpy.concatenate([mean, logvar], axis=-1)

        def vae_step(frames):
            h, w = frames.shape[1:3]
            if h % f or w % f:
                raise EncodeError(f"frames are {h}x{w}; the VAE needs sides that are multiples of {f} "
                                  f"(set the build setting 'size')")
            return "vae_moments", _batched(lambda x: _moments(vae_params, x), vae_inputs(frames), batch_size)

        feats["vae_moments"] = tensor(None, None, None, 2 * vae_cfg.latent_channels)
        steps.append(vae_step)

    if clip is not None:
        clip_params, clip_cfg = clip
        model_c = CLIPVisionModel(clip_cfg)
        processor = default_image_processor(clip_cfg.image_size) if processor is None else processor
        tokens = (clip_cfg.image_size // clip_cfg.patch_size) ** 2 + 1

        @jax.jit
        def _hidden(p, x):
            return model_c.apply({"params": p}, x, output_hidden_states=True).hidden_states[-2]

        def clip_step(frames):
            pix = clip_pixel_values(list(frames), processor)
            return "clip_hidden", _batched(lambda x: _hidden(clip_params, x), pix, batch_size)

        feats["clip_hidden"] = tensor(None, tokens, clip_cfg.hidden_size)
        steps.append(clip_step)

    def extra_fn(video_id: str, frames: np.ndarray, conditions: Mapping[str, Any]) -> dict:
        out = {}
        for step in steps:
            name, value = step(frames)
            if not np.all(np.isfinite(value)):
                raise EncodeError(f"{name}: the encoder produced non-finite values")
            out[name] = value.astype(np.float16)
        return out

    return feats, extra_fn


@functools.lru_cache(maxsize=1)
def encoders_from_paths(vae: Optional[str] = None, image_encoder: Optional[str] = None,
                        batch_size: int = 8) -> tuple[dict, Callable]:
    """``frame_encoders`` of the weights at these paths (``build --vae/--image-encoder``).

    Cached: a Beam worker that runs several bundles in one process (``beam.VideoFn.setup``) loads the
    weights once; ``functools.partial(encoders_from_paths, ...)`` is what the Beam build ships to workers.
    """
    from xdyna_jax.porting import loaders

    vae_w = loaders.load_vae(Path(vae)) if vae is not None else None
    clip_w = loaders.load_clip_vision(Path(image_encoder)) if image_encoder is not None else None
    return frame_encoders(vae_w, clip_w, batch_size=batch_size)
