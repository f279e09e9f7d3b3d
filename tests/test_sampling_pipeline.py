"""The X-Dyna sampler against an independent step-by-step numpy re-derivation of the official loop.

The reference below follows spec §1.5-1.7 literally: numpy blur (9x9, sigma 18, reflect), numpy
mask mix and add_noise, one official window list per step, one ``[uncond, cond]`` model call per
window (``xdyna.denoise`` as a black box, ControlNets on both halves with their own text), sums
and counts per frame, guidance after averaging, numpy DDIM arithmetic in float64.
Tiny networks with random non-zero params; N = 20 frames, so windows wrap around.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from helpers import MICRO_NETS
from xdyna_jax import config as config_lib
from xdyna_jax import sharding
from xdyna_jax.models import logical_axes, param_shapes, xdyna
from xdyna_jax.sampling import pipeline
from xdyna_jax.sampling import (Draws, SampleConfig, gaussian_blur, initial_latents, job_keys, make_draws,
                                make_schedule, normalize_condition, sample_latents, stream_key, to_uint8)

ROOT = Path(__file__).resolve().parent.parent
B, N, S, LAT, STEPS = 2, 20, 8, 4, 3  # jobs, frames, latent size, latent channels, DDIM steps
TOL = 1e-4


# ----------------------------------------------------------------------------------------------
# setup: tiny networks, random params, random inputs, injected draws

def _random_tree(shapes, seed):
    """Every leaf random and non-zero (zero-initialised layers must not hide anything)."""
    rng = np.random.default_rng(seed)
    flat = {}
    for path, v in traverse_util.flatten_dict(shapes).items():
        n = rng.standard_normal(v.shape)
        if path[-1] == "kernel":
            n = n / math.sqrt(int(np.prod(v.shape[:-1])))
        elif path[-1] == "scale":
            n = 1.0 + 0.1 * n
        elif path[-1] == "bias":
            n = 0.1 * n
        flat[path] = n.astype(np.float32)
    return traverse_util.unflatten_dict(flat)


# Random networks amplify float32 rounding; two settings keep the loop well-conditioned, so that
# 1e-4 measures the algorithm and not chaos (measured: a 1e-6 input change moved the result by 1e-2):
#  * 4 GroupNorm groups: with 32 groups of these few channels, a group at the 1x1 level holds 1-2
#    values and normalising them divides rounding noise by sqrt(eps) (x400 per ControlNet call);
#  * a small UNet output layer, so eps is small as a trained net's error would be: DDIM divides eps
#    by sqrt(alpha-bar) each step and guidance multiplies it by 7.5.
GROUPS = ["unet.norm_num_groups=4", "pose_controlnet.norm_num_groups=4", "face_controlnet.norm_num_groups=4"]
EPS_SCALE = 0.01


@pytest.fixture(scope="module")
def models():
    # the one-level networks of helpers.MICRO_NETS: the sampler's loop, not the networks' depth, is under test
    # here, and each sampler program (one per setting below) compiled for minutes with tiny.yaml's four levels
    micro = [f"{k}={v}" for k, v in MICRO_NETS.items()]
    return config_lib.load(xdyna.ModelsConfig, ROOT / "configs" / "tiny.yaml", overrides=[*micro, *GROUPS])


@pytest.fixture(scope="module")
def params(models):
    parts = {"unet": models.unet, "pose_controlnet": models.pose_controlnet,
             "face_controlnet": models.face_controlnet}
    p = {name: _random_tree(param_shapes(xdyna.module_of(c)), seed) for seed, (name, c) in enumerate(parts.items())}
    p["unet"]["conv_out"] = {k: v * EPS_SCALE for k, v in p["unet"]["conv_out"].items()}
    return p


@pytest.fixture(scope="module")
def inputs(models):
    rng = np.random.default_rng(1)
    d = models.unet.cross_attention_dim
    n_ip = models.unet.num_ip_tokens
    f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
    pose = rng.uniform(-1, 0.6, (B, N, 8 * S, 8 * S, 3)).astype(np.float32)
    face = rng.uniform(-0.8, 1, (B, N, 8 * S, 8 * S, 6)).astype(np.float32)
    return dict(ref_latent=f32(B, S, S, LAT), text_states=f32(B, 77, d), image_tokens=f32(B, n_ip, d),
                uncond_image_tokens=f32(B, n_ip, d), pose=np.asarray(normalize_condition(pose)),
                face=np.asarray(normalize_condition(face)))


@pytest.fixture(scope="module")
def draws():
    rng = np.random.default_rng(2)
    return Draws(mask=rng.uniform(size=(B, N, S, S, LAT)) >= 0.5,
                 noise=rng.standard_normal((B, N, S, S, LAT)).astype(np.float32),
                 offsets=np.array([[15, 3, 9], [0, 12, 7]], np.int32))  # per job, per step


# backend compiles of the sampler's loop, counted from import on (before any sampler call)
_compiles: collections.Counter = collections.Counter()


def _count_compiles(event, secs, **kw):
    if event == "/jax/core/compile/backend_compile_duration" and "_denoise_loop" in str(kw.get("fun_name")):
        _compiles["_denoise_loop"] += 1


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def _cfg(**kw):
    return SampleConfig(**{"frames": N, "steps": STEPS, "guidance_scale": 7.5, **kw})


# ----------------------------------------------------------------------------------------------
# the independent reference

def np_blur(x):
    """torchvision GaussianBlur((9, 9), sigma=18) on (h, w, C): a 2D 9x9 kernel, reflect padding."""
    pos = np.arange(-4, 5, dtype=np.float64)
    k = np.exp(-0.5 * (pos / 18.0) ** 2)
    k2 = np.outer(k / k.sum(), k / k.sum())
    h, w = x.shape[:2]
    xp = np.pad(x, ((4, 4), (4, 4), (0, 0)), mode="reflect")
    return sum(k2[i, j] * xp[i:i + h, j:j + w] for i in range(9) for j in range(9))


def official_windows(n, offset):
    if n <= 16:
        return [list(range(n))]
    return [[(e + offset) % n for e in range(j, j + 16)] for j in range(0, n, 12)]


@functools.lru_cache(maxsize=None)
def _jitted_denoise(models):
    """``xdyna.denoise`` jitted once per models config: each reference call would otherwise trace and compile it
    again (a new ``jax.jit`` of a new partial is a new function to JAX)."""
    return jax.jit(functools.partial(xdyna.denoise, cfg=models))


def reference_sample(params, models, ref_latent, text_states, uncond_text_states, image_tokens,
                     uncond_image_tokens, pose, face, draws, steps, scale, strength=1.0, prediction_type="epsilon",
                     zero_snr=False, trailing=False, guidance_rescale=0.0):
    # the networks only: prediction type and zero-SNR betas are the scheduler's (this loop's) business, so every
    # reference call shares one compiled model call whatever the scheduler settings
    denoise = _jitted_denoise(dataclasses.replace(models, unet=dataclasses.replace(
        models.unet, prediction_type="epsilon", rescale_betas_zero_snr=False)))
    betas = np.linspace(0.00085, 0.012, 1000)
    ac = np.cumprod(1.0 - betas)
    if zero_snr:  # Lin et al. 2023, Algorithm 1, on sqrt(alpha-bar): last -> 0, first kept
        r = np.sqrt(ac)
        ac = ((r - r[-1]) * r[0] / (r[0] - r[-1])) ** 2
    ratio = 1000 // steps
    timesteps = np.arange(steps)[::-1] * ratio + 1
    if trailing:  # diffusers' "trailing": round(arange(T, 0, -T / steps)) - 1
        timesteps = np.round(np.arange(1000, 0, -1000 / steps)).astype(int) - 1
    timesteps = timesteps[steps - min(int(steps * strength), steps):]  # the official get_timesteps
    out = []
    for b in range(ref_latent.shape[0]):
        ref = ref_latent[b].astype(np.float64)
        mask = draws.mask[b].astype(np.float64)
        mixed = ref[None] * mask + np_blur(ref)[None] * (1.0 - mask)
        a0 = ac[timesteps[0]]
        x = np.sqrt(a0) * mixed + np.sqrt(1 - a0) * draws.noise[b]
        two = lambda uc, c: np.stack([uc, c]).astype(np.float32)  # the official [uncond, cond] batch
        for i, t in enumerate(timesteps):
            acc = np.zeros((2,) + x.shape)
            count = np.zeros(x.shape[0])
            for c in official_windows(x.shape[0], int(draws.offsets[b, i])):
                window = np.concatenate([ref[None], x[c]])
                eps = denoise(params, two(window, window), np.int32(t),
                              two(uncond_text_states[b], text_states[b]),
                              two(uncond_image_tokens[b], image_tokens[b]), two(pose[b][c], pose[b][c]),
                              None if face is None else two(face[b][c], face[b][c]))
                acc[:, c] += np.asarray(eps, np.float64)[:, 1:]
                count[c] += 1
            eps = acc / count[None, :, None, None, None]
            cond = eps[1]
            eps = eps[0] + scale * (eps[1] - eps[0])
            if guidance_rescale:  # diffusers' rescale_noise_cfg, over every element of the job's output
                eps = guidance_rescale * eps * cond.std() / eps.std() + (1 - guidance_rescale) * eps
            a_t = ac[t]
            a_prev = ac[t - ratio] if t - ratio >= 0 else 1.0
            if prediction_type == "v_prediction":  # the output is v: diffusers' DDIMScheduler.step
                v = eps
                x0 = np.sqrt(a_t) * x - np.sqrt(1 - a_t) * v
                eps = np.sqrt(1 - a_t) * x + np.sqrt(a_t) * v
            else:
                x0 = (x - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t)
            x = np.sqrt(a_prev) * x0 + np.sqrt(1 - a_prev) * eps
        out.append(x)
    return np.stack(out)


@pytest.fixture(scope="module")
def ours(params, models, inputs, draws):
    """Our sampler, X-Dyna's case: equal (empty-prompt) text, ControlNets once, with S-Face."""
    return np.asarray(sample_latents(params, **inputs, draws=draws, models=models, config=_cfg()))


