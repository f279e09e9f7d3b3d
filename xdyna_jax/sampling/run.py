"""``sample.py``'s work: jobs in, mp4s out, on a mesh (the host side of sampling).

Per batch of jobs: the conditioning encoders run once (reference latent, IP-Adapter tokens, text
states), ``pipeline.sample_latents`` runs the whole denoising loop as one compiled program, the VAE
decodes in chunks, and each video is written under a temporary name and renamed when complete.
"""
from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from xdyna_jax.cli import UserError, atomic_file
from xdyna_jax.models import xdyna
from xdyna_jax.sharding import MeshConfig, rules_with

from . import pipeline
from .jobs import Job, JobInputs, read_job
from .pixels import normalize_condition, to_uint8

OFFICIAL_FPS = 15  # --save_fps of the shipped scripts


@dataclasses.dataclass(frozen=True)
class SampleRunConfig:
    """``configs/sample_*.yaml``: sampling settings, the networks, the mesh."""

    sample: pipeline.SampleConfig = pipeline.SampleConfig()
    models: xdyna.ModelsConfig = xdyna.ModelsConfig()
    mesh: MeshConfig = MeshConfig()
    fps: float = OFFICIAL_FPS


def check_config(cfg: SampleRunConfig) -> None:
    s = cfg.sample
    if s.height % 8 or s.width % 8 or s.height <= 0 or s.width <= 0:
        raise UserError(f"sample.height={s.height}, sample.width={s.width}: expected positive multiples of 8 "
                        f"(the VAE and ControlNets work at 1/8 resolution)")
    if min(s.height, s.width) < 40:
        raise UserError(f"sample.height={s.height}, sample.width={s.width}: expected at least 40 pixels each "
                        f"(the latent init's 9x9 reflect blur needs latents larger than 4)")
    for k in ("frames", "stride", "steps", "batch_size"):
        if getattr(s, k) < 1:
            raise UserError(f"sample.{k}={getattr(s, k)}: expected an integer >= 1")
    if not 0.0 < s.strength <= 1.0 or int(s.steps * s.strength) < 1:
        raise UserError(f"sample.strength={s.strength}: expected a number in (0, 1] that keeps at least one of "
                        f"sample.steps={s.steps} DDIM steps (int(steps * strength) >= 1)")
    if not 0.0 <= s.guidance_rescale <= 1.0:
        raise UserError(f"sample.guidance_rescale={s.guidance_rescale}: expected a number in [0, 1] (0 = off)")
    if not cfg.fps > 0:
        raise UserError(f"fps={cfg.fps}: expected a number > 0")


# --- the conditioning encoders, compiled once per shape ----------------------------------------------

@functools.partial(jax.jit, static_argnames=("cfg",))
def _encode(params, images, pixels, noise, text_ids, *, cfg):
    ref = xdyna.reference_latent(params, images, noise=noise, cfg=cfg)
    tokens = xdyna.image_tokens(params, pixels, cfg=cfg)
    uncond = xdyna.uncond_image_tokens(params, images.shape[0], cfg=cfg)
    text = xdyna.text_states(params, text_ids, cfg=cfg)
    return ref, tokens, uncond, text


@functools.partial(jax.jit, static_argnames=("cfg", "round"))
def _decode(vae_params, latents, *, cfg, round):
    from xdyna_jax.models.vae import AutoencoderKL

    x = AutoencoderKL(cfg).apply({"params": vae_params}, latents, method="decode_video_from_latents")
    return to_uint8(x / 2 + 0.5, round=round)


def _prompt_ids(cfg: SampleRunConfig, jobs: Sequence[Job], tokenizer) -> np.ndarray:
    if any(j.caption for j in jobs):
        if tokenizer is None:
            raise UserError(f"job {next(j.name for j in jobs if j.caption)!r} has a caption, but the weights "
                            f"ship no tokenizer (X-Dyna's captions are empty)")
        from xdyna_jax.models.clip_preprocess import tokenize

        return tokenize([j.caption for j in jobs], tokenizer, cfg.models.text_encoder.max_position_embeddings)
    return xdyna.empty_prompt_ids(cfg.models, len(jobs), tokenizer)


