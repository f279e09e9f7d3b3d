"""Training on a mesh: data=2 x fsdp=4 (8 fake CPU devices) gives the one-device loss and update; a
checkpoint restores onto another mesh shape and training continues there; the EMA, gradient
accumulation and bf16 compute checked against hand re-computations."""
from __future__ import annotations


import jax
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from helpers import CONFIGS, MICRO_TRAIN, cpu_env, records
from xdyna_jax.sharding import make_mesh
from xdyna_jax.training import checkpoint, loop, objective
from xdyna_jax.world.source import SyntheticSource, make_source
from xdyna_jax.training import config as train_config
from xdyna_jax.training.state import adapter_init, init_state, models_for_training, split

ONE = ["mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1"]
EIGHT = ["mesh.data=2", "mesh.fsdp=4", "mesh.tensor=1"]
# batch 8 (one row per device on the big mesh), two steps with a checkpoint after each, EMA on
COMMON = [*MICRO_TRAIN, "train.batch_size=8", "train.steps=2", "train.save_every=1", "train.ema_decay=0.5"]
# float32 on both meshes, matmuls at "highest" (conftest): only the order of the cross-device sums differs
LOSS_RTOL = 1e-5
PARAM_ATOL = 2e-5   # after two AdamW steps of lr 1e-3 (an update is at most ~lr per step)


def run_of(*extra):
    return train_config.load(CONFIGS / "train_tiny.yaml", [*COMMON, *extra])


def flat_np(tree) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(tree), sep="/").items()}


def saved_trainable(workdir, step):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as c:
        return flat_np(c.restore(workdir / "checkpoints" / str(step) / "state")["trainable"])