# ----------------------------------------------------------------------------------------------
# tests

def test_blur_matches_torchvision_rule():
    x = np.random.default_rng(0).standard_normal((2, 3, 11, 7, 4)).astype(np.float32)
    got = np.asarray(gaussian_blur(jnp.asarray(x)))
    want = np.stack([np.stack([np_blur(f) for f in v]) for v in x])
    np.testing.assert_allclose(got, want, atol=2e-6)
    with pytest.raises(ValueError, match="reflect"):
        gaussian_blur(jnp.zeros((1, 4, 9, 4)))


def test_initial_latents_match_numpy(inputs, draws):
    sched = make_schedule(25)
    got = np.asarray(initial_latents(sched, inputs["ref_latent"], draws.mask, draws.noise))
    a = np.cumprod(1.0 - np.linspace(0.00085, 0.012, 1000))[961]
    for b in range(B):
        ref = inputs["ref_latent"][b].astype(np.float64)
        mixed = np.where(draws.mask[b], ref[None], np_blur(ref)[None])
        np.testing.assert_allclose(got[b], np.sqrt(a) * mixed + np.sqrt(1 - a) * draws.noise[b], atol=1e-6)


def test_sampler_matches_official_loop(params, models, inputs, draws, ours):
    want = reference_sample(params, models, uncond_text_states=inputs["text_states"], draws=draws,
                            steps=STEPS, scale=7.5, **inputs)
    assert ours.shape == (B, N, S, S, LAT) and ours.dtype == np.float32
    err = np.abs(ours - want).max()
    assert err <= TOL, f"max abs error {err:.3g} (latents up to {np.abs(want).max():.3g})"
    # nothing collapsed: the two jobs (other inputs, other offsets) end far apart
    assert np.abs(ours[0] - ours[1]).max() > 1e-2


