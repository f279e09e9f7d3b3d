"""The host loop behind ``train.py``: data, the compiled step, logging, checkpoints and preemption.

Side effects live here (files, signals, progress); the step itself is pure (``step.train_step``).
* data: the dataset loader (``data/loader.py``) or a source the caller passes (``train.py`` passes the tiny
  world's, ``xdyna_jax/world/source.py``), each host drawing its own rows, assembled into global arrays with
  ``sharding.host_local_to_global``;
* logging: ``{workdir}/metrics.jsonl`` (one JSON object per logged step), TensorBoard events under
  ``{workdir}/tb`` (tensorboardX, no TensorFlow) and a progress bar (step, loss, samples/s, ETA);
* checkpoints every ``train.save_every`` steps and at the end; re-running on the same workdir resumes;
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
from .config import TrainRunConfig
from .state import init_state, models_for_training


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; the run stops, its last checkpoint is the last good one."""


# --- data -------------------------------------------------------------------------------------------

class DatasetSource:
    """The ``VideoClipLoader`` (host-sharded, resumable); its position is saved in every checkpoint."""

    def __init__(self, run: TrainRunConfig, saved: dict | None):
        from xdyna_jax.data.loader import LoaderConfig, VideoClipLoader

        d, t = run.data, run.train
        cfg = LoaderConfig(data_dir=d.data_dir, splits=d.splits, batch_size=t.batch_size // jax.process_count(),
                           clip_length=t.frames, stride=d.stride, reference=d.reference, seed=t.seed,
                           size=None if d.encoded else (t.height, t.width), num_threads=d.num_threads,
                           prefetch=d.prefetch, encoded=d.encoded)
        self.loader = VideoClipLoader(cfg)
        if saved:
            self.loader.restore(saved)
        self.it = iter(self.loader)

    def batch(self, step: int) -> dict:
        return next(self.it)

    def state(self, next_step: int) -> dict:
        return {"source": "dataset", **self.loader.state()}

    def close(self):
        self.loader.close()


def prepare_batch(raw: dict, models, train, image_processor=None) -> dict:
    """uint8 clips (the loader's layout) -> the step's float inputs (``objective`` module doc)."""
    from xdyna_jax.sampling.pixels import normalize_condition

    out = {}
    if "vae_moments" in raw and train.stage != "vae":
        out["vae_moments"] = np.asarray(raw["vae_moments"], np.float32)
    else:
        out["pixels"] = np.asarray(raw["frames"], np.float32) / 127.5 - 1.0
    if train.stage == "vae":
        return out
    if "clip_hidden" in raw:
        out["clip_hidden"] = np.asarray(raw["clip_hidden"], np.float32)
    else:
        from xdyna_jax.models.clip_preprocess import clip_pixel_values

        out["clip_pixels"] = clip_pixel_values(list(np.asarray(raw["frames"][:, 0])), image_processor)
    to_cond = lambda u8: np.asarray(normalize_condition(np.asarray(u8, np.float32) / 127.5 - 1.0))  # noqa: E731
    out["pose"] = to_cond(raw["pose"])
    if models.face_controlnet is not None:  # local and global maps are separate clips (spec §7.3)
        out["face"] = np.concatenate([to_cond(raw["face"][..., :3]), to_cond(raw["face"][..., 3:])], axis=-1)
    return out


# --- logging ----------------------------------------------------------------------------------------

class Logger:
    def __init__(self, workdir: Path, enabled: bool):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.tb = None
        if enabled:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(workdir / "tb"))

    def write(self, record: dict):
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        for k, v in record.items():
            if k != "step" and isinstance(v, (int, float)):
                self.tb.add_scalar(f"train/{k}", v, record["step"])

    def close(self):
        if self.tb is not None:
            self.tb.close()


