"""The host loop in-process on one device: metrics (the norms checked by hand), TensorBoard, Orbax checkpoints
without frozen params, frozen params never updated, refused restores (stage / config), the NaN stop, the
evaluator and the held-out loss, the profile window, and the export built on the runtime."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from helpers import CONFIGS, MICRO_TRAIN
from xdyna_jax.cli import UserError
from xdyna_jax.sharding import make_mesh
from xdyna_jax.training import checkpoint, loop, runtime
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
        assert r["param_norm"] > 0 and r["update_norm"] > 0
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


def test_evaluator_runs_before_the_first_step_and_every_eval_every(tmp_path):
    """train.eval_every: the caller's evaluator sees the state before step 1 and after every eval_every steps; its
    values are records of their own in metrics.jsonl, which the loss readers skip."""
    seen = []

    def evaluator(run, params, models, log):
        assert "unet" in params and "vae" in params  # the full params, frozen parts included

        def fn(state):
            seen.append(int(state.step))
            return {"probe_x": float(state.step) * 2}
        return fn

    run = small_run("train.steps=4", "train.eval_every=2")
    loop.train(run, tmp_path, out=lambda *_: None, source=make_source, evaluator=evaluator)
    assert seen == [0, 2, 4]
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    probes = [(r["step"], r["probe_x"]) for r in recs if "probe_x" in r]
    assert probes == [(0, 0.0), (2, 4.0), (4, 8.0)]
    assert sorted(loop.read_losses(tmp_path / "metrics.jsonl")) == [1, 2, 3, 4]
    with pytest.raises(UserError, match="data.source=synthetic"):  # the world's source must be passed in
        loop.train(small_run("train.steps=1"), tmp_path / "x", out=lambda *_: None)


def _saved_trainable(workdir, step) -> dict[str, np.ndarray]:
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as c:
        saved = c.restore(workdir / "checkpoints" / str(step) / "state")["trainable"]
    return {k: np.asarray(v, np.float64) for k, v in flatten_dict(saved, sep="/").items()}


def test_param_and_update_norms_match_a_hand_computation(first):
    """Step 3's param_norm is the global L2 norm of checkpoint 3's trainable params and its update_norm that of
    checkpoint 3 - checkpoint 2 (float64 in numpy; the float32 sum p2 + u rounds u by ~1e-6 of itself)."""
    import optax

    _, workdir, summary, _ = first
    rec = {r["step"]: r for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())}[3]
    p2, p3 = _saved_trainable(workdir, 2), _saved_trainable(workdir, 3)
    want_param = np.sqrt(sum(np.sum(np.square(x)) for x in p3.values()))
    want_update = np.sqrt(sum(np.sum(np.square(p3[k] - p2[k])) for k in p3))
    assert rec["param_norm"] == pytest.approx(want_param, rel=1e-6)
    assert rec["param_norm"] == pytest.approx(float(optax.tree.norm(summary["state"].trainable)), rel=1e-6)
    assert rec["update_norm"] == pytest.approx(want_update, rel=1e-4)
    assert 0 < rec["update_norm"] < 0.1 * rec["param_norm"]  # an lr-1e-3 step on params of std 0.05, not the params


def test_eval_loss_on_held_out_batches(tmp_path):
    """train.eval_batches: eval_loss records of their own before step 1 and every eval_every steps; a fresh build
    draws the same held-out batches (the world's test split, not the training stream), so the restored params
    give the logged number again, twice; with an EMA the EMA is what is evaluated."""
    run = small_run("train.steps=4", "train.eval_every=2", "train.eval_batches=2")
    loop.train(run, tmp_path, out=lambda *_: None, source=make_source)
    recs = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in recs if "eval_loss" in r}
    assert sorted(evals) == [0, 2, 4]
    assert all(set(r) == {"step", "eval_loss"} for r in recs if "eval_loss" in r)
    assert sorted(loop.read_losses(tmp_path / "metrics.jsonl")) == [1, 2, 3, 4]  # the loss readers skip them
    assert all(np.isfinite(v) and v > 0 for v in evals.values()) and evals[4] != evals[0]
    rt = runtime.build(run, tmp_path, out=lambda *_: None, source=make_source)
    try:
        assert rt.start == 4 and rt.state.ema is None and len(rt.held_out) == 2
        train_batch = runtime.prepare_batch(make_source(run, None, None, None).batch(0), rt.models, run.train,
                                            rt.processor)
        assert not np.array_equal(rt.held_out[0]["pixels"], train_batch["pixels"])
        a, b = runtime.eval_loss(rt), runtime.eval_loss(rt)
        assert a == b
        assert a == pytest.approx(evals[4], rel=1e-6)
        fresh = runtime.build(run, tmp_path / "fresh", data=False, out=lambda *_: None)  # the step-0 state
        runtime.close(fresh)
        rt.state = rt.state._replace(ema=fresh.state.trainable)
        assert runtime.eval_loss(rt) == pytest.approx(evals[0], rel=1e-6)
    finally:
        runtime.close(rt)


def test_profile_window_writes_a_trace_and_stops_on_early_exit(first, tmp_path):
    """train.profile=0:1 traces step 1 into {workdir}/profile (TensorBoard's layout); a NaN stop inside a window
    still stops the trace (written, and a new trace may start)."""
    lines = []
    loop.train(small_run("train.steps=2", "train.profile=0:1"), tmp_path / "a", out=lines.append, source=make_source)
    traces = list((tmp_path / "a" / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0
    assert f"profile of steps 1 to 1: {tmp_path / 'a' / 'profile'}" in "\n".join(lines)
    with pytest.raises(loop.NonFiniteLoss):
        loop.train(small_run("train.debug_nan_step=2", "train.steps=4", "train.profile=0:10"), tmp_path / "b",
                   out=lambda *_: None, source=make_source)
    assert list((tmp_path / "b" / "profile").rglob("*.xplane.pb"))
    jax.profiler.start_trace(str(tmp_path / "c"))  # raises when a trace is still running
    jax.profiler.stop_trace()


def test_host_loop_keys_are_named_and_resumable():
    """train.profile and train.eval_batches: malformed values are named; both may change on resume and leave
    the compiled step alone."""
    from xdyna_jax import config as config_lib
    from xdyna_jax.training.step import step_key_config

    for bad in ["5", "a:b", "-1:2", "0:0", "1:2:3", "1.5:2"]:
        with pytest.raises(UserError, match=r"train\.profile=.*expected START:STEPS"):
            small_run(f"train.profile={bad}")
    with pytest.raises(UserError, match=r"train\.eval_batches=-1: expected an integer >= 0"):
        small_run("train.eval_batches=-1")
    with pytest.raises(UserError, match=r"train\.eval_batches=2 .*data\.source=dataset"):
        small_run("train.eval_batches=2", "data.source=dataset", "data.data_dir=/nowhere")
    a, b = small_run(), small_run("train.profile=3:2", "train.eval_batches=4", "train.eval_every=5")
    assert train_config.config_differences(config_lib.to_dict(a), b) == []
    assert step_key_config(a) == step_key_config(b)


def test_export_builds_the_runtime_without_data(first, tmp_path):
    """train.py's export_latest: the latest checkpoint's trainable params over the fresh frozen ones, as a
    bundle; a workdir without checkpoints is named."""
    import sys

    import orbax.checkpoint as ocp

    from helpers import REPO_ROOT

    sys.path.insert(0, str(REPO_ROOT))
    import train

    run, workdir, summary, _ = first
    out = train.export_latest(run, workdir, tmp_path / "bundle")
    with ocp.StandardCheckpointer() as c:
        exported = flatten_dict(c.restore(out / "params"), sep="/")
    trained = flatten_dict(jax.device_get(summary["state"].trainable), sep="/")
    for k, v in trained.items():
        np.testing.assert_array_equal(np.asarray(exported[k]), np.asarray(v), err_msg=k)
    assert any(k.startswith("vae/") for k in exported)  # the frozen parts too
    with pytest.raises(UserError, match="no checkpoint to export"):
        train.export_latest(run, tmp_path / "empty", tmp_path / "none")
