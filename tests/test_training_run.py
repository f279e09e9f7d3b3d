"""The host loop in-process on one device: metrics, TensorBoard, Orbax checkpoints without frozen params,
frozen params never updated, refused restores (stage / config) and the NaN stop."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from helpers import CONFIGS, MICRO_TRAIN
from xdyna_jax.cli import UserError
from xdyna_jax.sharding import make_mesh
from xdyna_jax.training import checkpoint, loop
from xdyna_jax.world.source import make_source
from xdyna_jax.training import config as train_config

# quick: the micro networks of helpers.MICRO_TRAIN, batch 2, checkpoints every 2 steps, one device
SMALL = [*MICRO_TRAIN, "train.batch_size=2", "train.save_every=2", "train.steps=3", "mesh.data=1", "mesh.fsdp=1",
         "mesh.tensor=1"]


def small_run(*extra):
    return train_config.load(CONFIGS / "train_tiny.yaml", [*SMALL, *extra])


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    run = small_run()
    workdir = tmp_path_factory.mktemp("train")
    lines = []
    summary = loop.train(run, workdir, out=lines.append, source=make_source)
    return run, workdir, summary, lines


def test_metrics_tensorboard_and_checkpoints(first):
    run, workdir, summary, lines = first
    recs = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert np.isfinite(r["loss"]) and r["loss"] > 0 and r["grad_norm"] > 0
        assert r["learning_rate"] == pytest.approx(1e-3) and r["samples_per_s"] > 0
    assert list((workdir / "tb").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
    assert lines[-1].startswith("loss: first") and lines[-1].endswith(str(workdir / "checkpoints" / "3"))


def test_checkpoint_holds_only_trainable(first):
    import orbax.checkpoint as ocp

    run, workdir, summary, _ = first
    with ocp.StandardCheckpointer() as c:
        saved = c.restore(workdir / "checkpoints" / "3" / "state")
    assert set(saved) == {"step", "trainable", "opt_state"}
    want = set(flatten_dict(summary["state"].trainable, sep="/"))
    assert set(flatten_dict(saved["trainable"], sep="/")) == want
    assert all(p.startswith(("unet/", "pose_controlnet/")) for p in want)
    assert not any(p.startswith(("vae/", "resampler/", "text_encoder/")) for p in want)
    assert not any(p.startswith("unet/") and "/attn1/to_q/" in p for p in want)  # the UNet stays frozen
    assert int(saved["step"]) == 3
    meta = json.loads((workdir / "checkpoints" / "3" / "meta" / "metadata").read_text())
    assert meta["stage"] == run.train.stage and meta["data"] == {"source": "synthetic", "next_step": 3}


def test_frozen_params_unchanged_trainable_updated(first):
    run, _, summary, _ = first
    init = loop.initial_params(run, make_mesh(run.mesh, loop.mesh_devices(run.mesh)))
    from xdyna_jax.training.state import split

    t0, f0 = split(init, run.train.stage)
    final = summary["state"]
    for a, b in zip(jax.tree.leaves(f0), jax.tree.leaves(final.frozen)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    changed = [not np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(t0), jax.tree.leaves(final.trainable))]
    assert np.mean(changed) > 0.9  # AdamW moves (nearly) every trainable leaf


def test_restore_of_other_stage_fails_naming_it(first):
    _, workdir, _, _ = first
    with pytest.raises(UserError, match=r"train\.stage='adapter\+pose_controlnet'.*train\.stage='adapter'"):
        loop.train(small_run("train.stage=adapter", "train.steps=5"), workdir, out=lambda *_: None, source=make_source)


def test_restore_of_other_config_fails_naming_the_key(first):
    _, workdir, _, _ = first
    with pytest.raises(UserError, match=r"train\.learning_rate: 0\.001 in the checkpoint, 0\.01 now"):
        loop.train(small_run("train.learning_rate=1e-2", "train.steps=5"), workdir, out=lambda *_: None, source=make_source)


def test_nan_stops_and_keeps_last_good_checkpoint(first, tmp_path):
    run = small_run("train.debug_nan_step=3", "train.steps=4")
    with pytest.raises(loop.NonFiniteLoss, match=r"loss is nan at step 3.*last good checkpoint is step 2"):
        loop.train(run, tmp_path, out=lambda *_: None, source=make_source)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["2"]
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    # the kept checkpoint restores, and its params are finite
    mgr = checkpoint.make_manager(tmp_path / "checkpoints")
    try:
        from xdyna_jax.training.state import init_state

        mesh = make_mesh(run.mesh, loop.mesh_devices(run.mesh))
        st = init_state(run, mesh, loop.initial_params(run, mesh))
        restored, _ = checkpoint.restore_latest(mgr, st, small_run("train.steps=4"))
    finally:
        mgr.close()
    assert int(restored.step) == 2
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.trainable))
