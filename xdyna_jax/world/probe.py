"""How well the denoiser lays out the figure from heavy noise: one-step x0 predictions on held-out world clips.

The pilot's measure (docs/TINY_WORLD.md): from the world's test split (figures training never drew), each
clip's frames after its reference are VAE-encoded (posterior means), noised to timestep ``t`` (0.8 T by
default, where sampling from noise decides the layout) with fixed noise, and predicted back in one
denoiser call (x0 from the epsilon or v output). Decoded, they are scored against the true frames: PSNR,
LPIPS (AlexNet), and ``figure_iou``, the IoU of the figure found in the prediction (``figure_mask``) with
the figure the world drew. ``static_iou`` is the same IoU for the reference frame repeated: what copying
the reference scores. Cheap enough to run inside training (``train.eval_every``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xdyna_jax.models import xdyna
from xdyna_jax.models.lpips import load_lpips
from xdyna_jax.models.vae import AutoencoderKL
from xdyna_jax.sampling.pixels import normalize_condition
from xdyna_jax.training import objective
from xdyna_jax.training.state import merge

from .generator import world_clip

# a pixel belongs to the figure when it differs from the background plate by more than this (max over RGB, of
# 3x3-blurred frames, 0..255), after a 3x3 opening that drops isolated speckles
MASK_THRESHOLD = 40.0
PROBE_SEED = 7  # the test-split stream the probe draws (the scoring command draws its own seeds)


def figure_mask(frames: np.ndarray, plates: np.ndarray, threshold: float = MASK_THRESHOLD) -> np.ndarray:
    """(T, H, W) bool: where uint8 ``frames`` (T, H, W, 3) differ from the background ``plates`` — the
    segmentation rule for generated frames (the world knows its background; no segmenter is trained)."""
    import cv2

    kernel = np.ones((3, 3), np.uint8)
    out = []
    for f, p in zip(frames, plates):
        d = np.abs(cv2.blur(f.astype(np.float32), (3, 3)) - cv2.blur(p.astype(np.float32), (3, 3))).max(-1)
        out.append(cv2.morphologyEx((d > threshold).astype(np.uint8), cv2.MORPH_OPEN, kernel) > 0)
    return np.stack(out)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of |a & b| / |a | b| (frames where both are empty count 1)."""
    inter = (a & b).sum(axis=(-2, -1))
    union = (a | b).sum(axis=(-2, -1))
    return float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))


def held_out(n: int, frames: int, height: int, width: int, seed: int = PROBE_SEED) -> list[dict]:
    """``n`` test-split clips with figures: reference, the ``frames`` frames after it, their skeletons, masks
    and plates."""
    out = []
    for i in range(n):
        c = world_clip(seed, i, frames + 1, height, width, 0.0, "test", truth=True)
        out.append({"reference": c["frames"][0], "truth": c["frames"][2:], "pose": c["pose"][1:],
                    "masks": c["masks"][2:], "plates": c["plates"][2:], "ref_mask": c["masks"][0]})
    return out


