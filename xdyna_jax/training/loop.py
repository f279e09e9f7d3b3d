"""The host loop behind ``train.py``: ``train`` = ``runtime.build`` + ``run_loop`` (+ ``runtime.close``).

Side effects live here and in ``runtime.py`` (files, signals, progress); the step itself is pure
(``step.train_step``).
* logging: ``{workdir}/metrics.jsonl`` (one JSON object per logged step), TensorBoard events under
  ``{workdir}/tb`` (tensorboardX, no TensorFlow) and a progress bar (step, loss, samples/s, ETA);
* evaluation every ``train.eval_every`` steps (and before the first): the caller's evaluator and, with
  ``train.eval_batches > 0``, the held-out loss (``runtime.eval_loss``), as records of their own;
* checkpoints every ``train.save_every`` steps and at the end; re-running on the same workdir resumes;
* ``train.profile`` = "START:STEPS": a ``jax.profiler`` trace of steps START+1 .. START+STEPS in
  ``{workdir}/profile``, stopped on every way out of the loop;
* SIGTERM (preemption) saves a checkpoint after the current step and returns 0; on several processes, a
  signal to any one stops all of them after the same step;
* a NaN or Inf loss raises ``NonFiniteLoss`` before anything after the last good checkpoint is saved.
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path

import jax
import numpy as np

from . import checkpoint
from .config import TrainRunConfig, profile_window
# the runtime's parts, here too: callers and tests reach them as loop.*
from .runtime import (DatasetSource, Logger, Runtime, build, close, eval_loss, global_batch,  # noqa: F401
                      initial_params, mesh_devices, prepare_batch, train_step_fn)


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the run stops, its last checkpoint is the last good one."""