def test_strength_runs_the_official_tail_from_a_less_noised_reference(params, models, inputs, draws):
    kept = STEPS - 1  # strength (STEPS - 1) / STEPS keeps all but the first (noisiest) step
    short = Draws(draws.mask, draws.noise, draws.offsets[:, :kept])
    cfg = _cfg(strength=(kept + 0.5) / STEPS)
    assert cfg.denoising_steps == kept
    got = np.asarray(sample_latents(params, **inputs, draws=short, models=models, config=cfg))
    want = reference_sample(params, models, uncond_text_states=inputs["text_states"], draws=short,
                            steps=STEPS, scale=7.5, strength=cfg.strength, **inputs)
    err = np.abs(got - want).max()
    assert err <= TOL, f"max abs error {err:.3g}"
    with pytest.raises(ValueError, match="draws.offsets"):  # offsets of every step, not of the kept ones
        sample_latents(params, **inputs, draws=draws, models=models, config=cfg)


def test_v_prediction_model_takes_the_v_step(params, models, inputs, draws, ours):
    """models.unet.prediction_type=v_prediction: the same networks' output read as v in every DDIM step."""
    vmodels = dataclasses.replace(models, unet=dataclasses.replace(models.unet, prediction_type="v_prediction"))
    got = np.asarray(sample_latents(params, **inputs, draws=draws, models=vmodels, config=_cfg()))
    want = reference_sample(params, vmodels, uncond_text_states=inputs["text_states"], draws=draws,
                            steps=STEPS, scale=7.5, prediction_type="v_prediction", **inputs)
    err = np.abs(got - want).max()
    assert err <= TOL, f"max abs error {err:.3g}"
    assert np.abs(got - ours).max() > 1e-1  # not the epsilon sampler's result


