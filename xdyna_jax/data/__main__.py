"""``python -m xdyna_jax.data extract|render|align|score|build``.

  extract VIDEO_OR_IMAGE... --out DIR [--max-frames N] [--stride S] [--smooth W] [--static|--track]
                                                                                   -> DIR/<stem>.npz
  render  POSES.npz... --out DIR [--fps F] [--size H W] [--no-hands]               -> DIR/<stem>.mp4
  align   --driving POSES.npz|VIDEO --reference POSES.npz|IMAGE --out OUT.npz [--fit-frames N]
          [--anchor driving|reference] [--bones|--no-bones] [--render OUT.mp4]
  score   POSES.npz|SKELETON.mp4 --against AUTHORS_POSE.mp4 [--stride S] [--max-frames N]
  build   --out DIR [--human DIR] [--scene DIR] [--config build.yaml] [--set key=value ...]
          [--conditions MODULE:FUNCTION] [--overwrite]
          [--vae VAE_DIR] [--image-encoder IMAGE_ENCODER_DIR] [--encode-batch N]
          [--beam [--beam-options "--runner=... --direct_num_workers=N ..."]]

A poses ``.npz`` holds ``body (T,18,3)``, ``hands (T,2,21,3)``, ``face (T,468,3)``, ``height``, ``width``
(``pose.Poses``). ``extract`` tracks across consecutive frames and detects every frame on its own when
they are far apart (``--stride`` >= ``STATIC_STRIDE``, or ``--static``); images are always detected on
their own. ``align`` defaults to the variant closest to the authors' skeletons (``docs/DATA.md``):
driving neck, global similarity only. ``score`` compares skeletons with the authors' ``pose_N.mp4``,
sampled with the same stride. ``build`` writes an array_record dataset (``datasets.py``); its settings
are ``datasets.BuildSettings`` fields (YAML file and/or ``--set``); ``--vae`` and ``--image-encoder``
pre-encode every frame (``encode.py``). ``--beam`` runs the same build as an Apache Beam pipeline
(``beam.py``; ``--beam-options`` are Beam's pipeline flags): the same dataset, built by a runner's workers.
Options are checked before any work; every output is written under a temporary name and renamed when
complete. Progress goes to stderr, the summary to stdout; errors are one ``error: ...`` line on stderr
and exit code 2 (``xdyna_jax.cli``).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from xdyna_jax import cli
from xdyna_jax import config as config_lib
from xdyna_jax.cli import UserError

from .datasets import BuildSettings, build_dataset, count_detections, dataset_dir, list_videos
from .files import is_image, load_poses, read_media, save_poses
from .video import VideoError, read_video, write_video

STATIC_STRIDE = 3  # frames this far apart are detected one by one: tracking loses them (docs/DATA.md)


def progress(label: str, done: int, total: int, name: str = "") -> None:
    print(f"[{label} {done}/{total}] {name}".rstrip(), file=sys.stderr, flush=True)


def _modules(*names: str) -> list:
    out = []
    for name in names:
        try:
            out.append(importlib.import_module(f"xdyna_jax.data.{name}"))
        except ImportError as e:
            raise UserError(f"xdyna_jax.data.{name} is not available ({e}); install the `data` extra") from e
    return out


def extract_mode(path: Path, stride: int = 1, static: bool = False, track: bool = False) -> tuple[bool, str]:
    """(static, why): how frames of ``path`` are detected."""
    if is_image(path):
        return True, "static (an image)"
    if static or track:
        return static, "static (--static)" if static else "tracking (--track)"
    if stride >= STATIC_STRIDE:
        return True, f"static (stride {stride} >= {STATIC_STRIDE}: frames far apart)"
    return False, f"tracking (stride {stride} < {STATIC_STRIDE}: near frames)"


def poses_of(path: Path, option: str):
    """Poses from a ``.npz``, or extracted from an image / video (tracking a video's consecutive frames)."""
    if path.suffix.lower() == ".npz":
        return load_poses(path, option)
    (pose,) = _modules("pose")
    static, _ = extract_mode(path)
    return pose.extract_poses(read_media(path, option=option), static=static)


def _unique_outputs(inputs, out: Path, suffix: str) -> list[Path]:
    outputs = [out / f"{p.stem}{suffix}" for p in inputs]
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, outputs):
        if dst in seen:
            raise UserError(f"inputs {seen[dst]} and {src} would both write {dst} (rename one)")
        seen[dst] = src
    return outputs