def initial_trainable(run) -> dict[str, np.ndarray]:
    """The trainable params before step 1 (the adapter stage starts to_q_ff as a copy of to_q)."""
    params = adapter_init(loop.initial_params(run, make_mesh(run.mesh, jax.devices()[:1])))
    return flat_np(split(params, run.train.stage)[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = {}
    for name, mesh in (("one", ONE), ("eight", EIGHT)):
        workdir = tmp_path_factory.mktemp(name)
        summary = loop.train(run_of(*mesh), workdir, out=lambda *_: None, source=make_source)
        out[name] = (workdir, summary)
    return out


def test_eight_devices_match_one_device(runs):
    (w1, s1), (w8, s8) = runs["one"], runs["eight"]
    r1, r8 = records(w1), records(w8)
    assert sorted(r1) == sorted(r8) == [1, 2]
    for s in (1, 2):
        np.testing.assert_allclose(r8[s]["loss"], r1[s]["loss"], rtol=LOSS_RTOL)
        np.testing.assert_allclose(r8[s]["grad_norm"], r1[s]["grad_norm"], rtol=1e-4)
    a, b = flat_np(s1["state"].trainable), flat_np(s8["state"].trainable)
    assert a.keys() == b.keys()
    init = initial_trainable(run_of(*ONE))
    moved = 0
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=PARAM_ATOL, err_msg=k)
        moved += not np.array_equal(a[k], init[k])
    assert moved == len(a)  # the comparison is not of two untouched copies
    # the big mesh really split the state: some trainable param has per-device shards smaller than itself
    leaves = jax.tree.leaves(s8["state"].trainable)
    assert any(x.addressable_shards[0].data.size < x.size for x in leaves)
    assert all(len(x.sharding.device_set) == 8 for x in leaves)


def test_ema_is_the_decayed_average_of_the_steps(runs):
    """ema_2 = d^2 p_0 + d (1 - d) p_1 + (1 - d) p_2, from the checkpoints of steps 1 and 2 (d = 0.5)."""
    workdir, summary = runs["one"]
    run = run_of(*ONE)
    d = run.train.ema_decay
    p0 = initial_trainable(run)
    p1, p2 = saved_trainable(workdir, 1), saved_trainable(workdir, 2)
    ema = flat_np(summary["state"].ema)
    for k in ema:
        want = d * d * p0[k] + d * (1 - d) * p1[k] + (1 - d) * p2[k]
        np.testing.assert_allclose(ema[k], want, rtol=0, atol=1e-6, err_msg=k)


def test_checkpoint_restores_onto_another_mesh_and_training_continues(runs):
    """The 8-device checkpoint restores on one device (and the other way round) bit for bit, and a third
    step on the swapped meshes gives the same loss on both."""
    (w1, s1), (w8, s8) = runs["one"], runs["eight"]
    for src_dir, src, dst_mesh in ((w8, s8, ONE), (w1, s1, EIGHT)):
        run = run_of(*dst_mesh)
        mesh = make_mesh(run.mesh, loop.mesh_devices(run.mesh))
        template = init_state(run, mesh, loop.initial_params(run, mesh))
        mgr = checkpoint.make_manager(src_dir / "checkpoints")
        try:
            restored, meta = checkpoint.restore_latest(mgr, template, run)
        finally:
            mgr.close()
        assert int(restored.step) == 2 and meta["data"] == {"source": "synthetic", "next_step": 2}
        for x, t in zip(jax.tree.leaves(restored.trainable), jax.tree.leaves(template.trainable)):
            assert x.sharding == t.sharding  # placed by the destination mesh's rules
        got, want = flat_np(restored.trainable), flat_np(src["state"].trainable)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        got, want = jax.tree.leaves(restored.opt_state), jax.tree.leaves(src["state"].opt_state)
        assert len(got) == len(want)
        for x, y in zip(got, want):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # step 3: the 8-device run continues on one device and the one-device run on 8 devices
    loop.train(run_of(*ONE, "train.steps=3"), w8, out=lambda *_: None, source=make_source)
    loop.train(run_of(*EIGHT, "train.steps=3"), w1, out=lambda *_: None, source=make_source)
    np.testing.assert_allclose(records(w8)[3]["loss"], records(w1)[3]["loss"], rtol=LOSS_RTOL)


def _first_step(run, workdir):
    loop.train(run, workdir, out=lambda *_: None, source=make_source)
    return records(workdir)[1]["loss"]


def _batch_and_params(run):
    from xdyna_jax.models.clip_preprocess import default_image_processor

    mesh = make_mesh(run.mesh, jax.devices()[:1])
    raw = SyntheticSource(run).batch(0)
    proc = default_image_processor(run.models.image_encoder.image_size)
    batch = loop.prepare_batch(raw, models_for_training(run), run.train, proc)
    return batch, loop.initial_params(run, mesh)


def test_accumulation_loss_is_the_mean_over_micro_batches(tmp_path):
    """accum_steps=2: the step's loss is the mean of the objective on each half of the batch, micro-batch i
    drawing from fold_in(step key, i) (objective recomputed outside the step, forward only)."""
    run = run_of(*ONE, "train.accum_steps=2", "train.steps=1", "train.ema_decay=0")
    got = _first_step(run, tmp_path)
    batch, params = _batch_and_params(run)
    key = jax.random.fold_in(jax.random.key(run.train.seed), 0)
    f = jax.jit(lambda p, b, k: objective.loss(p, b, k, cfg=models_for_training(run), train=run.train))
    halves = [f(params, {k: v[i * 4:(i + 1) * 4] for k, v in batch.items()}, jax.random.fold_in(key, i))
              for i in range(2)]
    np.testing.assert_allclose(got, np.mean([float(h) for h in halves]), rtol=1e-5)


def test_bf16_compute_keeps_float32_masters_and_close_loss(runs, tmp_path):
    """compute_dtype=bfloat16: the same first step as the float32 run (same batch, same draws) within bf16
    rounding, and the master params stay float32."""
    run16 = run_of(*ONE, "train.compute_dtype=bfloat16", "train.steps=1")
    summary = loop.train(run16, tmp_path, out=lambda *_: None, source=make_source)
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(summary["state"].trainable))
    got, ref = records(tmp_path)[1]["loss"], records(runs["one"][0])[1]["loss"]
    assert got != ref  # it did compute in bf16
    np.testing.assert_allclose(got, ref, rtol=3e-2)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_save_and_resume(runs, tmp_path):
    """Two jax.distributed processes of 4 CPU devices each (data=2 x fsdp=4 across them), each feeding its
    half of the batch: the losses equal the one-process 8-device run's; a second call restores the shared
    checkpoint in both processes and continues; SIGTERM to one process stops both after the same step,
    saved (tests/multihost_train_worker.py)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    worker = Path(__file__).with_name("multihost_train_worker.py")
    workdir = tmp_path / "mh"
    env = {**cpu_env(4),
           "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{_free_port()}", "JAX_NUM_PROCESSES": "2"}
    cmd = [sys.executable, str(worker), str(workdir), *COMMON, *EIGHT]
    procs = [subprocess.Popen(cmd, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        deadline = time.time() + 900
        while not (max(records_or_empty(workdir), default=0) >= 5):  # the third call is training
            assert all(p.poll() is None for p in procs) and time.time() < deadline, "a process ended early"
            time.sleep(0.1)
        procs[1].send_signal(signal.SIGTERM)  # preemption notice to one host only
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
        assert f"process {i}: resumed from step 2" in out, out[-3000:]
    mine, ref = records(workdir), records(runs["eight"][0])
    for s in (1, 2):
        np.testing.assert_allclose(mine[s]["loss"], ref[s]["loss"], rtol=LOSS_RTOL)
    assert np.isfinite(mine[3]["loss"])
    # both stopped after the same step and saved it; the one that got no signal says so
    stops = [int(out.split("saved a checkpoint at step ")[1].split()[0]) for out in outs]
    assert stops[0] == stops[1] == max(mine) >= 5, stops
    assert "process 1: SIGTERM: saved" in outs[1] and "process 0: SIGTERM (received by another process)" in outs[0]
    assert str(stops[0]) in [p.name for p in (workdir / "checkpoints").iterdir()]


def records_or_empty(workdir) -> dict:
    return records(workdir) if (workdir / "metrics.jsonl").is_file() else {}
