"""Animate reference images with driving motion: X-Dyna sampling from the command line.

  python sample.py                                   # the embedded default: the tiny world's trained weights
  python sample.py --random-weights                  # the tiny networks' seeded random weights
  python sample.py --reference IMG --pose SKELETON.mp4 [--out DIR] [--config FILE] [key=value ...]
  python sample.py --reference IMG --driving VIDEO [--align]   # extract, (align,) render the skeleton
  python sample.py --jobs examples/example.json --weights BUNDLE_DIR [--grid]

Config keys (``key=value``): ``sample.frames``, ``sample.stride``, ``sample.steps``,
``sample.guidance_scale``, ``sample.seed``, ``sample.batch_size``, ``sample.height``, ``sample.width``
(and every other ``sample.*``, ``models.*``, ``mesh.*`` field, ``fps``); unknown keys are rejected.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
CONFIGS = ROOT / "configs"
EXAMPLES = ROOT.parent / "shared" / "data" / "xdyna_examples"
TINY_WORLD = ROOT / "weights" / "tiny_world"  # make tiny-world; docs/TINY_WORLD.md


def build_parser():
    from xdyna_jax import cli

    p = cli.ArgumentParser(prog="sample.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", help="reference image to animate (PNG/JPEG)")
    p.add_argument("--pose", help="rendered no-head skeleton video (the official input)")
    p.add_argument("--driving", help="raw driving video: poses are extracted and rendered (needs the data extra)")
    p.add_argument("--jobs", help="JSON or YAML list of jobs, as the official examples/example.json")
    p.add_argument("--weights", help="bundle folder (python -m xdyna_jax.porting bundle); default: the tiny "
                                     "world's trained weights (weights/tiny_world)")
    p.add_argument("--random-weights", action="store_true",
                   help="seeded random weights of the tiny networks (draw no picture; for checking the pipeline)")
    p.add_argument("--config", help="sample config YAML (default configs/sample_tiny_world.yaml; "
                                    "configs/sample_sd15.yaml with --weights, configs/sample_tiny.yaml with "
                                    "--random-weights)")
    p.add_argument("--out", default="outputs", help="output folder (default outputs/)")
    p.add_argument("--grid", action="store_true", help="also write {name}_grid.mp4: reference | conditions | result")
    p.add_argument("--align", action="store_true",
                   help="with --driving: retarget the skeleton to the reference body (off: the authors' "
                        "skeletons keep the driver's proportions)")
    p.add_argument("--weights-seed", type=cli.int_range(0), default=0, help="seed of the random weights")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. sample.steps=10")
    return p


def main(argv=None) -> int:
    from xdyna_jax import cli

    args = build_parser().parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise cli.UserError(f"{bad[0]!r}: expected a key=value config override (e.g. sample.steps=10)")
    if args.jobs and (args.reference or args.pose or args.driving):
        raise cli.UserError("give either --jobs or --reference with --pose/--driving, not both")
    if args.reference and not (args.pose or args.driving):
        raise cli.UserError("--reference needs --pose (a skeleton video) or --driving (a raw video)")
    if (args.pose or args.driving) and not args.reference:
        raise cli.UserError("--pose/--driving need --reference (the image to animate)")
    if args.weights and args.random_weights:
        raise cli.UserError("give either --weights or --random-weights, not both")
    if args.align and not args.driving:
        raise cli.UserError("--align goes with --driving (a rendered --pose skeleton is used as it is)")

    import jax

    from xdyna_jax.sampling import jobs as jobs_lib
    from xdyna_jax.sampling import run
    from xdyna_jax.sharding import make_mesh

    # compiled programs persist between runs (the sampler's programs compile for minutes on 2 cores)
    jax.config.update("jax_compilation_cache_dir",
                      os.environ.get("XDYNA_JAX_CACHE", os.path.expanduser("~/.cache/xdyna_jax/jit")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    world = not (args.weights or args.random_weights)
    if world and not (TINY_WORLD / "config.yaml").is_file():
        # not shipped yet: the trained tiny world does not beat its static baseline (docs/TINY_WORLD.md)
        print(f"{TINY_WORLD} is absent (`make tiny-world` trains it; docs/TINY_WORLD.md): using random weights")
        world, args.random_weights = False, True
    config = args.config or CONFIGS / ("sample_sd15.yaml" if args.weights else
                                       "sample_tiny.yaml" if args.random_weights else "sample_tiny_world.yaml")
    model_overrides = [o[len("models."):] for o in args.overrides if o.startswith("models.")]
    cfg = run.load_run_config(config, args.overrides)
    run.check_config(cfg)
    out = cli.check_output_path(args.out, kind="dir", option="--out")

    inputs = None
    if args.jobs:
        jobs = jobs_lib.load_jobs(args.jobs)
    elif args.reference:
        jobs = [jobs_lib.make_job(args.reference, pose=args.pose, driving=args.driving)]
    elif world:
        from xdyna_jax.porting.bundle import load_weights
        from xdyna_jax.world.jobs import default_jobs

        world_params, world_models = load_weights(TINY_WORLD)
        where = EXAMPLES if EXAMPLES.is_dir() else None
        jobs, inputs = default_jobs(where, cfg.sample.frames, cfg.sample.stride, cfg.sample.height, cfg.sample.width,
                                    face=world_models.face_controlnet is not None)
    else:
        where = EXAMPLES if EXAMPLES.is_dir() else None
        jobs = run.default_inputs(where, out / "default_inputs", cfg.sample.height, cfg.sample.width,
                                  cfg.sample.frames * cfg.sample.stride)
        print(f"embedded default: {jobs[0].reference.name} + {jobs[0].pose.name}"
              + ("" if where else " (generated; ../shared/data/xdyna_examples/ is absent)"))
    if inputs is None:
        jobs_lib.check_files(jobs)  # missing or empty inputs fail before any weights are loaded
    mesh = make_mesh(cfg.mesh)
    if args.weights:
        params, models, tokenizer = run.weights_from_bundle(args.weights, cfg, model_overrides, mesh)
        import dataclasses

        cfg = dataclasses.replace(cfg, models=models)
    elif world:
        params, models = world_params, world_models
        import dataclasses

        cfg = dataclasses.replace(cfg, models=models)
        params, tokenizer = run.place(params, cfg, mesh), None
        print(f"the tiny world's trained weights ({TINY_WORLD}; docs/TINY_WORLD.md)")
    else:
        print(f"random weights (seed {args.weights_seed}) of the {Path(config).name} networks: they draw no "
              f"meaningful picture; pass --weights BUNDLE for a trained model")
        params, tokenizer = run.random_weights(cfg, args.weights_seed, mesh), None
    if inputs is not None:
        written = run.write_videos(cfg, params, jobs, inputs, out, grid=True, mesh=mesh,
                                   progress=not args.no_progress)
    else:
        written = run.run_jobs(cfg, params, jobs, out, tokenizer=tokenizer, grid=args.grid, align=args.align,
                               mesh=mesh, progress=not args.no_progress)
    print(f"wrote {len(written)} video(s) to {out}")
    return 0


if __name__ == "__main__":
    from xdyna_jax import cli

    sys.exit(cli.run(main))