def cmd_extract(args) -> str:
    cli.check_output_path(args.out, kind="dir")
    outputs = _unique_outputs(args.inputs, args.out, ".npz")
    (pose,) = _modules("pose")
    frames = det = 0
    skipped, lines, done = [], [], []
    with cli.listing_completed(done):
        for n, (path, dst) in enumerate(zip(args.inputs, outputs)):
            progress("extract", n, len(args.inputs), path.name)
            try:
                rgb = read_media(path, args.max_frames, args.stride)
            except (VideoError, UserError) as e:
                skipped.append(cli.one_line(e))
                continue
            static, why = extract_mode(path, args.stride, args.static, args.track)
            poses = pose.extract_poses(rgb, static=static, smooth_window=args.smooth)
            save_poses(dst, poses)
            done.append(dst)
            frames, det = frames + len(poses), det + count_detections(poses)
            lines.append(f"  {dst}: {len(poses)} frames, {why}")
    progress("extract", len(args.inputs), len(args.inputs))
    if not done:
        raise UserError("no input could be read: " + "; ".join(skipped))
    return "\n".join([f"inputs: {len(done)}", f"frames: {frames}", f"detections: {det}",
                      f"misses: {frames - det}", f"skipped files: {len(skipped)}"]
                     + [f"  skipped {s}" for s in skipped] + ["written:"] + lines)


def cmd_render(args) -> str:
    cli.check_output_path(args.out, kind="dir")
    outputs = _unique_outputs(args.inputs, args.out, ".mp4")
    (render,) = _modules("render")
    loaded, skipped = [], []
    for path, dst in zip(args.inputs, outputs):  # read every input before writing anything
        try:
            poses = load_poses(path)
        except UserError as e:
            skipped.append(cli.one_line(e))
            continue
        h, w = args.size or (poses.height, poses.width)
        if h % 2 or w % 2:
            skipped.append(f"{path}: frame size {poses.height}x{poses.width} has an odd side (H.264 needs even "
                           f"sides; give --size H W)")
            continue
        loaded.append((path, dst, poses, h, w))
    if not loaded:
        raise UserError("no input could be rendered: " + "; ".join(skipped))
    frames, done = 0, []
    with cli.listing_completed(done):
        for n, (path, dst, poses, h, w) in enumerate(loaded):
            progress("render", n, len(loaded), path.name)
            video = render.render_poses(_resized(poses, h, w), hands=not args.no_hands, height=h, width=w)
            write_video(dst, video, fps=args.fps)
            done.append(dst)
            frames += len(video)
    progress("render", len(loaded), len(loaded))
    return "\n".join([f"videos: {len(done)}", f"frames: {frames}", f"skipped files: {len(skipped)}"]
                     + [f"  skipped {s}" for s in skipped] + [f"out: {args.out}"] + [f"  {d}" for d in done])


def _resized(poses, h: int, w: int):
    """Keypoints scaled to an ``h`` x ``w`` canvas (``--size``), so the skeleton is resized, not cropped."""
    if (h, w) == (poses.height, poses.width):
        return poses
    out = poses.copy()
    scale = np.array([w / poses.width, h / poses.height], np.float32)
    for arr in (out.body, out.hands, out.face):
        arr[..., :2] *= scale
    out.height, out.width = h, w
    return out


VARIANT_NAMES = {("reference", True): "bones, reference neck", ("reference", False): "global only, reference neck",
                 ("driving", True): "bones, driving neck", ("driving", False): "global only, driving neck"}


def _has_neck(poses) -> bool:
    return bool((poses.body[:, 1, 2] >= 0.3).any())


def cmd_align(args) -> str:
    cli.check_output_path(args.out, kind="file", suffixes=(".npz",))
    if args.render is not None:
        cli.check_output_path(args.render, kind="file", option="--render", suffixes=(".mp4",))
        if args.render.absolute() == args.out.absolute():
            raise UserError(f"--render {args.render}: the same file as --out")
    (align,) = _modules("align")
    driving, reference = poses_of(args.driving, "--driving"), poses_of(args.reference, "--reference")
    for opt, path, poses in (("--driving", args.driving, driving), ("--reference", args.reference, reference)):
        if not _has_neck(poses):
            raise UserError(f"{opt} {path}: no body found in any frame (a neck, i.e. both shoulders, is needed "
                            f"to align)")
    aligned = align.align_poses(driving, reference, fit_frames=args.fit_frames, anchor=args.anchor,
                                bones=args.bones)
    with contextlib.ExitStack() as stack:  # both outputs renamed into place only when both are complete
        if args.render is not None:
            (render,) = _modules("render")
            write_video(stack.enter_context(cli.atomic_file(args.render)), render.render_poses(aligned),
                        fps=args.fps)
        save_poses(stack.enter_context(cli.atomic_file(args.out)), aligned)
    det = count_detections(aligned)
    return "\n".join([f"variant: {VARIANT_NAMES[args.anchor, args.bones]} (--anchor {args.anchor}, "
                      f"{'--bones' if args.bones else '--no-bones'})", f"frames: {len(aligned)}",
                      f"detections: {det}", f"misses: {len(aligned) - det}", f"out: {args.out}"]
                     + ([f"render: {args.render}"] if args.render is not None else []))


