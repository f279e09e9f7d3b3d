"""train.py as a process: bad input, SIGKILL + resume equal to an uninterrupted run exactly, --export writes the
final checkpoint's params, SIGTERM saves and exits 0 (the default run: test_training_cli_default.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np

from helpers import MICRO_TRAIN, REPO_ROOT, cpu_env, records

# one device, the same flags as a user's run; the compile cache is the user's (shared across test sessions)
ENV = cpu_env(1)
SMALL = [*MICRO_TRAIN, "train.batch_size=2"]  # the micro networks (helpers.py): a short compile


def train_cmd(workdir, *extra, options=()):
    return [sys.executable, str(REPO_ROOT / "train.py"), "--workdir", str(workdir), *options, *SMALL, *extra]


def test_unknown_key_is_one_line_exit_2(capsys):
    sys.path.insert(0, str(REPO_ROOT))
    import train

    from xdyna_jax import cli

    assert cli.run(train.main, ["train.stepz=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "stepz" in err[0]
    assert cli.run(train.main, ["train.stage=nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert cli.run(train.main, ["train.profile=5"]) == 2  # a malformed profile window, before JAX starts
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: train.profile='5'")


def _final_trainable(workdir, step):
    import orbax.checkpoint as ocp

    with ocp.StandardCheckpointer() as c:
        return c.restore(workdir / "checkpoints" / str(step) / "state")["trainable"]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """(The uninterrupted run also exports: its bundle holds the final checkpoint's trainable params.)"""
    steps = ["train.steps=10", "train.save_every=2"]
    ref = tmp_path / "ref"
    ref_done = subprocess.run(train_cmd(ref, *steps, options=["--export", str(tmp_path / "bundle")]), env=ENV,
                              capture_output=True, text=True, timeout=900)
    assert ref_done.returncode == 0, ref_done.stderr[-2000:]
    assert f"exported the trained params to {tmp_path / 'bundle'}" in ref_done.stdout

    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(run, *steps), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 900
    while not (run / "checkpoints" / "2" / "meta").is_dir():  # a finished checkpoint (Orbax renames when done)
        assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait()
    done = subprocess.run(train_cmd(run, *steps), env=ENV, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from step" in done.stdout
    resumed = int(done.stdout.split("resumed from step ")[1].split()[0])
    assert 2 <= resumed < 10
    a, b = records(ref), records(run)
    assert sorted(b) == list(range(1, 11))
    for s in range(resumed + 1, 11):  # the steps after the resume point are bit-identical
        keys = ("loss", "grad_norm", "update_norm", "param_norm")
        assert [a[s][k] for k in keys] == [b[s][k] for k in keys], s
    for x, y in zip(*(jax_leaves(_final_trainable(w, 10)) for w in (ref, run))):
        np.testing.assert_array_equal(x, y)
    _check_export(tmp_path / "bundle", _final_trainable(ref, 10))


def _check_export(bundle, trainable):
    import orbax.checkpoint as ocp
    from flax.traverse_util import flatten_dict

    with ocp.StandardCheckpointer() as c:
        exported = flatten_dict(c.restore(bundle / "params"), sep="/")
    for k, v in flatten_dict(trainable, sep="/").items():
        np.testing.assert_array_equal(np.asarray(exported[k]), np.asarray(v), err_msg=k)
    assert any(k.startswith("vae/") for k in exported)  # the frozen parts too


def jax_leaves(tree):
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sigterm_saves_and_exits_0(tmp_path):
    proc = subprocess.Popen(train_cmd(tmp_path, "train.steps=100000", "train.save_every=100000"), env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 900
    while not ((tmp_path / "metrics.jsonl").is_file() and (tmp_path / "metrics.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    assert "SIGTERM: saved a checkpoint at step" in out
    step = int(out.split("SIGTERM: saved a checkpoint at step ")[1].split()[0])
    assert (tmp_path / "checkpoints" / str(step) / "state").is_dir()
    assert max(records(tmp_path)) == step
