"""Orbax checkpoints of a training run: one ``CheckpointManager`` under ``{workdir}/checkpoints``.

Each checkpoint ``{step}/`` holds two items: ``state`` (step, trainable params, optimizer state, EMA:
``state.checkpointed``; no frozen params) and ``meta`` (JSON: the stage, the trainable param paths, the
run config, the seed and the data position). Saves are asynchronous; Orbax writes each checkpoint into
a temporary folder and renames it when complete, so a process killed during a save leaves nothing that
``latest_step`` would pick up. Restoring reads straight into the sharded arrays of an abstract target
(any mesh shape); a checkpoint of another stage or config fails with the differences named.
"""
from __future__ import annotations

from pathlib import Path

import jax
from flax.traverse_util import flatten_dict

from xdyna_jax import config as config_lib
from xdyna_jax.cli import UserError

from .config import config_differences
from .state import TrainState, checkpointed, with_checkpointed


def make_manager(directory, max_to_keep: int = 3):
    import orbax.checkpoint as ocp

    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options, item_names=("state", "meta"))


def trainable_paths(state: TrainState) -> list[str]:
    return sorted(flatten_dict(state.trainable, sep="/"))


def make_meta(state: TrainState, run, data_state: dict) -> dict:
    return {"stage": run.train.stage, "seed": run.train.seed, "trainable": trainable_paths(state),
            "config": config_lib.to_dict(run), "data": data_state}


def save(manager, state: TrainState, meta: dict) -> int:
    """Start an async save of ``state`` at its step; returns the step."""
    import orbax.checkpoint as ocp

    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(checkpointed(state)),
                                               meta=ocp.args.JsonSave(meta)), force=True)
    return step


def check_meta(meta: dict, state: TrainState, run, where: str) -> None:
    """Refuse a checkpoint of another stage, other trainable params or another config, naming what differs."""
    if meta.get("stage") != run.train.stage:
        raise UserError(f"{where}: the checkpoint was trained with train.stage={meta.get('stage')!r}, this run has "
                        f"train.stage={run.train.stage!r} (use another --workdir, or the same stage)")
    want, have = trainable_paths(state), meta.get("trainable", [])
    if want != have:
        extra, missing = sorted(set(have) - set(want)), sorted(set(want) - set(have))
        raise UserError(f"{where}: the checkpoint's trainable params differ from this run's: "
                        f"{len(extra)} only in the checkpoint {extra[:3]}, {len(missing)} only here {missing[:3]}")
    diff = config_differences(meta.get("config", {}), run)
    if diff:
        raise UserError(f"{where}: the checkpoint's config differs from this run's ({'; '.join(diff[:6])}"
                        f"{'; ...' if len(diff) > 6 else ''}); only train.steps, save_every, log_every, "
                        f"max_to_keep and mesh.* may change on resume")


def restore_latest(manager, state: TrainState, run) -> tuple[TrainState, dict] | None:
    """(state with the latest checkpoint restored onto ``state``'s shardings, meta), or None when there is none."""
    import orbax.checkpoint as ocp

    step = manager.latest_step()
    if step is None:
        return None
    where = f"{manager.directory}/{step}"
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    check_meta(meta, state, run, where)
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), checkpointed(state))
    saved = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    return with_checkpointed(state, saved), meta


def export_params(state: TrainState, run, out, use_ema: bool = True) -> Path:
    """The full params (trained subset, EMA when kept, over the frozen ones) as a bundle folder
    (``porting.bundle.save_bundle``); ``python -m xdyna_jax.porting export-bundle`` gives official names."""
    from xdyna_jax.porting.bundle import save_bundle

    from .state import merge

    trained = state.ema if (use_ema and state.ema is not None) else state.trainable
    params = merge(trained, state.frozen)
    return save_bundle(out, params, run.models, report=f"trained: stage {run.train.stage}, "
                                                       f"step {int(jax.device_get(state.step))}", force=True)
