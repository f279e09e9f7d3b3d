"""The X-Dyna sampler: reference-latent init, closed-loop windows, CFG, DDIM (spec §1.3-1.8).

``sample_latents`` is the one public entry: conditioned inputs + explicit random draws -> the
final latents of the generated frames, before decoding. All of the denoising loop is one jitted
function: ``lax.scan`` over steps, and inside each step ``lax.scan`` over the windows, which are
fixed-shape gathers and scatter-adds whose indices are computed in-graph from the step's offset.
So the trace does not grow with the video length, and a batch of the same shapes never recompiles.

Batches hold B independent jobs. Each job has its own draws (its own window offsets too), so a
job's result does not depend on the other jobs of its batch. Guidance doubles the model batch to
``[uncond_0, cond_0, uncond_1, cond_1, ...]``: the official ``[uncond, cond]`` pair per job, kept
adjacent so a batch split over the mesh ``data`` axis never moves a job between devices.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
from einops import rearrange

from xdyna_jax.models import xdyna

from .ddim import DDIMSchedule, ddim_step, kept_steps, make_schedule
from .init import initial_latents
from .windows import context_windows, window_count


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """Sampling settings (config keys ``sample.*``); defaults are the shipped scripts' (spec §9).

    frames: driving frames N to generate (``--length``). stride: keep every stride-th driving frame.
    steps: DDIM steps. guidance_scale: CFG scale; guidance runs when it is >= 1 (as the official ``>=``).
    seed: base seed of the jobs' draws. batch_size: jobs per batch. height, width: output pixels.
    context_frames, context_overlap: window size and overlap (§1.7).
    controlnet_once: run the ControlNets once per window for both guidance halves; exact (and used)
      only when the uncond and cond text states are equal, otherwise both halves run.
    round: quantise output frames by rounding; the official code truncates (``round=False``).
    conditioning_scale: ControlNet residual scale (1.0 for pose and face in the official runs).
    strength: the official pipeline's ``strength``: only the last ``int(steps * strength)`` DDIM steps run,
      from the (partly blurred) reference latent noised to the first kept timestep. 1.0 (official runs):
      all steps, from t = 961 of 25. Lower keeps more of the reference's layout.
    timestep_spacing: ``leading`` (official: 961, ..., 1 of 25) or ``trailing`` (999, ..., 39: starts at
      the schedule's noisiest step, Lin et al. 2023, for models trained at zero terminal SNR).
    guidance_rescale: phi of Lin et al. 2023 §3.4; the guided output is rescaled to the std of the
      conditional one, mixed in by phi (0, official: off). Counters over-exposure at high guidance.
    """

    frames: int = 192
    stride: int = 2
    steps: int = 25
    guidance_scale: float = 7.5
    seed: int = 40
    batch_size: int = 1
    height: int = 896
    width: int = 512
    context_frames: int = 16
    context_overlap: int = 4
    controlnet_once: bool = True
    round: bool = False
    conditioning_scale: float = 1.0
    strength: float = 1.0
    timestep_spacing: Literal["leading", "trailing"] = "leading"
    guidance_rescale: float = 0.0

    @property
    def denoising_steps(self) -> int:
        """The DDIM steps that run (``steps`` cut by ``strength``): the length of ``Draws.offsets``."""
        return kept_steps(self.steps, self.strength)


# --- random draws ---------------------------------------------------------------------------------

class Draws(NamedTuple):
    """Every random value the sampler uses, per job (leading axis B). Pass them in to replay a run.

    mask: (B, N, h, w, C) bool or {0, 1}; 1 keeps the reference latent element, 0 takes its blur.
      (The official mask also covers frame 0, which is then overwritten: drop that frame.)
    noise: (B, N, h, w, C) float, the initial noise of frames 1..N (official ``randn_like``, frame 0 dropped).
    offsets: (B, steps) int in [0, context_frames), one window offset per step (official ``random.randint``).
    """

    mask: Any
    noise: Any
    offsets: Any


# one stream per kind of draw, folded into the job key: adding a stream never changes another one
STREAMS = ("posterior", "mask", "noise", "offsets")


def job_keys(seeds: Sequence[int]) -> jax.Array:
    """One key per job, ``(B,)``, from one integer seed per job."""
    return jnp.stack([jax.random.key(int(s)) for s in seeds])


def stream_key(keys: jax.Array, name: str) -> jax.Array:
    """The keys ``(B,)`` of one draw stream (``STREAMS``). ``posterior`` is the VAE posterior
    noise of the reference latent (``xdyna.reference_latent(..., rng=...)``), drawn outside the sampler."""
    if name not in STREAMS:
        raise ValueError(f"unknown draw stream {name!r}; streams are {STREAMS}")
    return jax.vmap(lambda k: jax.random.fold_in(k, STREAMS.index(name)))(keys)


def make_draws(keys: jax.Array, *, frames: int, latent_shape: Sequence[int], steps: int,
               context_frames: int = 16) -> Draws:
    """The draws of B jobs from their keys ``(B,)`` (``job_keys``). latent_shape: (h, w, C).

    Job b's draws depend only on ``keys[b]``: a job gives the same result in any batch.
    """
    shape = (frames, *latent_shape)
    mask = jax.vmap(lambda k: jax.random.bernoulli(k, 0.5, shape))(stream_key(keys, "mask"))
    noise = jax.vmap(lambda k: jax.random.normal(k, shape, jnp.float32))(stream_key(keys, "noise"))
    offsets = jax.vmap(lambda k: jax.random.randint(k, (steps,), 0, context_frames, jnp.int32))(
        stream_key(keys, "offsets"))
    return Draws(mask=mask, noise=noise, offsets=offsets)


# --- the denoising loop -----------------------------------------------------------------------------

def _pair(x):
    """(B, ...) -> (2B, ...) as [x_0, x_0, x_1, x_1, ...]: the same input for both guidance halves."""
    return jnp.repeat(x, 2, axis=0)


def _interleave(uncond, cond):
    """(B, ...) twice -> (2B, ...) as [uncond_0, cond_0, uncond_1, cond_1, ...]."""
    return rearrange(jnp.stack([uncond, cond], axis=1), "b k ... -> (b k) ...")


def _window_eps(params, window, t, text_uc, text_c, ctx_uc, ctx_c, pose, face, cscale, *,
                models, do_cfg: bool, cn_once: bool):
    """Noise predictions ``(B, K, 1+L, h, w, C)`` for one window of every job; K = 2 ([uncond, cond])
    with guidance, else 1. window (B, 1+L, ...) has the clean reference as frame 0."""
    noisy = window[:, 1:]
    if not do_cfg:
        res = xdyna.controlnet_residuals(params, noisy, t, text_c, pose, face, cfg=models, conditioning_scale=cscale)
        return xdyna.unet_eps(params, window, t, ctx_c, res, cfg=models)[:, None]
    if cn_once:
        # both halves feed the ControlNets the same latents, conditions and (equal) text: run once, reuse
        res = xdyna.controlnet_residuals(params, noisy, t, text_c, pose, face, cfg=models, conditioning_scale=cscale)
        res = jax.tree.map(_pair, res)
    else:
        res = xdyna.controlnet_residuals(params, _pair(noisy), t, _interleave(text_uc, text_c), _pair(pose),
                                         None if face is None else _pair(face), cfg=models,
                                         conditioning_scale=cscale)
    eps = xdyna.unet_eps(params, _pair(window), t, _interleave(ctx_uc, ctx_c), res, cfg=models)
    return rearrange(eps, "(b k) ... -> b k ...", k=2)


def _denoise_loop(params, sched: DDIMSchedule, guidance_scale, conditioning_scale, ref_latent, text_c, text_uc,
                  img_c, img_uc, pose, face, draws: Draws, guidance_rescale=0.0, *, models, size: int, overlap: int,
                  do_cfg: bool, cn_once: bool, rescale: bool = False, on_step=None):
    b, n = draws.noise.shape[:2]
    ref = jnp.asarray(ref_latent, jnp.float32)
    x = initial_latents(sched, ref, draws.mask, draws.noise)
    ctx_c = xdyna.context_states(text_c, img_c)
    ctx_uc = xdyna.context_states(text_uc, img_uc) if do_cfg else None
    k = 2 if do_cfg else 1
    take = jax.vmap(lambda a, i: a[i])  # per job: frames at that job's window indices
    scatter_add = jax.vmap(lambda a, i, v: a.at[i].add(v))

    def step(x, xs):
        i, offsets = xs
        t = sched.timesteps[i]
        windows = jax.vmap(lambda o: context_windows(n, o, size, overlap, xp=jnp))(offsets)  # (B, W, L)

        def one_window(carry, idx):  # idx (B, L)
            eps_sum, count = carry
            window = jnp.concatenate([ref[:, None], take(x, idx)], axis=1)
            eps = _window_eps(params, window, t, text_uc, text_c, ctx_uc, ctx_c, take(pose, idx),
                              None if face is None else take(face, idx), conditioning_scale,
                              models=models, do_cfg=do_cfg, cn_once=cn_once)
            # the reference frame's own prediction is discarded
            eps = rearrange(eps[:, :, 1:].astype(jnp.float32), "b k f ... -> b f k ...")
            return (scatter_add(eps_sum, idx, eps), scatter_add(count, idx, jnp.ones(idx.shape))), None

        init = (jnp.zeros((b, n, k) + x.shape[2:], jnp.float32), jnp.zeros((b, n), jnp.float32))
        (eps_sum, count), _ = jax.lax.scan(one_window, init, jnp.swapaxes(windows, 0, 1))
        eps = eps_sum / count[:, :, None, None, None, None]  # mean over the windows covering a frame
        if do_cfg:  # guidance after averaging, as the official loop
            cond = eps[:, :, 1]
            eps = eps[:, :, 0] + guidance_scale * (cond - eps[:, :, 0])
            if rescale:  # per job, over frames and latent elements (Lin et al. 2023, eq. 15-16)
                ratio = jnp.std(cond, axis=(1, 2, 3, 4), keepdims=True) / jnp.std(eps, axis=(1, 2, 3, 4), keepdims=True)
                eps = guidance_rescale * (eps * ratio) + (1.0 - guidance_rescale) * eps
        else:
            eps = eps[:, :, 0]
        x = ddim_step(sched, i, x, eps, models.unet.prediction_type)  # eps: the UNet's output (or v)
        if on_step is not None:  # host progress; depends on x so it fires when the step is done
            jax.debug.callback(on_step, i, jnp.sum(x[:1, :1, :1, :1, :1]))
        return x, None

    steps = sched.timesteps.shape[0]
    x, _ = jax.lax.scan(step, x, (jnp.arange(steps), jnp.swapaxes(jnp.asarray(draws.offsets, jnp.int32), 0, 1)))
    return x


_denoise_loop_jit = jax.jit(_denoise_loop, static_argnames=("models", "size", "overlap", "do_cfg", "cn_once",
                                                           "rescale", "on_step"))
_arrays_equal = jax.jit(jnp.array_equal)


def _check_shapes(ref_latent, text_states, uncond_text_states, image_tokens, uncond_image_tokens, pose, face,
                  draws: Draws, steps: int, do_cfg: bool):
    b, h, w, c = ref_latent.shape
    n = pose.shape[1]
    want = {"draws.mask": (b, n, h, w, c), "draws.noise": (b, n, h, w, c), "draws.offsets": (b, steps)}
    got = {"draws.mask": draws.mask.shape, "draws.noise": draws.noise.shape, "draws.offsets": draws.offsets.shape}
    for name, shape in want.items():
        if tuple(got[name]) != shape:
            raise ValueError(f"{name} has shape {tuple(got[name])}, expected {shape} "
                             f"(B={b} jobs, N={n} frames, latent {h}x{w}x{c}, {steps} steps)")
    batched = {"text_states": text_states, "image_tokens": image_tokens, "pose": pose, "face": face}
    if do_cfg:
        batched.update(uncond_text_states=uncond_text_states, uncond_image_tokens=uncond_image_tokens)
        if uncond_image_tokens is None:
            raise ValueError("guidance_scale >= 1 needs uncond_image_tokens")
    for name, v in batched.items():
        if v is not None and v.shape[0] != b:
            raise ValueError(f"{name} has {v.shape[0]} jobs, ref_latent has {b}")
    for name, v in (("pose", pose), ("face", face)):
        if v is not None and (v.ndim != 5 or v.shape[1] != n or v.shape[2:4] != pose.shape[2:4]):
            raise ValueError(f"{name} must be (B, N, H, W, C) with the pose's N and size, got {v.shape}")


def sample_latents(params, ref_latent, text_states, image_tokens, uncond_image_tokens, pose, face=None, *,
                   draws: Draws, models: xdyna.ModelsConfig, config: SampleConfig = SampleConfig(),
                   uncond_text_states=None, schedule: DDIMSchedule | None = None, mesh=None, rules=None,
                   on_step=None) -> jax.Array:
    """Run the X-Dyna sampler on B independent jobs; returns the final latents ``(B, N, h, w, C)``
    of the N generated frames (the reference frame dropped), float32, before ``/ 0.18215`` and decoding.

    params: ``{"unet": ..., "pose_controlnet": ..., "face_controlnet": ... (when face is given)}``,
      plain param pytrees (other parts are ignored).
    ref_latent: (B, h, w, C) the reference latent, already sampled from the VAE posterior and scaled.
    text_states: (B, 77, D) text encoder states of the prompt; uncond_text_states: those of the
      negative prompt (default: the same, as X-Dyna's empty prompts; then ``controlnet_once`` is exact).
    image_tokens, uncond_image_tokens: (B, n_ip, D) IP-Adapter tokens of the reference image and of
      the zero (normalised) image; the uncond ones may be None when guidance is off.
    pose: (B, N, H, W, 3) and face: (B, N, H, W, 6) or None: ControlNet conditions in [0, 1],
      already min-max normalised over each clip (``normalize_condition``). H = 8h, W = 8w.
    draws: the random values (``make_draws``, or injected to replay another run).
    models: the network configs (their ``dtype`` fields select bf16 compute).
    config: steps, guidance_scale, context_frames/overlap, controlnet_once, conditioning_scale are read.
    schedule: a DDIM schedule; default ``schedule_of(config, models)``.
    mesh: when given, the batch inputs and draws are placed with the batch split over its data axes
      (params are used as placed: shard them with ``xdyna.param_shardings``). ``rules``: the mesh's rule
      table (``sharding.rules_with(mesh_cfg.rules)``; default ``sharding.RULES``).
    on_step: optional host function ``on_step(step_index, _)`` called as each step completes (a progress
      bar); a static argument, so pass the same function each time (it may be called once per device).

    Compiled once per (B, N, h, w, models, window settings, guidance on/off, controlnet_once); the
    seed, guidance and conditioning scales and the draws are traced values.
    """
    sched = schedule_of(config, models) if schedule is None else schedule
    steps = int(sched.timesteps.shape[0])
    do_cfg = config.guidance_scale >= 1.0
    text_uc = text_states if uncond_text_states is None else uncond_text_states
    _check_shapes(ref_latent, text_states, text_uc, image_tokens, uncond_image_tokens, pose, face, draws,
                  steps, do_cfg)
    if face is not None and "face_controlnet" not in params:
        raise ValueError("a face condition was given, but params have no 'face_controlnet'")
    n = pose.shape[1]
    window_count(n, config.context_frames, config.context_overlap)  # validates the window settings
    cn_once = do_cfg and config.controlnet_once and (
        text_uc is text_states or bool(_arrays_equal(text_states, text_uc)))
    batch = (ref_latent, text_states, text_uc, image_tokens, uncond_image_tokens if do_cfg else None, pose, face,
             Draws(*draws))
    if mesh is not None:
        from xdyna_jax import sharding

        batch = jax.tree.map(lambda v: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim, rules)), batch)
        sched = jax.device_put(sched, sharding.replicated(mesh))
    nets = {k: params[k] for k in ("unet", "pose_controlnet", "face_controlnet") if k in params and
            (k != "face_controlnet" or face is not None)}
    return _denoise_loop_jit(nets, sched, jnp.float32(config.guidance_scale), jnp.float32(config.conditioning_scale),
                             *batch, jnp.float32(config.guidance_rescale), models=models, size=config.context_frames,
                             overlap=config.context_overlap, do_cfg=do_cfg, cn_once=cn_once,
                             rescale=do_cfg and config.guidance_rescale > 0, on_step=on_step)


def schedule_of(config: SampleConfig, models) -> DDIMSchedule:
    """The DDIM schedule of a sample config for these networks (``unet.rescale_betas_zero_snr``: the betas
    the UNet was trained on)."""
    return make_schedule(config.steps, strength=config.strength, timestep_spacing=config.timestep_spacing,
                         rescale_zero_snr=models.unet.rescale_betas_zero_snr)