def _batch_inputs(cfg: SampleRunConfig, params, inputs: list[JobInputs], jobs: list[Job], tokenizer, seeds):
    from xdyna_jax.models.clip_preprocess import clip_pixel_values, default_image_processor

    s = cfg.sample
    keys = pipeline.job_keys(seeds)
    h, w = s.height // 8, s.width // 8
    lat = cfg.models.vae.latent_channels
    post = jax.vmap(lambda k: jax.random.normal(k, (h, w, lat), jnp.float32))(pipeline.stream_key(keys, "posterior"))
    processor = default_image_processor(cfg.models.image_encoder.image_size)
    pixels = clip_pixel_values([x.clip_image for x in inputs], processor)
    images = np.stack([x.reference for x in inputs])
    ref, tokens, uncond, text = _encode(params, images, pixels, post, _prompt_ids(cfg, jobs, tokenizer),
                                        cfg=cfg.models)
    to_cond = lambda u8: normalize_condition(np.asarray(u8, np.float32) / 127.5 - 1.0)
    pose = to_cond(np.stack([x.pose for x in inputs]))
    face = None
    if inputs[0].face is not None:  # local and global maps are separate clips (spec §7.3)
        f = np.stack([x.face for x in inputs])
        face = jnp.concatenate([to_cond(f[..., :3]), to_cond(f[..., 3:])], axis=-1)
    n = pose.shape[1]
    draws = pipeline.make_draws(keys, frames=n, latent_shape=(h, w, lat), steps=s.denoising_steps,
                                context_frames=s.context_frames)
    return dict(ref_latent=ref, text_states=text, image_tokens=tokens, uncond_image_tokens=uncond, pose=pose,
                face=face, draws=draws)


def grid_frames(x: JobInputs, result: np.ndarray) -> np.ndarray:
    """Side by side: reference | (driving | face global | face local |) skeleton | result."""
    n = len(result)
    panels = [np.repeat(x.reference_rgb[None], n, 0)]
    if x.face is not None and x.face.any():  # an all-black condition is "no face": no panels for it
        if x.driving is not None:
            panels.append(x.driving[:n])
        panels += [x.face[:n, ..., 3:], x.face[:n, ..., :3]]
    panels += [x.pose[:n], result]
    return np.concatenate(panels, axis=2)


class _StepBar:
    """The tqdm bar over denoising steps, fed from inside the compiled loop (``pipeline`` ``on_step``)."""

    bar = None

    def tick(self, i, _):
        if self.bar is not None:  # idempotent: a sharded loop may call once per device
            self.bar.update(max(0, int(i) + 1 - self.bar.n))


_STEPS = _StepBar()


def _write(path: Path, frames: np.ndarray, fps: float) -> None:
    from xdyna_jax.data.video import write_video

    with atomic_file(path) as tmp:
        write_video(tmp, frames, fps=fps)


def run_jobs(cfg: SampleRunConfig, params, jobs: list[Job], out: Path, *, tokenizer=None, grid: bool = False,
             align: bool = False, mesh=None, log=print, progress: bool = True) -> list[Path]:
    """Sample every job; returns the mp4 paths. Jobs are read and checked before any compute."""
    s = cfg.sample
    use_face = "face_controlnet" in params and cfg.models.face_controlnet is not None
    inputs = []
    for job in jobs:
        x = read_job(job, frames=s.frames, stride=s.stride, height=s.height, width=s.width, face=use_face,
                     align=align)
        for note in x.notes:
            log(f"{job.name}: {note}")
        inputs.append(x)
    return write_videos(cfg, params, jobs, inputs, out, tokenizer=tokenizer, grid=grid, mesh=mesh, progress=progress)


def write_videos(cfg: SampleRunConfig, params, jobs: list[Job], inputs: list[JobInputs], out: Path, *,
                 tokenizer=None, grid: bool = False, mesh=None, progress: bool = True) -> list[Path]:
    """Sample prepared inputs (``read_job``'s, or arrays made elsewhere) and write ``{job.name}.mp4`` each
    (and ``{job.name}_grid.mp4`` with ``grid``); returns the mp4 paths."""
    from tqdm import tqdm

    written = []
    bar = tqdm(total=len(jobs), desc="jobs", unit="job", disable=not progress)
    for batch, videos, seconds in sample_inputs(cfg, params, jobs, inputs, tokenizer=tokenizer, mesh=mesh,
                                                progress=progress):
        for k, i in enumerate(batch):
            path = out / f"{jobs[i].name}.mp4"
            _write(path, videos[k], cfg.fps)
            if grid:
                _write(out / f"{jobs[i].name}_grid.mp4", grid_frames(inputs[i], videos[k]), cfg.fps)
            written.append(path)
            bar.write(f"{jobs[i].name}: {videos[k].shape[0]} frames {cfg.sample.height}x{cfg.sample.width}, "
                      f"{seconds / len(batch):.1f} s, {path}")
            bar.update(1)
    bar.close()
    return written


