"""Train X-Dyna: ``python train.py [--config FILE] [--workdir DIR] [key=value ...]``.

With no arguments: the tiny networks on the built-in synthetic source (``configs/train_tiny.yaml``),
a few minutes on a CPU. Re-running the same command on the same workdir resumes from its last
checkpoint. See docs/TRAINING.md.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from xdyna_jax import cli

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "train_tiny.yaml"


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="train.py", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="a configs/train_*.yaml (default: train_tiny)")
    p.add_argument("--workdir", default="runs/train_tiny", help="metrics.jsonl, tb/ and checkpoints/ go here")
    p.add_argument("--export", default=None, help="after training, write the trained params as a bundle folder")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. train.steps=100 train.stage=adapter mesh.fsdp=4")
    args = p.parse_args(argv)
    for o in args.overrides:
        if "=" not in o:
            raise cli.UserError(f"{o!r}: expected key=value (e.g. train.steps=100)")
    from xdyna_jax.training import config as train_config

    run = train_config.load(args.config, args.overrides)  # before JAX starts: bad keys fail fast
    workdir = cli.check_output_path(args.workdir, kind="dir", option="--workdir")

    import jax

    distributed = bool(os.environ.get("XDYNA_DISTRIBUTED"))
    # compiled programs are cached across runs, so a resume or a re-run does not recompile. Not for CPU
    # processes under jax.distributed: a cached executable in one process beside a fresh compile in the
    # other deadlocked their gloo collectives (seen with jax 0.10.2).
    if not (distributed and os.environ.get("JAX_PLATFORMS") == "cpu"):
        cache = os.environ.get("XDYNA_JAX_CACHE", str(Path.home() / ".cache" / "xdyna_jax" / "jit"))
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if distributed:
        distributed_initialize(jax)
    from xdyna_jax.training import loop
    from xdyna_jax.world.source import make_source  # the tiny world's sources (data.source synthetic / pool)

    evaluator = None
    if run.train.eval_every > 0 and run.data.source != "dataset" and run.train.stage != "vae":
        from xdyna_jax.world.probe import make_probe  # one-step x0 on held-out world clips

        evaluator = make_probe
    try:
        summary = loop.train(run, workdir, source=make_source, evaluator=evaluator)
    except loop.NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if args.export and not summary.get("terminated"):
        # re-read the final state from the checkpoint so the export is exactly what was saved
        path = export_latest(run, workdir, args.export)
        print(f"exported the trained params to {path}")
    return 0


def distributed_initialize(jax) -> None:
    """Multi-host: ``jax.distributed.initialize`` from the environment. On TPU pods and SLURM everything is
    detected; elsewhere set JAX_COORDINATOR_ADDRESS (host:port of process 0), JAX_NUM_PROCESSES and
    JAX_PROCESS_ID (JAX itself reads only the first)."""
    kw = {}
    if os.environ.get("JAX_NUM_PROCESSES"):
        try:
            kw = dict(num_processes=int(os.environ["JAX_NUM_PROCESSES"]), process_id=int(os.environ["JAX_PROCESS_ID"]))
        except (KeyError, ValueError) as e:
            raise cli.UserError("JAX_NUM_PROCESSES and JAX_PROCESS_ID must both be integers "
                                f"(got {os.environ.get('JAX_NUM_PROCESSES')!r}, {os.environ.get('JAX_PROCESS_ID')!r})") from e
    if os.environ.get("JAX_PLATFORMS") == "cpu":  # CPU processes exchange arrays through gloo
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)


def export_latest(run, workdir, out):
    """The latest checkpoint of ``workdir`` (over freshly initialised frozen params) as a bundle folder: the
    training runtime built without data (mesh, state, restore), so the export is exactly what was saved."""
    from xdyna_jax.training import checkpoint, runtime

    rt = runtime.build(run, workdir, data=False, out=lambda *_: None)
    try:
        if rt.meta is None:
            raise cli.UserError(f"--workdir {workdir}: no checkpoint to export")
        return checkpoint.export_params(rt.state, run, out)
    finally:
        runtime.close(rt)


if __name__ == "__main__":
    sys.exit(cli.run(main))
