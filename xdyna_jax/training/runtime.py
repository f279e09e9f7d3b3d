"""The training runtime: what ``loop.run_loop`` runs on, built once by ``build``.

``build(run, workdir)`` makes the mesh, the models' config, the train state (restored from the latest
checkpoint in ``{workdir}/checkpoints`` when there is one) and the checkpoint manager; with ``data=True`` (the
loop's) also the data source at the restored position, the caller's evaluator, the held-out batches of
``train.eval_batches`` and the metrics logger. The train step and the held-out loss compile on first use
(``train_step_fn``, ``eval_loss``), so a build for an export (``train.py --export``: ``data=False``) compiles
nothing but the state's init. ``close`` releases what a build opened.

Sources: the dataset loader (``DatasetSource``) or a factory the caller passes (``train.py`` passes the tiny
world's, ``xdyna_jax/world/source.py``), each host drawing its own rows, assembled into global arrays with
``sharding.host_local_to_global``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from . import checkpoint
from .config import TrainRunConfig
from .state import TrainState, init_state, merge, models_for_training

# the held-out loss draws the rng of step HELD_OUT_STEP + i for its batch i: a step no run reaches
HELD_OUT_STEP = 10 ** 9


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


# --- params and mesh --------------------------------------------------------------------------------

def initial_params(run: TrainRunConfig, mesh):
    """Full params on ``mesh``: the models' own initialisers (seed ``train.seed``), seeded random values, or a
    bundle folder (``train.init``), placed by the run's rule table (``mesh.rules``)."""
    from xdyna_jax.models import xdyna
    from xdyna_jax.sharding import rules_with

    rules = rules_with(run.mesh.rules)

    if run.train.init == "model":
        from .state import he_scale, with_vae_logvar_bias

        params = xdyna.init_params(run.models, jax.random.key(run.train.seed), mesh, rules=rules)
        if run.train.he_init:
            params = he_scale(params, run.train.he_init)
        if run.train.vae_logvar_init is not None:
            params = with_vae_logvar_bias(params, run.train.vae_logvar_init)
        return params
    if run.train.init == "random":  # seeded normal(0, 0.05) from numpy: no init program to compile (tests, benchmarks)
        rng = np.random.default_rng(run.train.seed)
        shapes = xdyna.param_shapes(run.models)
        return jax.tree.map(lambda s, sh: jax.device_put((0.05 * rng.standard_normal(s.shape)).astype(s.dtype), sh),
                            shapes, xdyna.param_shardings(run.models, mesh, rules))
    from xdyna_jax.cli import UserError
    from xdyna_jax.porting import PortingError
    from xdyna_jax.porting.bundle import load_bundle

    try:
        b = load_bundle(run.train.init, mesh, cfg=run.models, rules=rules)
    except PortingError as e:
        raise UserError(f"train.init={run.train.init}: {e}") from e
    return b.params