def sample_inputs(cfg: SampleRunConfig, params, jobs: list[Job], inputs: list[JobInputs], *, tokenizer=None,
                  mesh=None, progress: bool = False):
    """Yields ``(job indices, videos (n, N, H, W, 3) uint8, seconds)`` batch by batch. A batch holds jobs of one
    frame count and condition set (one compiled shape), padded to ``sample.batch_size`` (rounded up to whole
    jobs per data shard); a job's draws depend only on its seed ``sample.seed + index``."""
    from tqdm import tqdm

    s = cfg.sample
    data = 1 if mesh is None else int(np.prod([mesh.shape[a] for a in ("data", "fsdp")]))
    per_batch = -(-s.batch_size // data) * data  # whole jobs per data shard
    order = sorted(range(len(jobs)), key=lambda i: (len(inputs[i].pose), inputs[i].face is None))
    batches, cur = [], []
    for i in order:
        if cur and (len(cur) == per_batch or len(inputs[i].pose) != len(inputs[cur[0]].pose)
                    or (inputs[i].face is None) != (inputs[cur[0]].face is None)):
            batches.append(cur)
            cur = []
        cur.append(i)
    batches.append(cur)
    for batch in batches:
        t0 = time.perf_counter()
        idx = batch + [batch[-1]] * (per_batch - len(batch))  # pad to the compiled batch size
        b_in, b_jobs = [inputs[i] for i in idx], [jobs[i] for i in idx]
        seeds = [s.seed + i for i in idx]  # a job's draws depend only on its seed: same video in any batch
        kw = _batch_inputs(cfg, params, b_in, b_jobs, tokenizer, seeds)
        _STEPS.bar = tqdm(total=s.denoising_steps, desc="steps", unit="step", leave=False, disable=not progress)
        try:
            latents = pipeline.sample_latents(params, **kw, models=cfg.models, config=s, mesh=mesh,
                                              rules=rules_with(cfg.mesh.rules),
                                              on_step=_STEPS.tick if progress else None)
            latents = jax.block_until_ready(latents)
        finally:
            _STEPS.bar.close()
            _STEPS.bar = None
        videos = np.asarray(_decode(params["vae"], latents, cfg=cfg.models.vae, round=s.round))
        yield batch, videos, time.perf_counter() - t0


def place(params, cfg: SampleRunConfig, mesh=None) -> dict:
    """Host params (``{part: tree}``) on ``mesh`` with the models' shardings (replicated without a mesh)."""
    if mesh is None:
        return jax.tree.map(jnp.asarray, params)
    shardings = xdyna.param_shardings(cfg.models, mesh, rules_with(cfg.mesh.rules))
    return {k: jax.tree.map(jax.device_put, v, shardings[k]) for k, v in params.items()}


def random_weights(cfg: SampleRunConfig, seed: int = 0, mesh=None) -> dict:
    """Seeded random weights of every network of the config (the models' own initialisers)."""
    return xdyna.init_params(cfg.models, jax.random.key(seed), mesh, rules=rules_with(cfg.mesh.rules))


def weights_from_bundle(path, cfg: SampleRunConfig, model_overrides: Sequence[str], mesh=None):
    """(params, models config, tokenizer) from a bundle folder restored onto ``mesh``."""
    from xdyna_jax.porting import PortingError
    from xdyna_jax.porting.bundle import load_bundle

    try:
        bundle = load_bundle(path, mesh, overrides=model_overrides, rules=rules_with(cfg.mesh.rules))
        bundle.require("unet", "pose_controlnet", "resampler", "vae", "image_encoder", "text_encoder")
    except PortingError as e:
        raise UserError(f"--weights {e}") from e
    return bundle.params, bundle.cfg, bundle.load_tokenizer()


def default_inputs(examples: Optional[Path], workdir: Path, height: int, width: int, frames: int) -> list[Job]:
    """The embedded default's job: the shared example reference 1 + skeleton 1 when present, else a
    generated reference picture and skeleton video (written to ``workdir``)."""
    if examples is not None and (examples / "reference_1.png").is_file() and (examples / "pose_1.mp4").is_file():
        return [Job("example_1", examples / "reference_1.png", pose=examples / "pose_1.mp4")]
    from .synthetic import write_synthetic_job

    return [write_synthetic_job(workdir, height=max(height, 256), width=max(width, 128), frames=frames)]


def load_run_config(path, overrides: Sequence[str] = ()) -> SampleRunConfig:
    """A ``configs/sample_*.yaml`` plus ``key=value`` overrides; its ``models`` may name a ModelsConfig
    file (relative to it), so the network presets live in one place."""
    from xdyna_jax import config as config_lib

    try:
        return config_lib.load_run(SampleRunConfig, path, overrides)
    except config_lib.ConfigError as e:
        raise UserError(f"--config {e}") from e