def cmd_score(args) -> str:
    (render,) = _modules("render")
    from xdyna_jax.eval import score  # every score lives in the eval room (needs OpenCV, a data dependency)
    if args.skeleton.suffix.lower() == ".npz":
        ours = render.render_poses(load_poses(args.skeleton))
    else:
        ours = read_video(args.skeleton, max_frames=args.max_frames)
    theirs = read_video(args.against, stride=args.stride, max_frames=args.max_frames)
    t = min(len(ours), len(theirs), args.max_frames or len(ours))
    if ours.shape[1:3] != theirs.shape[1:3]:
        raise UserError(f"{args.skeleton}: frames are {ours.shape[1]}x{ours.shape[2]}, --against {args.against} "
                        f"frames {theirs.shape[1]}x{theirs.shape[2]} (expected the same size)")
    ious = [score.mask_iou(a, b) for a, b in zip(ours[:t], theirs[:t])]
    dists = [score.joint_distance(a, b) for a, b in zip(ours[:t], theirs[:t])]
    d = np.array([x for x, k in dists if k > 0])
    joints = f"{d.mean():.1f}" if len(d) else "nan"
    return "\n".join([f"frames: {t}", f"iou: {np.mean(ious):.3f} (min {np.min(ious):.3f})",
                      f"joint px: {joints} ({np.mean([k for _, k in dists]):.1f} joints per frame)"])


def load_conditions(spec: str):
    module, _, func = spec.partition(":")
    if not func:
        raise UserError(f"--conditions {spec!r}: expected MODULE:FUNCTION")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise UserError(f"--conditions {spec!r}: cannot import ({e})") from e


def encoder_factory(args):
    """A picklable zero-argument callable giving ``(extra_features, extra_fn)`` from ``--vae`` /
    ``--image-encoder`` (called here, and once per worker by a Beam build), or None."""
    if args.vae is None and args.image_encoder is None:
        return None
    from .encode import encoders_from_paths
    as_str = lambda p: str(p) if p is not None else None  # noqa: E731
    return functools.partial(encoders_from_paths, as_str(args.vae), as_str(args.image_encoder), args.encode_batch)


def beam_pipeline(args, extras):
    """The ``--beam`` execution (its options checked now, before anything is loaded), or None."""
    if args.beam_options is not None and not args.beam:
        raise UserError(f"--beam-options {args.beam_options!r}: only used with --beam")
    if not args.beam:
        return None
    from .beam import BeamPipeline  # imports apache_beam (the `beam` extra), a UserError without it
    return BeamPipeline(args.beam_options, extras=extras)


def cmd_build(args) -> str:
    if args.human is None and args.scene is None:
        raise UserError("build: give --human, --scene or both (video folders)")
    for opt, path in (("--human", args.human), ("--scene", args.scene), ("--vae", args.vae),
                      ("--image-encoder", args.image_encoder)):
        if path is not None and not path.exists():
            raise UserError(f"{opt} {path}: no such folder or file")
    for folder in (args.human, args.scene):
        if folder is not None:
            list_videos(folder)  # an empty folder fails here, before anything is loaded
    settings = config_lib.load(BuildSettings, args.config, args.set)
    conditions = load_conditions(args.conditions) if args.conditions else None
    extras = encoder_factory(args)
    pipeline = beam_pipeline(args, extras)
    cli.check_output_path(args.out, kind="dir")
    target = dataset_dir(args.out)
    if target.exists() and not args.overwrite:
        raise UserError(f"{target}: dataset already exists (pass --overwrite)")
    features, extra_fn = extras() if extras is not None else (None, None)
    if pipeline is not None:
        n = sum(len(list_videos(f)) for f in (args.human, args.scene) if f is not None)
        print(f"[build beam] {n} videos on {pipeline.description}", file=sys.stderr, flush=True)
        extra_fn = None  # the workers make their own from `extras`
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its own status lines
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
        report = build_dataset(args.out, args.human, args.scene, settings, conditions, overwrite=args.overwrite,
                               extra_features=features, extra_fn=extra_fn, pipeline=pipeline,
                               progress=lambda split, done, total, name: progress(f"build {split}", done, total,
                                                                                  name))
    return report.summary() + (f"\n{pipeline.summary()}" if pipeline is not None else "")