def read_losses(path: Path) -> dict[int, float]:
    """{step: loss} from a metrics.jsonl (the last record of a step wins: a resumed run rewrites some)."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                if "loss" in r:  # evaluator records have none
                    out[int(r["step"])] = float(r["loss"])
    return out


# --- the loop ---------------------------------------------------------------------------------------

def any_host(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any one: all hosts must stop (and save) after the same
    step, or the ones that go on wait forever in the next collective. One tiny all-gather per step."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def initial_params(run: TrainRunConfig, mesh):
    """Full params on ``mesh``: the models' own initialisers (seed ``train.seed``), seeded random values, or a
    bundle folder (``train.init``)."""
    from xdyna_jax.models import xdyna

    if run.train.init == "model":
        from .state import he_scale, with_vae_logvar_bias

        params = xdyna.init_params(run.models, jax.random.key(run.train.seed), mesh)
        if run.train.he_init:
            params = he_scale(params, run.train.he_init)
        if run.train.vae_logvar_init is not None:
            params = with_vae_logvar_bias(params, run.train.vae_logvar_init)
        return params
    if run.train.init == "random":  # seeded normal(0, 0.05) from numpy: no init program to compile (tests, benchmarks)
        rng = np.random.default_rng(run.train.seed)
        shapes = xdyna.param_shapes(run.models)
        return jax.tree.map(lambda s, sh: jax.device_put((0.05 * rng.standard_normal(s.shape)).astype(s.dtype), sh),
                            shapes, xdyna.param_shardings(run.models, mesh))
    from xdyna_jax.cli import UserError
    from xdyna_jax.porting import PortingError
    from xdyna_jax.porting.bundle import load_bundle

    try:
        b = load_bundle(run.train.init, mesh, cfg=run.models)
    except PortingError as e:
        raise UserError(f"train.init={run.train.init}: {e}") from e
    return b.params


def mesh_devices(mesh_cfg):
    """All devices, or the first data*fsdp*tensor (x the DCN slice counts) of them when every axis is given
    (a smaller mesh)."""
    sizes = (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
    devices = jax.devices()
    return devices if -1 in sizes else devices[:int(np.prod(sizes)) * int(np.prod(mesh_cfg.dcn))]


def train(run: TrainRunConfig, workdir, *, out=print, params=None, source=None, evaluator=None) -> dict:
    """Train to ``train.steps`` (resuming from ``{workdir}/checkpoints``); returns a summary dict.

    ``params``: full starting params (skips ``initial_params``; used by tests and the benchmark).
    ``source``: ``source(run, saved_position, params, models, log) -> Source`` for ``data.source`` other than
    ``dataset`` (a Source has ``batch(step)``, ``state(next_step)`` and ``close()``; ``DatasetSource`` is one).
    ``evaluator``: ``evaluator(run, params, models, log) -> fn(state) -> {name: float}``, run before the first
    step and every ``train.eval_every`` steps; its values go to ``metrics.jsonl`` as records of their own.
    """
    from tqdm import tqdm

    from xdyna_jax.sharding import host_local_to_global, make_mesh

    from .step import compile_step, peak_flops, step_flops

    t = run.train
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    lead = jax.process_index() == 0
    mesh = make_mesh(run.mesh, mesh_devices(run.mesh))
    if t.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        from xdyna_jax.cli import UserError

        raise UserError(f"train.batch_size={t.batch_size} does not split over data x fsdp = "
                        f"{mesh.shape['data'] * mesh.shape['fsdp']} devices")
    models = models_for_training(run)
    state = init_state(run, mesh, initial_params(run, mesh) if params is None else params)
    manager = checkpoint.make_manager(workdir / "checkpoints", t.max_to_keep)
    restored = checkpoint.restore_latest(manager, state, run)
    data_state = None
    if restored is not None:
        state, meta = restored
        data_state = meta.get("data")
    start = int(jax.device_get(state.step))
    if run.data.source == "dataset":
        source = DatasetSource(run, data_state)
    elif source is None:
        from xdyna_jax.cli import UserError

        raise UserError(f"data.source={run.data.source} is the tiny world's: run it through train.py, or pass "
                        f"source=xdyna_jax.world.source.make_source")
    else:
        from .state import merge

        source = source(run, data_state, merge(state.trainable, state.frozen), models, out)
    evaluate = None
    if evaluator is not None and t.eval_every > 0:
        from .state import merge

        evaluate = evaluator(run, merge(state.trainable, state.frozen), models, out)
    processor = None
    if "clip_hidden" not in run.data.encoded and run.data.source != "pool":
        from xdyna_jax.models.clip_preprocess import default_image_processor

        processor = default_image_processor(run.models.image_encoder.image_size)

    def global_batch(step):
        raw = source.batch(step)
        b = prepare_batch(raw, models, t, processor)
        if step + 1 == t.debug_nan_step:  # test hook: the step that makes state.step == debug_nan_step
            b = {k: v * np.float32("nan") for k, v in b.items()}
        return host_local_to_global(b, mesh), int(np.sum(raw["is_scene"]))

    terminated = []
    old_handler = signal.signal(signal.SIGTERM, lambda *_: terminated.append(True))
    logger = Logger(workdir, lead)
    summary = {"start_step": start, "steps": t.steps, "workdir": str(workdir)}
    try:
        if start >= t.steps:
            out(f"already at step {start} of {t.steps}: nothing to train ({workdir / 'checkpoints'})")
            return summary
        if restored is not None:
            out(f"resumed from step {start} ({manager.directory})")
        batch, n_scene_next = global_batch(start)
        t0 = time.perf_counter()
        compiled = compile_step(run, models, mesh, state, batch)
        flops, peak = step_flops(compiled), peak_flops(jax.devices()[0])
        out(f"train step ready in {time.perf_counter() - t0:.1f}s"
            + (f" ({flops / 1e9:.2f} GFLOP per device per step)" if flops else ""))
        pending: list = []

        def run_eval(step_no):
            if evaluate is None or not lead:
                return
            rec = {"step": step_no, **{k: float(v) for k, v in evaluate(state).items()}}
            logger.write(rec)
            out("eval at step {}: {}".format(step_no, ", ".join(f"{k} {v:.4g}" for k, v in rec.items() if k != "step")))

        if start == 0:
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
            checkpoint.save(manager, state, checkpoint.make_meta(state, run, position))
            last_good = f"step {step_no}"

        step_no = start
        while step_no < t.steps:
            tic = time.perf_counter()
            state, metrics = compiled(state, batch)
            step_no += 1
            n_scene = n_scene_next
            position = source.state(step_no)  # before drawing ahead: a resume starts with the batch of step_no
            if step_no < t.steps:
                batch, n_scene_next = global_batch(step_no)  # the next batch is drawn while this step runs
            jax.block_until_ready(metrics)
            pending.append((step_no, metrics, time.perf_counter() - tic, n_scene))
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
                summary.update(terminated=True, end_step=step_no, state=state)
                return summary
        flush()
        manager.wait_until_finished()
        bar.close()
    finally:
        signal.signal(signal.SIGTERM, old_handler)
        manager.wait_until_finished()
        manager.close()
        source.close()
        logger.close()
    losses = read_losses(workdir / "metrics.jsonl")
    steps = sorted(losses)
    w = max(1, min(20, len(steps) // 4))
    first = float(np.mean([losses[s] for s in steps[:w]])) if steps else float("nan")
    last = float(np.mean([losses[s] for s in steps[-w:]])) if steps else float("nan")
    summary.update(state=state, end_step=step_no, first_loss=first, last_loss=last, window=w,
                   checkpoint=str(Path(manager.directory) / str(step_no)))
    out(f"loss: first {w} steps {first:.4f} -> last {w} steps {last:.4f}; checkpoint: {summary['checkpoint']}")
    return summary
