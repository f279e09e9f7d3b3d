"""The composed X-Dyna model (models/xdyna.py): denoise against the official composition re-derived
step by step, the conditioning encoders against their formulas, and sharded init from birth."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from einops import rearrange
from helpers import random_tree, tiny_models_config

from xdyna_jax.models import ControlNet, Resampler, UNet3D, xdyna
from xdyna_jax.models.clip import CLIPTextModel, CLIPVisionModel
from xdyna_jax.models.vae import AutoencoderKL
from xdyna_jax.sharding import MeshConfig, make_mesh

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
CFG = tiny_models_config()
B, F, LAT = 2, 3, 8  # latent 8x8 = 64x64 pixels


@functools.lru_cache(maxsize=None)
def _params(seed=0):
    return random_tree(xdyna.param_shapes(CFG), seed)


def _inputs(seed=1, face=True):
    rng = np.random.default_rng(seed)
    n = lambda *s: rng.standard_normal(s).astype(np.float32)
    u = lambda *s: rng.uniform(0, 1, s).astype(np.float32)
    d = CFG.unet.cross_attention_dim
    return dict(window=n(B, 1 + F, LAT, LAT, 4), t=np.array([961.0, 41.0], np.float32),
                text_states=n(B, 77, d), image_tokens=n(B, CFG.unet.num_ip_tokens, d),
                pose=u(B, F, 8 * LAT, 8 * LAT, 3), face=u(B, F, 8 * LAT, 8 * LAT, 6) if face else None)


_unet_eps = jax.jit(functools.partial(xdyna.unet_eps, cfg=CFG))  # compiled once, for both parametrizations


@functools.lru_cache(maxsize=None)
def _jit_apply(module_cls, cfg):
    """``module_cls(cfg).apply``, jitted once per network: the reference's own network calls, not op by op (eager
    tiny networks take minutes); the composition around them stays numpy."""
    return jax.jit(module_cls(cfg).apply)


def _official_composition(params, window, t, text_states, image_tokens, pose, face):
    """Spec §1.7 steps 1-5 as the official pipeline writes them: frames folded into the batch
    "(b f)", each ControlNet on the noisy frames with per-frame copies of the text states (no image
    tokens), residuals unfolded to (b, f), an all-zero frame prepended for the reference, pose and
    face summed, then the UNet on all frames with text + image tokens."""
    noisy = window[:, 1:]
    n = B * F
    folded = rearrange(noisy, "b f h w c -> (b f) h w c")
    text_n = np.repeat(text_states, F, axis=0)
    t_n = np.repeat(t, F)
    total = None
    for part, cond in (("pose_controlnet", pose), ("face_controlnet", face)):
        if cond is None:
            continue
        down, mid = _jit_apply(ControlNet, getattr(CFG, part))(
            {"params": params[part]}, folded, t_n, text_n, rearrange(cond, "b f h w c -> (b f) h w c"))
        res = [np.asarray(r) for r in down] + [np.asarray(mid)]
        assert all(r.shape[0] == n for r in res)
        res = [rearrange(r, "(b f) h w c -> b f h w c", b=B) for r in res]
        res = [np.concatenate([np.zeros_like(r[:, :1]), r], axis=1) for r in res]
        total = res if total is None else [a + b for a, b in zip(total, res)]
    context = np.concatenate([text_states, image_tokens], axis=1)
    return _jit_apply(UNet3D, CFG.unet)({"params": params["unet"]}, window, t, context,
                                        down_residuals=total[:-1], mid_residual=total[-1])


@pytest.mark.parametrize("with_face", [True, False], ids=["pose+face", "pose-only"])
def test_denoise_matches_the_official_composition(with_face):
    params = _params()
    x = _inputs(face=with_face)
    got = jax.jit(functools.partial(xdyna.denoise, cfg=CFG))(params, **x)
    want = _official_composition(params, **x)
    assert got.shape == (B, 1 + F, LAT, LAT, 4)
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want))))
    assert err <= 1e-4, err
    # the ControlNets matter (their zero convs are random here), and so does the face one
    no_cn = _unet_eps(params, x["window"], x["t"], xdyna.context_states(x["text_states"], x["image_tokens"]))
    assert float(np.max(np.abs(np.asarray(no_cn) - np.asarray(want)))) > 1e-3


def test_controlnet_residuals_zero_reference_frame_and_sum():
    params = _params()
    x = _inputs()
    both = xdyna.controlnet_residuals(params, x["window"][:, 1:], x["t"], x["text_states"], x["pose"], x["face"],
                                      cfg=CFG)
    pose = xdyna.controlnet_residuals(params, x["window"][:, 1:], x["t"], x["text_states"], x["pose"], cfg=CFG)
    face_cfg = CFG  # face alone = the face ControlNet's own output, with the zero frame
    d_face, m_face = ControlNet(face_cfg.face_controlnet).apply(
        {"params": params["face_controlnet"]}, x["window"][:, 1:], x["t"], x["text_states"], x["face"])
    for r_both, r_pose, r_face in zip(both[0] + [both[1]], pose[0] + [pose[1]], list(d_face) + [m_face]):
        assert r_both.shape[1] == 1 + F
        assert not np.any(np.asarray(r_both[:, 0]))  # the reference frame never gets a residual
        np.testing.assert_allclose(np.asarray(r_both[:, 1:]), np.asarray(r_pose[:, 1:]) + np.asarray(r_face),
                                   atol=1e-5)
    with pytest.raises(ValueError, match="condition frames"):
        xdyna.controlnet_residuals(params, x["window"][:, 1:], x["t"], x["text_states"], x["pose"][:, :2], cfg=CFG)


def test_conditioning_encoders_follow_the_official_chain():
    params = _params()
    rng = np.random.default_rng(3)
    images = rng.uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    noise = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
    mean, logvar = AutoencoderKL(CFG.vae).apply({"params": params["vae"]}, images, method="encode")
    want = (np.asarray(mean) + np.exp(0.5 * np.asarray(logvar)) * noise) * 0.18215
    got = xdyna.reference_latent(params, images, noise=noise, cfg=CFG)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-5)

    s = CFG.image_encoder.image_size
    pix = rng.standard_normal((2, s, s, 3)).astype(np.float32)
    hidden = CLIPVisionModel(CFG.image_encoder).apply({"params": params["image_encoder"]}, pix,
                                                      output_hidden_states=True).hidden_states
    want = Resampler(CFG.resampler).apply({"params": params["resampler"]}, hidden[-2])  # penultimate layer
    np.testing.assert_allclose(np.asarray(xdyna.image_tokens(params, pix, cfg=CFG)), np.asarray(want), atol=1e-5)
    zeros = xdyna.image_tokens(params, np.zeros((3, s, s, 3), np.float32), cfg=CFG)
    np.testing.assert_allclose(np.asarray(xdyna.uncond_image_tokens(params, 3, cfg=CFG)), np.asarray(zeros), atol=0)

    ids = xdyna.empty_prompt_ids(CFG, batch=2)
    v = CFG.text_encoder.vocab_size
    assert ids.shape == (2, 77) and (ids[:, 0] == v - 2).all() and (ids[:, 1:] == v - 1).all()
    want = CLIPTextModel(CFG.text_encoder).apply({"params": params["text_encoder"]}, ids).last_hidden_state
    np.testing.assert_allclose(np.asarray(xdyna.text_states(params, ids, cfg=CFG)), np.asarray(want), atol=0)


def test_models_config_names_networks_that_do_not_fit():
    with pytest.raises(ValueError, match="text_encoder.hidden_size=32 does not fit unet.cross_attention_dim=48"):
        tiny_models_config(**{"text_encoder.hidden_size": 32})
    with pytest.raises(ValueError, match="resampler.embedding_dim=41 does not fit image_encoder.hidden_size=40"):
        tiny_models_config(**{"resampler.embedding_dim": 41})
    cfg = tiny_models_config(face_controlnet="null")
    assert "face_controlnet" not in cfg.parts()
    with pytest.raises(ValueError, match="no face_controlnet"):
        x = _inputs()
        xdyna.controlnet_residuals(_params(), x["window"][:, 1:], x["t"], x["text_states"], x["pose"], x["face"],
                                   cfg=cfg)


@needs8
def test_init_params_sharded_from_birth_tiny_values():
    """The leafwise init (models/leafwise_init.py) against each network's ``module.init`` as one jitted program:
    the same values (to an ulp: the one program may contract a multiply-add), on the same shardings."""
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    key = jax.random.key(7)
    parts = ("resampler", "vae")  # small inits: the tiny UNet's init as one program compiles for a minute
    sharded = xdyna.init_params(CFG, key, mesh, parts=parts)
    plain = xdyna.init_params(CFG, key, parts=parts)
    jitted = {name: fn(xdyna._part_key(key, name)) for name, fn in xdyna._init_programs(CFG, mesh, parts).items()}
    shardings = xdyna.param_shardings(CFG, mesh)
    for part in parts:
        assert jax.tree.structure(sharded[part]) == jax.tree.structure(jitted[part])
        for (path, a), b, c, want in zip(jax.tree_util.tree_leaves_with_path(sharded[part]),
                                         jax.tree.leaves(plain[part]), jax.tree.leaves(jitted[part]),
                                         jax.tree.leaves(shardings[part])):
            assert a.sharding.is_equivalent_to(want, a.ndim), path
            assert a.dtype == c.dtype and a.shape == c.shape, path
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=2e-7, atol=1e-9, err_msg=str(path))
    kernel = sharded["vae"]["decoder"]["up_blocks_0"]["resnets_0"]["conv1"]["kernel"]
    assert kernel.addressable_shards[0].data.size * 4 == kernel.size  # split four ways: never whole on a device


@needs8
def test_init_params_full_size_is_sharded_without_allocation():
    from xdyna_jax.models import ModelsConfig

    cfg = ModelsConfig.sd15()
    mesh = make_mesh(MeshConfig(data=1, fsdp=8))
    shapes = xdyna.init_params_shape(cfg, mesh)
    leaves = jax.tree.leaves(shapes)
    n = sum(int(np.prod(s.shape)) for s in leaves)
    assert n > 2_000_000_000  # UNet 1.4 B + 2 ControlNets + ViT-H + VAE + text encoder
    big = [s for s in leaves if s.size >= 1 << 20]
    split = [s for s in big if s.sharding.shard_shape(s.shape) != s.shape]
    assert len(split) == len(big), f"{len(big) - len(split)} of {len(big)} large params are not split"
    per_device = sum(int(np.prod(s.sharding.shard_shape(s.shape))) * s.dtype.itemsize for s in leaves)
    assert per_device < 0.2 * n * 4  # about an eighth of the float32 bytes on each of 8 devices


def test_adapter_queries_start_as_to_q():
    from xdyna_jax.models.new_layers import adapter_queries_from_to_q

    unet = _params()["unet"]
    seeded = adapter_queries_from_to_q(unet)
    attn1 = seeded["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]
    np.testing.assert_array_equal(attn1["to_q_ff"]["kernel"], attn1["to_q"]["kernel"])
    assert not np.array_equal(unet["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q_ff"]["kernel"],
                              attn1["to_q"]["kernel"])  # the input tree is left as it was
    n = sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(seeded) if "to_q_ff" in jax.tree_util.keystr(p))
    assert n == sum(1 for p, _ in jax.tree_util.tree_leaves_with_path(unet) if "to_q_ff" in jax.tree_util.keystr(p)) > 0