def test_zero_snr_trailing_and_guidance_rescale_match_the_reference(params, models, inputs, draws):
    """A v model on betas rescaled to zero terminal SNR, sampled with trailing timesteps (the first at t = 999,
    pure noise) and guidance rescale 0.7: the numpy loop with Lin et al.'s formulas written out."""
    vmodels = dataclasses.replace(models, unet=dataclasses.replace(models.unet, prediction_type="v_prediction",
                                                                   rescale_betas_zero_snr=True))
    cfg = _cfg(timestep_spacing="trailing", guidance_rescale=0.7)
    got = np.asarray(sample_latents(params, **inputs, draws=draws, models=vmodels, config=cfg))
    want = reference_sample(params, vmodels, uncond_text_states=inputs["text_states"], draws=draws, steps=STEPS,
                            scale=7.5, prediction_type="v_prediction", zero_snr=True, trailing=True,
                            guidance_rescale=0.7, **inputs)
    err = np.abs(got - want).max()
    assert err <= TOL, f"max abs error {err:.3g}"
    # the rescale did something: the same reference loop without it ends far from our result (the reference's
    # model calls are compiled already, a second sampler program would not be)
    plain = reference_sample(params, vmodels, uncond_text_states=inputs["text_states"], draws=draws, steps=STEPS,
                             scale=7.5, prediction_type="v_prediction", zero_snr=True, trailing=True, **inputs)
    assert np.abs(got - plain).max() > 1e-2


def test_sampler_with_different_uncond_text_matches_official_loop(params, models, inputs, draws):
    text_uc = np.random.default_rng(5).standard_normal(inputs["text_states"].shape).astype(np.float32)
    got = np.asarray(sample_latents(params, **inputs, uncond_text_states=text_uc, draws=draws, models=models,
                                    config=_cfg(controlnet_once=False)))
    want = reference_sample(params, models, uncond_text_states=text_uc, draws=draws, steps=STEPS, scale=7.5,
                            **inputs)
    assert np.abs(got - want).max() <= TOL
    # controlnet_once is only an allowance: with unequal texts both halves run, the same program
    again = np.asarray(sample_latents(params, **inputs, uncond_text_states=text_uc, draws=draws, models=models,
                                      config=_cfg(controlnet_once=True)))
    np.testing.assert_array_equal(again, got)