def parser() -> argparse.ArgumentParser:
    pos, nonneg, fps = cli.int_range(1), cli.int_range(0), cli.float_range(0, 1000, lo_open=True)
    p = cli.ArgumentParser(prog="python -m xdyna_jax.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="videos / images -> poses .npz")
    e.add_argument("inputs", nargs="+", type=Path)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--max-frames", type=pos)
    e.add_argument("--stride", type=pos, default=1, help=f"every S-th frame; S >= {STATIC_STRIDE} detects "
                                                         f"each frame on its own")
    e.add_argument("--smooth", type=nonneg, default=0, help="temporal smoothing window (frames; 0 = off)")
    mode = e.add_mutually_exclusive_group()
    mode.add_argument("--static", action="store_true", help="detect every frame on its own")
    mode.add_argument("--track", action="store_true", help="track across frames whatever the stride")
    r = sub.add_parser("render", help="poses .npz -> skeleton mp4")
    r.add_argument("inputs", nargs="+", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--fps", type=fps, default=8.0)
    r.add_argument("--size", type=cli.even_int(), nargs=2, metavar=("H", "W"), help="resize the skeleton")
    r.add_argument("--no-hands", action="store_true")
    a = sub.add_parser("align", help="retarget driving poses onto a reference body")
    a.add_argument("--driving", type=Path, required=True)
    a.add_argument("--reference", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True, help="aligned poses .npz")
    a.add_argument("--fit-frames", type=pos, default=10)
    a.add_argument("--anchor", choices=("driving", "reference"), default="driving",
                   help="where the first driving neck goes (default driving: closest to the authors' skeletons)")
    a.add_argument("--bones", action=argparse.BooleanOptionalAction, default=False,
                   help="retarget each bone to the reference length (default: global similarity only)")
    a.add_argument("--render", type=Path, help="also write the aligned skeleton video here (.mp4)")
    a.add_argument("--fps", type=fps, default=8.0)
    s = sub.add_parser("score", help="overlap of a skeleton with the authors' pose_N.mp4")
    s.add_argument("skeleton", type=Path, help="poses .npz (rendered here) or a skeleton .mp4")
    s.add_argument("--against", type=Path, required=True, help="the authors' skeleton video (pose_N.mp4)")
    s.add_argument("--stride", type=pos, default=1, help="the stride the skeleton's frames were extracted with")
    s.add_argument("--max-frames", type=pos)
    b = sub.add_parser("build", help="video folders -> array_record dataset")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--human", type=Path)
    b.add_argument("--scene", type=Path)
    b.add_argument("--config", type=Path, help="YAML of BuildSettings fields")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--conditions", help="MODULE:FUNCTION frames -> {pose, face, meta} (default: pose models)")
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--vae", type=Path, help="pre-encode VAE posteriors with this diffusers vae/ folder or file")
    b.add_argument("--image-encoder", type=Path,
                   help="pre-encode CLIP hidden_states[-2] with this transformers image_encoder/ folder or file")
    b.add_argument("--encode-batch", type=pos, default=8, help="frames per encoder call")
    b.add_argument("--beam", action="store_true", help="run the build as an Apache Beam pipeline (the `beam` extra)")
    b.add_argument("--beam-options", metavar="FLAGS",
                   help='Beam pipeline flags in one string, e.g. "--direct_num_workers=2 '
                        '--direct_running_mode=multi_processing" or "--runner=DataflowRunner ..." (docs/DATA.md)')
    return p


COMMANDS = {"extract": cmd_extract, "render": cmd_render, "align": cmd_align, "score": cmd_score,
            "build": cmd_build}


def _glue_beam_options(argv: list[str]) -> list[str]:
    """``--beam-options VALUE`` as ``--beam-options=VALUE``: argparse takes a separate value that starts
    with ``--`` and holds no space (one Beam flag, ``"--direct_num_workers=2"``) for an option of its own."""
    out, it = [], iter(argv)
    for a in it:
        out.append(a)
        if a == "--beam-options":
            value = next(it, None)
            if value is not None:
                out[-1] = f"--beam-options={value}"
    return out


def _run(argv) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(_glue_beam_options(argv))
    t0 = time.time()
    summary = COMMANDS[args.cmd](args)
    print(summary)
    print(f"time: {time.time() - t0:.1f}s")


def main(argv=None) -> int:
    """Exit code 0, or 2 with one ``error: ...`` line for bad input (``xdyna_jax.cli.run``)."""
    return cli.run(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