def make_probe(run, params, models, log=print, clips: int = 4, timesteps=(800,)):
    """``probe(state) -> {probe_*: float}`` for ``training.loop.train``'s ``evaluator``: the EMA params
    when the state has them, else the trained ones, over the frozen rest."""
    t = run.train
    cases = held_out(clips, t.frames, t.height, t.width)
    vae = AutoencoderKL(models.vae)
    scale = models.vae.scaling_factor
    ref = np.stack([c["reference"] for c in cases]).astype(np.float32) / 127.5 - 1.0
    truth = np.stack([c["truth"] for c in cases])
    pose = normalize_condition(np.stack([c["pose"] for c in cases]).astype(np.float32) / 127.5 - 1.0)
    pixels = np.concatenate([ref[:, None], truth.astype(np.float32) / 127.5 - 1.0], axis=1)
    lp = load_lpips("alex")
    static = iou(np.stack([np.repeat(c["ref_mask"][None], len(c["masks"]), 0) for c in cases]),
                 np.stack([c["masks"] for c in cases]))
    from xdyna_jax.models.clip_preprocess import clip_pixel_values, default_image_processor

    clip_pix = clip_pixel_values([c["reference"] for c in cases], default_image_processor(models.image_encoder.image_size))

    @jax.jit
    def predict(p, noise, tstep):
        b, f = pixels.shape[:2]
        mean, _ = vae.apply({"params": p["vae"]}, pixels.reshape((b * f,) + pixels.shape[2:]), method="encode")
        lat = mean.reshape((b, f) + mean.shape[1:]) * scale
        a = objective.alphas_cumprod(models)[tstep]
        noisy = jnp.sqrt(a) * lat[:, 1:] + jnp.sqrt(1.0 - a) * noise
        text = xdyna.text_states(p, xdyna.empty_prompt_ids(models, b), cfg=models)
        tokens = xdyna.image_tokens(p, clip_pix, cfg=models)
        out = xdyna.denoise(p, jnp.concatenate([lat[:, :1], noisy], 1), jnp.full((b,), tstep), text, tokens, pose,
                            None, cfg=models)[:, 1:].astype(jnp.float32)
        if models.unet.prediction_type == "v_prediction":
            x0 = jnp.sqrt(a) * noisy - jnp.sqrt(1.0 - a) * out
        else:
            x0 = (noisy - jnp.sqrt(1.0 - a) * out) / jnp.sqrt(a)
        img = vae.apply({"params": p["vae"]}, (x0 / scale).reshape((-1,) + x0.shape[2:]), method="decode")
        img = jnp.clip((img + 1.0) * 127.5, 0, 255).round().astype(jnp.uint8)
        return img.reshape(truth.shape)

    lat_shape = (len(cases), t.frames, t.height // models.vae.downscale, t.width // models.vae.downscale,
                 models.unet.in_channels)
    noise = jax.random.normal(jax.random.key(PROBE_SEED), lat_shape, jnp.float32)

    def probe(state) -> dict:
        p = merge(state.ema if state.ema is not None else state.trainable, state.frozen)
        out = {"probe_static_iou": static}
        for ts in timesteps:
            video = np.asarray(predict(p, noise, ts))
            mse = np.mean(np.square(video.astype(np.float32) - truth), axis=(2, 3, 4))
            out[f"probe_psnr_t{ts}"] = float(np.mean(10 * np.log10(255.0 ** 2 / np.maximum(mse, 1e-10))))
            d = lp["fn"](lp["params"], lp["lins"], video.reshape((-1,) + video.shape[2:]),
                         truth.reshape((-1,) + truth.shape[2:]))[0]
            out[f"probe_lpips_t{ts}"] = float(np.mean(d))
            out[f"probe_figure_iou_t{ts}"] = float(np.mean([
                iou(figure_mask(v, c["plates"]), c["masks"]) for v, c in zip(video, cases)]))
        return out

    log(f"probe: {clips} held-out clips, one-step x0 at t = {', '.join(map(str, timesteps))} "
        f"(static reference's figure IoU {static:.3f})")
    return probe


def probe_checkpoint(workdir, clips: int = 4, log=print) -> dict:
    """The probe of a run's latest checkpoint, for both its EMA (``probe_*``) and its raw weights
    (``raw_probe_*``): an EMA from step 0 lags the raw weights by about 1 / (1 - decay) steps, so early in a
    run (a pilot) only the raw weights say whether the recipe moves."""
    from pathlib import Path

    import orbax.checkpoint as ocp

    from xdyna_jax import config as config_lib
    from xdyna_jax.cli import UserError
    from xdyna_jax.training import checkpoint, runtime
    from xdyna_jax.training.config import TrainRunConfig
    from xdyna_jax.training.state import models_for_training

    if not (Path(workdir) / "checkpoints").is_dir():  # before the manager, which would create the folder
        raise UserError(f"--workdir {workdir}: no checkpoints/ folder (a train.py workdir expected)")
    manager = checkpoint.make_manager(Path(workdir) / "checkpoints")
    try:  # the run's own config, from its latest checkpoint
        step = manager.latest_step()
        if step is None:
            raise UserError(f"--workdir {workdir}: no checkpoint")
        meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    finally:
        manager.close()
    run = config_lib.from_dict(TrainRunConfig, meta["config"])
    rt = runtime.build(run, workdir, data=False, out=lambda *_: None)  # mesh, state, restore: as train.py does
    try:
        state = rt.state
    finally:
        runtime.close(rt)
    models = models_for_training(run)
    probe = make_probe(run, merge(state.trainable, state.frozen), models, log, clips=clips)
    out = {"step": int(state.step), **probe(state)}
    out.update({f"raw_{k}": v for k, v in probe(state._replace(ema=None)).items()})
    return out


def main(argv=None) -> int:
    import json

    from xdyna_jax import cli

    p = cli.ArgumentParser(prog="python -m xdyna_jax.world.probe", description=probe_checkpoint.__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a train.py workdir of a world denoiser stage")
    p.add_argument("--clips", type=cli.int_range(1), default=4)
    args = p.parse_args(argv)
    print(json.dumps(probe_checkpoint(args.workdir, args.clips)))
    return 0


if __name__ == "__main__":
    import sys

    from xdyna_jax import cli

    sys.exit(cli.run(main))