def read_losses(path: Path) -> dict[int, float]:
    """{step: loss} from a metrics.jsonl (the last record of a step wins: a resumed run rewrites some)."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "loss" in r:  # evaluation records (eval_loss, the evaluator's) have none
                    out[int(r["step"])] = float(r["loss"])
    return out


def any_host(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any one: all hosts must stop (and save) after the same
    step, or the ones that go on wait forever in the next collective. One tiny all-gather per step."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


class ProfileWindow:
    """``train.profile``: a trace from before step START+1 to after step START+STEPS (or the run's end), in
    ``directory`` (``plugins/profile/<time>/<host>.xplane.pb``: TensorBoard's profile plugin, XProf). A run
    resumed inside the window traces what is left of it; ``close`` stops a trace still running."""

    def __init__(self, spec: str, directory: Path, out):
        self.window, self.directory, self.out = profile_window(spec), directory, out
        self.first = None  # the first traced step while tracing

    def before_step(self, done: int):
        if self.window and self.first is None and self.window[0] <= done < sum(self.window):
            try:
                jax.profiler.start_trace(str(self.directory))
            except RuntimeError as e:  # another trace is running (one per process): train on without this one
                self.out(f"train.profile: no trace ({e})")
                self.window = None
                return
            self.first = done + 1

    def after_step(self, done: int):
        if self.first is not None and done >= sum(self.window):
            self.stop(done)

    def close(self, done: int):
        if self.first is not None:
            self.stop(done)

    def stop(self, done: int):
        first, self.first, self.window = self.first, None, None  # one window per run
        jax.profiler.stop_trace()
        self.out(f"profile of steps {first} to {done}: {self.directory} (tensorboard --logdir {self.directory})")


def train(run: TrainRunConfig, workdir, *, out=print, params=None, source=None, evaluator=None) -> dict:
    """Train to ``train.steps`` (resuming from ``{workdir}/checkpoints``); returns a summary dict.

    ``params``, ``source``, ``evaluator``: as ``runtime.build`` takes them (the evaluator runs before the first
    step and every ``train.eval_every`` steps; its values go to ``metrics.jsonl`` as records of their own).
    """
    rt = build(run, workdir, params=params, source=source, evaluator=evaluator, out=out)
    try:
        return run_loop(rt)
    finally:
        close(rt)


def run_loop(rt: Runtime) -> dict:
    """Steps from ``rt.start`` to ``train.steps`` on a built runtime: logs, evaluations, checkpoints, the
    profile window, SIGTERM. Returns a summary dict (``state``: the final state, also ``rt.state``); the
    runtime stays open (``runtime.close``)."""
    from tqdm import tqdm

    run, t, out, manager, logger = rt.run, rt.run.train, rt.out, rt.manager, rt.logger
    lead = jax.process_index() == 0
    start = rt.start
    summary = {"start_step": start, "steps": t.steps, "workdir": str(rt.workdir)}
    if start >= t.steps:
        out(f"already at step {start} of {t.steps}: nothing to train ({rt.workdir / 'checkpoints'})")
        return summary
    if rt.meta is not None:
        out(f"resumed from step {start} ({manager.directory})")
    terminated = []
    old_handler = signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    profile = ProfileWindow(t.profile, rt.workdir / "profile", out)
    step_no = start
    try:
        batch, n_scene_next = global_batch(rt, start)
        compiled = train_step_fn(rt, batch)
        flops, peak = rt.flops, rt.peak
        pending: list = []

        def run_eval(step_no):
            rec = {}
            if rt.held_out:  # on every process: the held-out batches are global arrays
                rec["eval_loss"] = eval_loss(rt)
            if rt.evaluate is not None:  # on every process too: it may run compiled code on global arrays
                rec.update({k: float(v) for k, v in rt.evaluate(rt.state).items()})
            if rec and lead:
                logger.write({"step": step_no, **rec})
                out("eval at step {}: {}".format(step_no, ", ".join(f"{k} {v:.4g}" for k, v in rec.items())))

        if start == 0 and t.eval_every > 0:
            run_eval(0)
        bar = tqdm(total=t.steps, initial=start, disable=not lead, unit="step", dynamic_ncols=True, file=sys.stderr)
        last_good = None

        def flush():
            for step_no, m, dt, n_scene in pending:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                if not math.isfinite(m["loss"]):
                    raise NonFiniteLoss(f"loss is {m['loss']} at step {step_no}; stopped. The last good checkpoint "
                                        f"is {last_good or 'none'} ({manager.directory})")
                rec = {"step": step_no, **m, "step_time": dt, "samples_per_s": t.batch_size / dt,
                       "scene_fraction": n_scene / t.batch_size}
                if flops:
                    rec["tflops_per_s_per_device"] = flops / dt / 1e12
                    if peak:
                        rec["mfu"] = flops / dt / peak
                logger.write(rec)
                bar.set_postfix(loss=f"{m['loss']:.4f}", samples_s=f"{t.batch_size / dt:.1f}")
            pending.clear()

        def save(step_no, position):
            flush()  # never checkpoint past a non-finite loss
            nonlocal last_good
            checkpoint.save(manager, rt.state, checkpoint.make_meta(rt.state, run, position))
            last_good = f"step {step_no}"

        while step_no < t.steps:
            profile.before_step(step_no)
            with jax.profiler.StepTraceAnnotation("train", step_num=step_no + 1):
                tic = time.perf_counter()
                rt.state, metrics = compiled(rt.state, batch)
                step_no += 1
                n_scene = n_scene_next
                position = rt.source.state(step_no)  # before drawing ahead: a resume starts with the batch of step_no
                if step_no < t.steps:
                    batch, n_scene_next = global_batch(rt, step_no)  # the next batch is drawn while this step runs
                jax.block_until_ready(metrics)
                dt = time.perf_counter() - tic
            profile.after_step(step_no)
            pending.append((step_no, metrics, dt, n_scene))
            bar.update(1)
            if step_no % t.log_every == 0:
                flush()
            if t.eval_every > 0 and step_no % t.eval_every == 0:
                flush()
                run_eval(step_no)
            stop = any_host(bool(terminated))
            if step_no % t.save_every == 0 or step_no == t.steps or stop:
                save(step_no, position)
            if stop:
                manager.wait_until_finished()
                bar.close()
                who = "" if terminated else " (received by another process)"
                out(f"SIGTERM{who}: saved a checkpoint at step {step_no} ({manager.directory}); exiting")
                summary.update(terminated=True, end_step=step_no, state=rt.state)
                return summary
        flush()
        manager.wait_until_finished()
        bar.close()
    finally:
        profile.close(step_no)
        signal.signal(signal.SIGTERM, old_handler)
    losses = read_losses(rt.workdir / "metrics.jsonl")
    steps = sorted(losses)
    w = max(1, min(20, len(steps) // 4))
    first = float(np.mean([losses[s] for s in steps[:w]])) if steps else float("nan")
    last = float(np.mean([losses[s] for s in steps[-w:]])) if steps else float("nan")
    summary.update(state=rt.state, end_step=step_no, first_loss=first, last_loss=last, window=w,
                   checkpoint=str(Path(manager.directory) / str(step_no)))
    out(f"loss: first {w} steps {first:.4f} -> last {w} steps {last:.4f}; checkpoint: {summary['checkpoint']}")
    return summary