@pytest.fixture(scope="module")
def pose_only(params, models, inputs, draws):
    """The pose-only scripts' case (no S-Face ControlNet): inputs, and our float32 result."""
    pose_inputs = dict(inputs, face=None)
    pose_params = {k: v for k, v in params.items() if k != "face_controlnet"}
    got = np.asarray(sample_latents(pose_params, **pose_inputs, draws=draws, models=models, config=_cfg()))
    return pose_params, pose_inputs, got


def test_pose_only_matches_official_loop(models, draws, pose_only, ours):
    pose_params, pose_inputs, got = pose_only
    want = reference_sample(pose_params, models, uncond_text_states=pose_inputs["text_states"], draws=draws,
                            steps=STEPS, scale=7.5, **pose_inputs)
    assert np.abs(got - want).max() <= TOL
    assert np.abs(got - ours).max() > 1e-2  # the face ControlNet did count in the S-Face run


def test_bf16_compute_is_a_model_config_option(models, draws, pose_only):
    pose_params, pose_inputs, f32 = pose_only
    bf16 = dataclasses.replace(
        models, **{k: dataclasses.replace(getattr(models, k), dtype="bfloat16") for k in ("unet", "pose_controlnet")})
    got = sample_latents(pose_params, **pose_inputs, draws=draws, models=bf16, config=_cfg())
    assert got.dtype == jnp.float32  # the loop state stays float32; only the networks compute in bf16
    err = float(np.abs(np.asarray(got) - f32).max())
    assert 1e-4 < err <= 0.01 * np.abs(f32).max(), err


def test_controlnet_once_equals_both_halves(params, models, inputs, draws, ours):
    both = np.asarray(sample_latents(params, **inputs, draws=draws, models=models,
                                     config=_cfg(controlnet_once=False)))
    # not bit-equal: batch B and 2B ControlNet programs round differently, and the loop amplifies it
    assert np.abs(both - ours).max() <= TOL


def test_second_batch_does_not_recompile(params, models, inputs, draws, ours):
    assert _compiles["_denoise_loop"] >= 1  # the listener sees compiles (the first batch's)
    before = _compiles["_denoise_loop"]
    rng = np.random.default_rng(9)
    other_inputs = {k: (v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)) for k, v in inputs.items()}
    # jax arrays this time (numpy before), another seed and guidance scale: still the same program
    other = make_draws(job_keys([7, 8]), frames=N, latent_shape=(S, S, LAT), steps=STEPS)
    out = np.asarray(sample_latents(params, **other_inputs, draws=other, models=models,
                                    config=_cfg(guidance_scale=5.0, seed=123)))
    assert _compiles["_denoise_loop"] == before
    assert out.shape == ours.shape and np.isfinite(out).all() and np.abs(out - ours).max() > 1e-2