def mesh_devices(mesh_cfg):
    """All devices, or the first data*fsdp*tensor (x the DCN slice counts) of them when every axis is given
    (a smaller mesh)."""
    sizes = (mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
    devices = jax.devices()
    return devices if -1 in sizes else devices[:int(np.prod(sizes)) * int(np.prod(mesh_cfg.dcn))]


# --- the runtime ------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class Runtime:
    """What the loop runs on. ``state`` is the current train state: the loop replaces it after every step (the
    step donates the old one)."""

    run: TrainRunConfig
    workdir: Path
    mesh: Any
    rules: tuple                           # the mesh's logical-axis rule table (sharding.rules_with(mesh.rules))
    models: Any                            # the ModelsConfig the step runs (state.models_for_training)
    state: TrainState
    manager: Any                           # the Orbax CheckpointManager of {workdir}/checkpoints
    out: Callable = print
    meta: dict | None = None               # the restored checkpoint's meta; None: a fresh start
    start: int = 0                         # steps done at build time
    source: Any = None                     # batch(step), state(next_step), close()
    processor: Any = None                  # CLIP's image processor, when batches carry raw frames
    evaluate: Callable | None = None       # the caller's evaluator: fn(state) -> {name: float}
    held_out: list = dataclasses.field(default_factory=list)  # prepared host-local batches of the held-out loss
    logger: Logger | None = None
    compiled: Any = None                   # the train step, compiled on the first batch (train_step_fn)
    flops: float | None = None             # per device per step, from XLA's cost analysis
    peak: float | None = None              # the device's peak FLOP/s, when known
    eval_compiled: Any = None              # the held-out loss, compiled on first use (eval_loss)

    @property
    def data_state(self) -> dict | None:
        """The data position saved with the restored checkpoint (the source resumes from it)."""
        return (self.meta or {}).get("data")


def build(run: TrainRunConfig, workdir, *, params=None, source=None, evaluator=None, out=print,
          data: bool = True) -> Runtime:
    """The runtime of ``run`` in ``workdir``, its state restored from the latest checkpoint when there is one.

    ``params``: full starting params (skips ``initial_params``; used by tests and the benchmark).
    ``source``: ``source(run, saved_position, params, models, log) -> Source`` for ``data.source`` other than
    ``dataset`` (a Source has ``batch(step)``, ``state(next_step)`` and ``close()``; ``DatasetSource`` is one).
    ``evaluator``: ``evaluator(run, params, models, log) -> fn(state) -> {name: float}`` (with
    ``train.eval_every > 0``). ``data=False``: mesh, state and checkpoints only, no source, evaluator or logger.
    """
    from xdyna_jax.cli import UserError
    from xdyna_jax.sharding import make_mesh, rules_with

    t = run.train
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = make_mesh(run.mesh, mesh_devices(run.mesh))
    if data and t.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        raise UserError(f"train.batch_size={t.batch_size} does not split over data x fsdp = "
                        f"{mesh.shape['data'] * mesh.shape['fsdp']} devices")
    if data and run.data.source != "dataset" and source is None:
        raise UserError(f"data.source={run.data.source} is the tiny world's: run it through train.py, or pass "
                        f"source=xdyna_jax.world.source.make_source")
    state = init_state(run, mesh, initial_params(run, mesh) if params is None else params)
    rt = Runtime(run=run, workdir=workdir, mesh=mesh, rules=rules_with(run.mesh.rules),
                 models=models_for_training(run), state=state, out=out,
                 manager=checkpoint.make_manager(workdir / "checkpoints", t.max_to_keep))
    try:
        restored = checkpoint.restore_latest(rt.manager, state, run)
        if restored is not None:
            rt.state, rt.meta = restored
        rt.start = int(jax.device_get(rt.state.step))
        if data:
            attach_data(rt, source, evaluator)
    except BaseException:  # a refused checkpoint or a failing source: release the manager, then re-raise
        close(rt)
        raise
    return rt


def attach_data(rt: Runtime, source, evaluator) -> None:
    """The source at the restored position, the evaluator, the held-out batches and the logger."""
    run, t = rt.run, rt.run.train
    params = merge(rt.state.trainable, rt.state.frozen)
    if "clip_hidden" not in run.data.encoded and run.data.source != "pool":
        from xdyna_jax.models.clip_preprocess import default_image_processor

        rt.processor = default_image_processor(run.models.image_encoder.image_size)
    if run.data.source == "dataset":
        rt.source = DatasetSource(run, rt.data_state)
    else:
        rt.source = source(run, rt.data_state, params, rt.models, rt.out)
    if t.eval_every > 0 and evaluator is not None:
        rt.evaluate = evaluator(run, params, rt.models, rt.out)
    if t.eval_every > 0 and t.eval_batches > 0:
        rt.held_out = held_out_batches(rt, source, params)
    rt.logger = Logger(rt.workdir, jax.process_index() == 0)


def close(rt: Runtime) -> None:
    """Wait for pending checkpoint saves, then close the manager, the source and the logger."""
    try:
        rt.manager.wait_until_finished()
        rt.manager.close()
    finally:
        try:
            if rt.source is not None:
                rt.source.close()
        finally:
            if rt.logger is not None:
                rt.logger.close()


# --- batches and the compiled step -----------------------------------------------------------------

def global_batch(rt: Runtime, step: int):
    """(the batch of ``step`` as global arrays, its number of scene clips)."""
    from xdyna_jax.sharding import host_local_to_global

    raw = rt.source.batch(step)
    b = prepare_batch(raw, rt.models, rt.run.train, rt.processor)
    if step + 1 == rt.run.train.debug_nan_step:  # test hook: the step that makes state.step == debug_nan_step
        b = {k: v * np.float32("nan") for k, v in b.items()}
    return host_local_to_global(b, rt.mesh, rt.rules), int(np.sum(raw["is_scene"]))


def train_step_fn(rt: Runtime, batch):
    """The train step compiled for ``batch``'s layout and the state's shardings: on the first call (memoised
    in-process by ``step.compile_step``, so runs that differ only in host-loop keys share it)."""
    if rt.compiled is None:
        from .step import compile_step, peak_flops, step_flops

        t0 = time.perf_counter()
        rt.compiled = compile_step(rt.run, rt.models, rt.mesh, rt.state, batch)
        rt.flops, rt.peak = step_flops(rt.compiled), peak_flops(jax.devices()[0])
        rt.out(f"train step ready in {time.perf_counter() - t0:.1f}s"
               + (f" ({rt.flops / 1e9:.2f} GFLOP per device per step)" if rt.flops else ""))
    return rt.compiled


# --- the held-out loss ------------------------------------------------------------------------------

def held_out_batches(rt: Runtime, source, params) -> list[dict]:
    """``train.eval_batches`` prepared host-local batches, drawn once: batches 0, 1, ... of the world's test
    split (figures training never draws) from a second source of the same factory; for the pool source a pool
    of only the clips they can use. The same batches at every evaluation, and after a resume."""
    t = rt.run.train
    data = dataclasses.replace(rt.run.data, split="test", pool_clips=min(rt.run.data.pool_clips,
                                                                          t.eval_batches * t.batch_size))
    src = source(dataclasses.replace(rt.run, data=data), None, params, rt.models, rt.out)
    try:
        return [prepare_batch(src.batch(i), rt.models, t, rt.processor) for i in range(t.eval_batches)]
    finally:
        src.close()


def compile_eval_loss(rt: Runtime, trained, batch, index):
    """``objective.loss`` jitted with the params' and the batch's shardings (as the train step is) and compiled,
    its rng ``fold_in(key(seed), HELD_OUT_STEP + index)``."""
    from xdyna_jax.sharding import activation_sharding, replicated

    from . import objective
    from .step import batch_shardings, step_key_config

    t, models = step_key_config(rt.run).train, rt.models

    def loss(trained, frozen, batch, index):
        key = jax.random.fold_in(jax.random.key(t.seed), HELD_OUT_STEP + index)
        return objective.loss(merge(trained, frozen), batch, key, cfg=models, train=t)

    shardings = lambda tree: jax.tree.map(lambda x: x.sharding, tree)  # noqa: E731
    fn = jax.jit(loss, in_shardings=(shardings(trained), shardings(rt.state.frozen),
                                     batch_shardings(batch, rt.mesh, rt.rules), replicated(rt.mesh)),
                 out_shardings=replicated(rt.mesh))
    with activation_sharding(rt.mesh, rt.rules):
        return fn.lower(trained, rt.state.frozen, batch, index).compile()


def eval_loss(rt: Runtime) -> float:
    """The mean loss of the current params (the EMA when kept, else the trainable ones) over the held-out
    batches, each with its fixed rng: the same params give the same number. Every process calls it (the
    batches are global arrays)."""
    from xdyna_jax.sharding import host_local_to_global, replicated

    trained = rt.state.ema if rt.state.ema is not None else rt.state.trainable
    total = 0.0
    for i, b in enumerate(rt.held_out):
        batch = host_local_to_global(b, rt.mesh, rt.rules)
        index = jax.make_array_from_callback((), replicated(rt.mesh), lambda _, i=i: np.int32(i))
        if rt.eval_compiled is None:
            t0 = time.perf_counter()
            rt.eval_compiled = compile_eval_loss(rt, trained, batch, index)
            rt.out(f"held-out loss ready in {time.perf_counter() - t0:.1f}s ({len(rt.held_out)} batches)")
        total += float(rt.eval_compiled(trained, rt.state.frozen, batch, index))
    return total / len(rt.held_out)
