"""``python -m xdyna_jax.data extract|render|align|build``.

  extract VIDEO_OR_IMAGE... --out DIR [--max-frames N] [--stride S] [--smooth W]   -> DIR/<stem>.npz
  render  POSES.npz... --out DIR [--fps F] [--size H W] [--no-hands]               -> DIR/<stem>.mp4
  align   --driving POSES.npz|VIDEO --reference POSES.npz|IMAGE --out OUT.npz [--fit-frames N]
          [--anchor reference|driving] [--render OUT.mp4]
  build   --out DIR [--human DIR] [--scene DIR] [--config build.yaml] [--set key=value ...]
          [--conditions MODULE:FUNCTION] [--overwrite]
          [--vae VAE_DIR] [--image-encoder IMAGE_ENCODER_DIR] [--encode-batch N]

A poses ``.npz`` holds ``body (T,18,3)``, ``hands (T,2,21,3)``, ``face (T,468,3)``, ``height``, ``width``
(``pose.Poses``). ``build`` writes an array_record dataset (``datasets.py``); its settings are
``datasets.BuildSettings`` fields (YAML file and/or ``--set``); ``--vae`` (a diffusers ``vae/`` folder)
and ``--image-encoder`` (IP-Adapter's ``image_encoder/``) pre-encode every frame (``encode.py``).
Progress goes to stderr, the summary to stdout; errors are one ``error: ...`` line on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
from pathlib import Path

import numpy as np

from xdyna_jax import config as config_lib

from .datasets import BuildSettings, DatasetError, build_dataset, count_detections
from .video import VideoError, read_video, write_video

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class CliError(RuntimeError):
    pass


def progress(label: str, done: int, total: int, name: str = "") -> None:
    print(f"[{label} {done}/{total}] {name}".rstrip(), file=sys.stderr, flush=True)


def _modules(*names: str) -> list:
    out = []
    for name in names:
        try:
            out.append(importlib.import_module(f"xdyna_jax.data.{name}"))
        except ImportError as e:
            raise CliError(f"xdyna_jax.data.{name} is not available ({e})") from e
    return out


def save_poses(path: Path, poses) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, body=poses.body, hands=poses.hands, face=poses.face,
                        height=poses.height, width=poses.width)


def load_poses(path: Path):
    (pose,) = _modules("pose")
    if not path.is_file():
        raise CliError(f"{path}: poses file not found")
    try:
        with np.load(path) as z:
            return pose.Poses(z["body"], z["hands"], z["face"], int(z["height"]), int(z["width"]))
    except (OSError, ValueError, KeyError) as e:
        raise CliError(f"{path}: not a poses .npz (expected body, hands, face, height, width): {e}") from e


def read_media(path: Path, max_frames=None, stride: int = 1) -> np.ndarray:
    """(T, H, W, 3) RGB frames of a video, or a 1-frame array of an image."""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        import cv2
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise CliError(f"{path}: cannot read image")
        return img[None, ..., ::-1].copy()
    return read_video(path, stride=stride, max_frames=max_frames)


def poses_of(path: Path, smooth: int = 0):
    """Poses from a ``.npz`` or by extracting them from an image / video."""
    if path.suffix == ".npz":
        return load_poses(path)
    (pose,) = _modules("pose")
    return pose.extract_poses(read_media(path), smooth_window=smooth)


def cmd_extract(args) -> str:
    (pose,) = _modules("pose")
    videos = frames = det = 0
    skipped = []
    for n, path in enumerate(args.inputs):
        progress("extract", n, len(args.inputs), path.name)
        try:
            rgb = read_media(path, args.max_frames, args.stride)
        except (VideoError, CliError) as e:
            skipped.append(f"{path}: {e}")
            continue
        poses = pose.extract_poses(rgb, smooth_window=args.smooth)
        save_poses(args.out / f"{path.stem}.npz", poses)
        videos, frames, det = videos + 1, frames + len(poses), det + count_detections(poses)
    progress("extract", len(args.inputs), len(args.inputs))
    lines = [f"videos: {videos}", f"frames: {frames}", f"detections: {det}", f"misses: {frames - det}",
             f"skipped files: {len(skipped)}"] + [f"  skipped {s}" for s in skipped]
    if videos == 0:
        raise CliError("no input could be read: " + "; ".join(skipped))
    return "\n".join(lines)


def cmd_render(args) -> str:
    (render,) = _modules("render")
    frames = 0
    for n, path in enumerate(args.inputs):
        progress("render", n, len(args.inputs), path.name)
        poses = load_poses(path)
        h, w = args.size or (poses.height, poses.width)
        video = render.render_poses(poses, hands=not args.no_hands, height=h, width=w)
        write_video(args.out / f"{path.stem}.mp4", video, fps=args.fps)
        frames += len(video)
    progress("render", len(args.inputs), len(args.inputs))
    return f"videos: {len(args.inputs)}\nframes: {frames}\nout: {args.out}"


def cmd_align(args) -> str:
    (align,) = _modules("align")
    driving, reference = poses_of(args.driving), poses_of(args.reference)
    aligned = align.align_poses(driving, reference, fit_frames=args.fit_frames, anchor=args.anchor)
    save_poses(args.out, aligned)
    if args.render is not None:
        (render,) = _modules("render")
        write_video(args.render, render.render_poses(aligned), fps=args.fps)
    det = count_detections(aligned)
    return f"frames: {len(aligned)}\ndetections: {det}\nmisses: {len(aligned) - det}\nout: {args.out}"


def load_conditions(spec: str):
    module, _, func = spec.partition(":")
    if not func:
        raise CliError(f"--conditions {spec!r}: expected MODULE:FUNCTION")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise CliError(f"--conditions {spec!r}: cannot import ({e})") from e


def encoders(args):
    """``(extra_features, extra_fn)`` from ``--vae`` / ``--image-encoder``, or ``(None, None)``."""
    if args.vae is None and args.image_encoder is None:
        return None, None
    from xdyna_jax.porting import loaders

    from .encode import frame_encoders
    vae = loaders.load_vae(args.vae) if args.vae is not None else None
    clip = loaders.load_clip_vision(args.image_encoder) if args.image_encoder is not None else None
    return frame_encoders(vae, clip, batch_size=args.encode_batch)


def cmd_build(args) -> str:
    settings = config_lib.load(BuildSettings, args.config, args.set)
    conditions = load_conditions(args.conditions) if args.conditions else None
    features, extra_fn = encoders(args)
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its own status lines
        import tensorflow_datasets as tfds
        tfds.disable_progress_bar()
        report = build_dataset(args.out, args.human, args.scene, settings, conditions, overwrite=args.overwrite,
                               extra_features=features, extra_fn=extra_fn,
                               progress=lambda split, done, total, name: progress(f"build {split}", done, total,
                                                                                  name))
    return report.summary()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m xdyna_jax.data", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("extract", help="videos / images -> poses .npz")
    e.add_argument("inputs", nargs="+", type=Path)
    e.add_argument("--out", type=Path, required=True)
    e.add_argument("--max-frames", type=int)
    e.add_argument("--stride", type=int, default=1)
    e.add_argument("--smooth", type=int, default=0, help="temporal smoothing window (frames; 0 = off)")
    r = sub.add_parser("render", help="poses .npz -> skeleton mp4")
    r.add_argument("inputs", nargs="+", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--fps", type=float, default=8.0)
    r.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    r.add_argument("--no-hands", action="store_true")
    a = sub.add_parser("align", help="retarget driving poses onto a reference body")
    a.add_argument("--driving", type=Path, required=True)
    a.add_argument("--reference", type=Path, required=True)
    a.add_argument("--out", type=Path, required=True)
    a.add_argument("--fit-frames", type=int, default=10)
    a.add_argument("--anchor", choices=("reference", "driving"), default="reference")
    a.add_argument("--render", type=Path, help="also write the aligned skeleton video here")
    a.add_argument("--fps", type=float, default=8.0)
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
    b.add_argument("--encode-batch", type=int, default=8, help="frames per encoder call")
    return p


COMMANDS = {"extract": cmd_extract, "render": cmd_render, "align": cmd_align, "build": cmd_build}


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    t0 = time.time()
    try:
        summary = COMMANDS[args.cmd](args)
    except (CliError, DatasetError, VideoError, config_lib.ConfigError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary)
    print(f"time: {time.time() - t0:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
