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

    # compiled programs are cached across runs, so a resume or a re-run does not recompile
    cache = os.environ.get("XDYNA_JAX_CACHE", str(Path.home() / ".cache" / "xdyna_jax" / "jit"))
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    if os.environ.get("XDYNA_DISTRIBUTED"):  # multi-host: coordinator etc. from the environment (TPU: automatic)
        jax.distributed.initialize()
    from xdyna_jax.training import loop

    try:
        summary = loop.train(run, workdir)
    except loop.NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    if args.export and not summary.get("terminated"):
        # re-read the final state from the checkpoint so the export is exactly what was saved
        path = export_latest(run, workdir, args.export)
        print(f"exported the trained params to {path}")
    return 0


def export_latest(run, workdir, out):
    """The latest checkpoint of ``workdir`` (over freshly initialised frozen params) as a bundle folder."""
    from xdyna_jax.sharding import make_mesh
    from xdyna_jax.training import checkpoint, loop
    from xdyna_jax.training.state import init_state

    mesh = make_mesh(run.mesh, loop.mesh_devices(run.mesh))
    state = init_state(run, mesh, loop.initial_params(run, mesh))
    manager = checkpoint.make_manager(Path(workdir) / "checkpoints", run.train.max_to_keep)
    try:
        restored = checkpoint.restore_latest(manager, state, run)
    finally:
        manager.close()
    if restored is None:
        raise cli.UserError(f"--workdir {workdir}: no checkpoint to export")
    return checkpoint.export_params(restored[0], run, out)


if __name__ == "__main__":
    sys.exit(cli.run(main))