def _count_eqns(jaxpr) -> int:
    """Equations of a jaxpr, those of nested jaxprs (scan bodies, pjit calls) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += 1
        for v in eqn.params.values():
            for sub in (v if isinstance(v, (tuple, list)) else (v,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    n += _count_eqns(inner)
    return n


def test_trace_does_not_grow_with_video_length(params, models):
    """Windows are a scan over in-graph index arrays: 20 frames (2 windows a step) and 44 (4 windows)
    trace to the same number of operations."""
    pose_params = {k: v for k, v in params.items() if k != "face_controlnet"}
    d, n_ip = models.unet.cross_attention_dim, models.unet.num_ip_tokens
    sds = jax.ShapeDtypeStruct
    loop = functools.partial(pipeline._denoise_loop, models=models, size=16, overlap=4, do_cfg=True, cn_once=True)

    def eqns(frames):
        lat = sds((B, frames, S, S, LAT), jnp.float32)
        jaxpr = jax.make_jaxpr(loop)(
            pose_params, make_schedule(STEPS), jnp.float32(7.5), jnp.float32(1.0), sds((B, S, S, LAT), jnp.float32),
            sds((B, 77, d), jnp.float32), sds((B, 77, d), jnp.float32), sds((B, n_ip, d), jnp.float32),
            sds((B, n_ip, d), jnp.float32), sds((B, frames, 8 * S, 8 * S, 3), jnp.float32), None,
            Draws(mask=sds(lat.shape, bool), noise=lat, offsets=sds((B, STEPS), jnp.int32)))
        return _count_eqns(jaxpr.jaxpr)

    n20 = eqns(20)
    assert n20 > 1000 and n20 == eqns(44)  # > 1000: the networks inside the scans were counted


def test_sharded_equals_unsharded(params, models, inputs, draws, ours):
    mesh = sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=1, tensor=4))
    specs = {}
    for name in params:
        module = xdyna.module_of(getattr(models, name))
        specs[name] = sharding.param_shardings(logical_axes(module), param_shapes(module), mesh)
    sharded_params = sharding.shard(params, specs)
    got = sample_latents(sharded_params, **inputs, draws=draws, models=models, config=_cfg(), mesh=mesh)
    assert got.sharding.spec[0] is not None  # the batch stays split over the data axis
    assert np.abs(np.asarray(got) - ours).max() <= TOL  # tensor-split matmuls round differently


def test_make_draws_per_job_and_streams():
    keys = job_keys([3, 4, 5])
    d = make_draws(keys, frames=N, latent_shape=(S, S, LAT), steps=STEPS)
    assert d.mask.shape == (3, N, S, S, LAT) and d.mask.dtype == bool
    assert d.noise.shape == (3, N, S, S, LAT) and d.offsets.shape == (3, STEPS)
    assert 0.4 < float(d.mask.mean()) < 0.6 and int(d.offsets.min()) >= 0 and int(d.offsets.max()) <= 15
    one = make_draws(job_keys([4]), frames=N, latent_shape=(S, S, LAT), steps=STEPS)
    for a, b in zip(one, d):  # a job's draws do not depend on its batch
        np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[1]))
    post = jax.random.key_data(stream_key(keys, "posterior"))
    assert not np.array_equal(post, jax.random.key_data(stream_key(keys, "noise")))
    with pytest.raises(ValueError, match="stream"):
        stream_key(keys, "nope")


def test_normalize_condition_is_clip_global():
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 0.3, (2, 3, 4, 5, 3)).astype(np.float32)
    got = np.asarray(normalize_condition(x))
    for b in range(2):  # one clip per job: min and max over frames, pixels and channels together
        np.testing.assert_allclose(got[b], (x[b] - x[b].min()) / (x[b].max() - x[b].min()), atol=1e-6)
    assert got[0].min() == 0 and got[0].max() == 1
    assert np.all(np.asarray(normalize_condition(np.full((3, 4, 4, 3), -1.0))) == 0)


def test_to_uint8_truncates_like_the_official_writer():
    x = np.array([0.0, 0.999 / 255, 1.6 / 255, 1.0, 1.2, -0.1], np.float32)
    assert np.asarray(to_uint8(x)).tolist() == [0, 0, 1, 255, 255, 0]
    assert np.asarray(to_uint8(x, round=True)).tolist() == [0, 1, 2, 255, 255, 0]


def test_bad_inputs_raise(params, models, inputs, draws):
    bad = draws._replace(offsets=draws.offsets[:, :2])
    with pytest.raises(ValueError, match="draws.offsets"):
        sample_latents(params, **inputs, draws=bad, models=models, config=_cfg())
    no_face = {k: v for k, v in params.items() if k != "face_controlnet"}
    with pytest.raises(ValueError, match="face_controlnet"):
        sample_latents(no_face, **inputs, draws=draws, models=models, config=_cfg())
