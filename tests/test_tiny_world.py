"""The tiny world (world/generator.py) and its recipe (world/recipe.py): properties of the drawn clips,
the held-out split by construction, the exact figure masks, and the recipe's first stage at a shortened length."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml

from helpers import CONFIGS, REPO_ROOT, cpu_env
from xdyna_jax.world import generator as world
from xdyna_jax.world.source import synthetic_batch

H = W = 64


def test_a_clip_is_a_pure_function_of_seed_split_index_and_rows_do_not_matter():
    a = world.world_clip(3, 7, 3, H, W, 0.3, "train")
    b = world.world_clip(3, 7, 3, H, W, 0.3, "train")
    for k in ("frames", "pose", "face", "is_scene"):
        np.testing.assert_array_equal(a[k], b[k])
    full = synthetic_batch(3, 2, 4, 2, H, W, 0.3)
    part = synthetic_batch(3, 2, 4, 2, H, W, 0.3, rows=slice(2, 4))  # host 1 of 2
    for k in full:
        np.testing.assert_array_equal(full[k][2:], part[k])
    assert full["frames"].shape == (4, 3, H, W, 3) and full["frames"].dtype == np.uint8
    assert full["pose"].shape == (4, 2, H, W, 3) and full["face"].shape == (4, 2, H, W, 6)
    assert not np.array_equal(synthetic_batch(3, 3, 4, 2, H, W, 0.3)["frames"], full["frames"])


def test_train_and_test_figures_are_disjoint_by_construction():
    tr, te = set(world.split_figures("train")), set(world.split_figures("test"))
    assert not tr & te and tr | te == set(range(world.N_FIGURES))
    assert te == set(range(0, world.N_FIGURES, world.TEST_EVERY))
    # every id is a different look, so "other figures" means other clothes/skin, not only another number
    looks = {(tuple(np.round(v["shirt"])), tuple(np.round(v["trouser"])), v["texture"], tuple(np.round(v["skin"])))
             for v in map(world.figure_identity, range(world.N_FIGURES))}
    assert len(looks) == world.N_FIGURES
    # the clips of each split draw only their own figures, and the same (seed, index) gives other pictures
    for i in range(40):
        a = world.world_clip(0, i, 1, 32, 32, 0.2, "train")
        b = world.world_clip(0, i, 1, 32, 32, 0.2, "test")
        assert a["figure"] in tr or a["figure"] == -1
        assert b["figure"] in te or b["figure"] == -1
        assert not np.array_equal(a["frames"], b["frames"])
    with pytest.raises(ValueError, match="split='val'"):
        world.world_clip(0, 0, 1, 32, 32, 0.0, "val")


@pytest.mark.parametrize("kind", world.BACKGROUNDS)
def test_moving_backgrounds_move_and_still_ones_do_not(kind):
    for seed in range(4):
        bg = world.background(np.random.default_rng(seed), kind, 6, H, W)
        assert bg.shape == (6, H, W, 3) and bg.min() >= 0 and bg.max() <= 255
        change = np.abs(np.diff(bg, axis=0)).mean(axis=(1, 2, 3))  # per frame pair, grey levels
        if kind == "still":
            assert change.max() == 0
        else:  # every frame-to-frame step changes the picture by a visible amount
            assert change.min() > 1.0, (kind, seed, change)


def test_scene_clips_have_an_empty_skeleton_and_face_and_figures_have_both():
    scene = world.world_clip(1, 0, 3, H, W, 1.0)
    assert scene["is_scene"] and scene["figure"] == -1
    assert not scene["pose"].any() and not scene["face"].any()
    fig = world.world_clip(1, 0, 3, H, W, 0.0)
    assert not fig["is_scene"] and fig["figure"] >= 0
    for k in range(3):  # each frame: a skeleton, local eye/mouth patches and the face crop
        assert fig["pose"][k].any() and fig["face"][k, ..., :3].any() and fig["face"][k, ..., 3:].any()
    batch = synthetic_batch(5, 0, 40, 1, 32, 32, 0.25)
    n = int(batch["is_scene"].sum())
    assert 3 <= n <= 18  # ~10 of 40 at scene_ratio 0.25 (binomial sd 2.7)
    assert not batch["pose"][batch["is_scene"]].any()


def test_the_test_reference_is_the_first_frame_and_the_train_reference_another_phase():
    te = world.world_clip(2, 4, 3, H, W, 0.0, "test")
    np.testing.assert_array_equal(te["frames"][0], te["frames"][1])
    tr = world.world_clip(2, 4, 3, H, W, 0.0, "train")
    assert np.abs(tr["frames"][0].astype(int) - tr["frames"][1]).mean() > 0.5


def test_face_landmarks_follow_the_mouth_and_eyes():
    r = 10.0
    closed = world.face68(50, 50, r, eye_open=0.0, mouth_open=0.0)
    opened = world.face68(50, 50, r, eye_open=1.0, mouth_open=1.0)
    # outer lip ring: 12 points from angle pi in 30-degree steps; 51 and 57 are at -+90 degrees,
    # half-height (0.03 + 0.17 m) r: 0.3 px shut, 2.0 px open
    for pts, half in ((closed, 0.3), (opened, 2.0)):
        assert abs(pts[51, 1] - pts[57, 1]) == pytest.approx(2 * half)
        # eye ring: 6 points, 37 at 120 degrees: its height above the centre is (0.02 + 0.1 e) r sin(120)
    assert abs(opened[37, 1] - (50 - 0.3 * r)) == pytest.approx(0.12 * r * np.sin(np.radians(120)))
    assert abs(closed[37, 1] - (50 - 0.3 * r)) == pytest.approx(0.02 * r * np.sin(np.radians(120)))
    # and the S-Face maps of a clip change from frame to frame (eyes, mouth and body move)
    fig = world.world_clip(0, 3, 4, 128, 128, 0.0)
    assert np.abs(np.diff(fig["face"][..., :3].astype(int), axis=0)).mean() > 0


def test_the_recipe_first_stage_runs_shortened_and_is_skipped_when_re_run(tmp_path):
    """``python -m xdyna_jax.world.recipe --stages vae`` with a 16-channel VAE at 32x32 for 2 steps."""
    short = ["train.steps=2", "train.save_every=1", "train.log_every=1", "train.batch_size=2", "train.height=32",
             "train.width=32", "train.warmup_steps=0", "train.init=random",
             "train.he_init=[]", "train.vae_logvar_init=null",  # both rescale the models' own init, skipped here
             "models.vae.block_out_channels=[16,16,16,16]"]
    cmd = [sys.executable, "-m", "xdyna_jax.world.recipe", "--workdir", str(tmp_path / "runs"),
           "--stages", "vae"] + [a for o in short for a in ("--vae", o)]
    env = cpu_env(1)  # one CPU device, as `make tiny-world` runs
    env["PYTHONPATH"] = str(REPO_ROOT)
    first = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    assert "[tiny-world] stage 1/1: vae" in first.stdout and "vae: finished" in first.stdout
    bundle = tmp_path / "runs" / "vae_bundle"
    assert json.loads((bundle / "bundle.json").read_text())["parts"]
    losses = [json.loads(s)["loss"] for s in (tmp_path / "runs" / "vae" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert again.returncode == 0 and "vae: done" in again.stdout and "skipped" in again.stdout
    bad = subprocess.run(cmd[:-2 * len(short)] + ["--stages", "vae,nope"], capture_output=True, text=True,
                         env=env, cwd=REPO_ROOT, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_the_recipe_runs_its_stages_in_order(tmp_path, monkeypatch):
    """vae -> full -> tune -> export, whatever order --stages names them in: a stage whose predecessor has not
    finished is a named error; full starts from the vae bundle at the latent scale measured on it, tune from the
    full bundle at the scale that stage trained with; a stage is stale once its predecessor has been re-run."""
    from helpers import tiny_models_config
    from xdyna_jax import config as config_lib
    from xdyna_jax.cli import UserError
    from xdyna_jax.world import recipe

    assert recipe.STAGES == ("vae", "full", "tune", "export")
    argv = ["--workdir", str(tmp_path), "--out", str(tmp_path / "w"), "--stages"]
    for stage, missing, prev in [("full", "vae_bundle", "vae"), ("tune", "full_bundle", "full"),
                                 ("export", "tune_bundle", "tune"), ("export,full", "vae_bundle", "vae")]:
        with pytest.raises(UserError, match=rf"--stages {stage.split(',')[-1]}: .*{missing} is not finished "
                                            rf"\(run the {prev} stage first\)"):
            recipe.main(argv + [stage])
    ran = []
    monkeypatch.setattr(recipe, "run_stage", lambda name, cmd, bundle, out=print, after=None:
                        ran.append((name, cmd, bundle, after)))
    # a finished vae stage whose latent scale was measured as 0.77: full runs from it at 0.77
    vae = tmp_path / "vae_bundle"
    vae.mkdir()
    (vae / "latent_scale.json").write_text(json.dumps({"scaling_factor": 0.77}))
    (vae / recipe.STAMP).write_text(json.dumps({"command": ["x"], "seconds": 1.0, "after": None}))
    recipe.main(argv + ["full", "--full", "train.steps=3"])
    ((name, full, bundle, after),) = ran
    assert name == "full" and bundle == tmp_path / "full_bundle" and after == {"command": ["x"], "seconds": 1.0,
                                                                              "after": None}
    assert full[full.index("--config") + 1].endswith("train_world_full.yaml")
    assert full[full.index("--export") + 1] == str(tmp_path / "full_bundle")
    assert f"train.init={vae}" in full and "models.vae.scaling_factor=0.77" in full and full[-1] == "train.steps=3"
    # a finished full stage whose models were trained at latent scale 0.66: tune runs from it at 0.66
    fb = tmp_path / "full_bundle"
    fb.mkdir()
    cfg = tiny_models_config()
    cfg = dataclasses.replace(cfg, vae=dataclasses.replace(cfg.vae, scaling_factor=0.66))
    (fb / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
    full_stamp = {"command": full[1:], "after": after}
    (fb / recipe.STAMP).write_text(json.dumps(full_stamp))
    ran.clear()
    recipe.main(argv + ["tune", "--tune", "train.steps=2"])
    ((name, tune, bundle, tafter),) = ran
    assert name == "tune" and bundle == tmp_path / "tune_bundle" and tafter == full_stamp
    assert tune[tune.index("--config") + 1].endswith("train_world_tune.yaml")
    assert f"train.init={fb}" in tune and "models.vae.scaling_factor=0.66" in tune and tune[-1] == "train.steps=2"
    # the stamp ties a finished stage to its predecessor's stamp
    assert recipe._done(fb, full, after)
    assert not recipe._done(fb, full, {**after, "seconds": 2.0})  # vae was re-run
    assert not recipe._done(fb, full[:-1], after)  # other overrides


def test_the_world_configs_load_and_train_pose_only_x_dyna_at_zero_terminal_snr():
    from xdyna_jax.training import config as train_config

    vae = train_config.load(CONFIGS / "train_world_vae.yaml")
    full = train_config.load(CONFIGS / "train_world_full.yaml")
    assert vae.train.stage == "vae" and full.train.stage == "full+resampler"
    assert vae.models == full.models and (vae.train.height, vae.train.width) == (128, 128)
    assert vae.data.split == full.data.split == "train"
    from xdyna_jax.cli import UserError

    with pytest.raises(UserError, match="data.split"):
        train_config.load(CONFIGS / "train_world_full.yaml", ["data.split=val"])
    m = full.models
    assert m.face_controlnet is None and m.unet.prediction_type == "v_prediction" and m.unet.rescale_betas_zero_snr
    # 8 groups: no GroupNorm of the denoiser normalises a single channel (32-channel levels: 4 per group)
    assert {m.unet.norm_num_groups, m.unet.motion_module_kwargs.norm_num_groups, m.pose_controlnet.norm_num_groups} == {8}
    assert min(m.unet.block_out_channels) // 8 >= 4
    assert full.data.source == "pool" and full.train.ema_decay > 0 and full.train.timestep_shift > 1
    tune = train_config.load(CONFIGS / "train_world_tune.yaml")
    assert tune.models == full.models and tune.train.stage == full.train.stage and tune.data.source == "pool"
    assert tune.train.timestep_shift < 1 and tune.train.ema_decay > 0
    # the embedded sampler starts from pure noise at the schedule's last step, where training's noisiest is
    raw = yaml.safe_load((CONFIGS / "sample_tiny_world.yaml").read_text())["sample"]
    assert raw["strength"] == 1.0 and raw["timestep_spacing"] == "trailing"
    from xdyna_jax.sampling.ddim import make_schedule

    sched = make_schedule(raw["steps"], timestep_spacing="trailing", rescale_zero_snr=True)
    assert int(sched.timesteps[0]) == 999 and float(sched.alphas_cumprod[999]) == 0.0


def test_a_figure_mask_is_exactly_the_pixels_the_figure_changed():
    """``truth=True`` adds exact masks and background plates and draws nothing else differently."""
    for split in ("train", "test"):
        a = world.world_clip(4, 2, 3, 96, 96, 0.0, split)
        b = world.world_clip(4, 2, 3, 96, 96, 0.0, split, truth=True)
        for k in ("frames", "pose", "face"):
            np.testing.assert_array_equal(a[k], b[k])
        changed = (b["frames"] != b["plates"]).any(-1)
        assert b["masks"].shape == changed.shape == (4, 96, 96)
        assert not (changed & ~b["masks"]).any()  # nothing outside the mask was drawn on
        # inside it, only pixels whose figure colour equals the background's stay unchanged: a handful
        assert (b["masks"] & ~changed).sum() < 0.01 * b["masks"].sum()
        assert 0.03 < b["masks"].mean() < 0.5
    te = world.world_clip(4, 2, 3, 96, 96, 0.0, "test", truth=True)
    np.testing.assert_array_equal(te["plates"][0], te["plates"][1])  # the reference is frame 1, its plate too
    scene = world.world_clip(1, 0, 2, 32, 32, 1.0, truth=True)
    assert not scene["masks"].any() and np.array_equal(scene["plates"], scene["frames"])


def test_the_export_is_bf16_official_files_that_convert_back_to_the_bundle(tmp_path):
    import jax.numpy as jnp
    from flax.traverse_util import flatten_dict

    from helpers import random_tree, tiny_models_config
    from xdyna_jax import config as config_lib
    from xdyna_jax.models import xdyna
    from xdyna_jax.porting.bundle import save_bundle
    from xdyna_jax.porting.bundle import load_weights
    from xdyna_jax.world.recipe import export_weights

    cfg = tiny_models_config()
    params = random_tree(xdyna.param_shapes(cfg), seed=3)
    save_bundle(tmp_path / "b", params, cfg)
    out = tmp_path / "w"
    files = export_weights(tmp_path / "b", out, out=lambda *_: None)
    assert sum(f.stat().st_size for f in files) < 25e6
    assert config_lib.load(xdyna.ModelsConfig, out / "config.yaml") == cfg
    back, back_cfg = load_weights(out)
    assert back_cfg == cfg
    # every param is the bf16 rounding of the bundle's float32 value (independently rounded here)
    want, got = flatten_dict(params, sep="/"), flatten_dict(back, sep="/")
    assert set(want) == set(got)
    for k, v in want.items():
        np.testing.assert_array_equal(np.asarray(got[k], np.float32),
                                      np.asarray(v).astype(jnp.bfloat16).astype(np.float32), err_msg=k)


def test_the_pool_source_serves_pre_encoded_windows_of_drawn_clips():
    """data.source=pool: every row is a window of a drawn clip; its moments are the frozen VAE's encoding of those
    very frames (encoded again here, one frame at a time), its CLIP states the reference's, its skeletons the
    window's; batches are a pure function of (seed, step)."""
    import jax

    from helpers import MICRO_TRAIN
    from xdyna_jax.models import xdyna
    from xdyna_jax.models.clip_preprocess import clip_pixel_values, default_image_processor
    from xdyna_jax.models.vae import AutoencoderKL
    from xdyna_jax.training import config as train_config
    from xdyna_jax.world.source import PoolSource

    run = train_config.load(CONFIGS / "train_tiny.yaml", [*MICRO_TRAIN, "data.source=pool", "data.pool_clips=3",
                                                          "data.pool_frames=3", "train.frames=2", "train.batch_size=4",
                                                          "data.scene_ratio=0"])
    params = xdyna.init_params(run.models, jax.random.key(0), parts=["vae", "image_encoder"])
    pool = PoolSource(run, params, run.models, log=lambda *_: None)
    a, b = pool.batch(5), pool.batch(5)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert a["vae_moments"].shape == (4, 3, 4, 4, 2 * run.models.vae.latent_channels)
    assert a["pose"].shape == (4, 2, 32, 32, 3) and "face" not in a and "frames" not in a
    assert not all(np.array_equal(a["pose"], pool.batch(s)["pose"]) for s in range(6, 9))
    vae = AutoencoderKL(run.models.vae)
    proc = default_image_processor(run.models.image_encoder.image_size)
    found = 0
    for c in range(3):
        clip = world.world_clip(run.train.seed, c, 3, 32, 32, 0.0, "train")
        for s in range(2):
            for row in range(4):
                if not np.array_equal(a["pose"][row], clip["pose"][s:s + 2]):
                    continue
                found += 1
                frames = clip["frames"][[0, 1 + s, 2 + s]].astype(np.float32) / 127.5 - 1.0
                for f in range(3):
                    mean, logvar = vae.apply({"params": params["vae"]}, frames[f:f + 1], method="encode")
                    want = np.concatenate([np.asarray(mean), np.asarray(logvar)], -1)[0]
                    np.testing.assert_allclose(a["vae_moments"][row, f].astype(np.float32), want, atol=2e-2, rtol=1e-2)
                hidden = xdyna.clip_hidden_states(params, clip_pixel_values([clip["frames"][0]], proc), cfg=run.models)
                np.testing.assert_allclose(a["clip_hidden"][row], np.asarray(hidden)[0], atol=1e-4)
    assert found == 4  # every row is found among the pool's clips and windows
