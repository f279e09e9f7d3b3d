"""``python -m xdyna_jax.eval --generated DIR --driving DIR [--reference DIR] [--out DIR]``.

Scores every generated video against the driving video of the same name (self-reenactment: the driving
video is the target) and writes ``metrics.json``, ``report.md``, ``details.json``, ``plots/`` and
``worst_frames.png`` into ``--out`` (default ``<generated>_eval`` beside the generated folder). What each
number means and the protocol: ``docs/EVAL.md``. Everything runs offline on the CPU (or any JAX device).

Options are checked and every file is opened before any work; the output folder is written under a
temporary name and renamed when complete. Progress goes to stderr, the summary to stdout; errors are one
``error: ...`` line on stderr and exit code 2 (``xdyna_jax.cli``).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from xdyna_jax import cli
from xdyna_jax.cli import UserError

from .evaluate import GROUPS, Options, check_extras, evaluate_pair, pooled, protocol
from xdyna_jax.extras import require
from .pairing import MIN_SIDE, check_readable, pair_folders

os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ info/warning lines would drown the progress bar

SUMMARY_KEYS = ("psnr", "ssim", "lpips", "fvd", "pose_pck", "face_det_rate", "flow_fg", "flow_bg")


def metric_list(text: str) -> tuple:
    names = [s.strip() for s in text.split(",") if s.strip()]
    bad = [n for n in names if n not in GROUPS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(GROUPS)}, got {text!r}")
    return tuple(g for g in GROUPS if g in names)


def parser() -> argparse.ArgumentParser:
    pos = cli.int_range(1)
    p = cli.ArgumentParser(prog="python -m xdyna_jax.eval", description=__doc__.split("\n\n")[1])
    p.add_argument("--generated", type=Path, required=True, help="folder of generated videos")
    p.add_argument("--driving", type=Path, required=True, help="folder of driving (ground-truth) videos, same names")
    p.add_argument("--reference", type=Path, help="folder of reference images, same names (adds ref_lpips)")
    p.add_argument("--out", type=Path, help="output folder (default: <generated>_eval)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--metrics", type=metric_list, default=GROUPS,
                   help=f"comma-separated subset of {','.join(GROUPS)} (default: all)")
    p.add_argument("--stride", type=pos, default=1, help="compare generated frame k with driving frame k*S")
    p.add_argument("--max-frames", type=pos, help="compare at most N frames per video")
    p.add_argument("--size", type=cli.int_range(MIN_SIDE), nargs=2, metavar=("H", "W"),
                   help="resize both videos to H x W (default: the driving size)")
    p.add_argument("--batch", type=pos, default=8, help="frames per LPIPS / SSIM call")
    p.add_argument("--clip-batch", type=pos, default=1,
                   help="16-frame clips per I3D call (1 on a CPU, where batching gains nothing)")
    p.add_argument("--fvd-stride", type=pos, default=8, help="frames between the starts of FVD's 16-frame clips")
    p.add_argument("--pck-alpha", type=cli.float_range(0, 1, lo_open=True), default=0.1,
                   help="PCK threshold, fraction of the driving person's size")
    p.add_argument("--lpips-net", choices=("alex", "vgg"), default="alex")
    return p


def _run(argv) -> None:
    args = parser().parse_args(argv)
    t0 = time.time()
    out = args.out if args.out is not None else args.generated.absolute().parent / f"{args.generated.name}_eval"
    cli.check_output_path(out, kind="dir", overwrite=args.overwrite, hint=" (pass --overwrite to replace it)")
    opts = Options(metrics=args.metrics, stride=args.stride, max_frames=args.max_frames,
                   size=tuple(args.size) if args.size else None, batch=args.batch, clip_batch=args.clip_batch,
                   fvd_stride=args.fvd_stride, pck_alpha=args.pck_alpha, lpips_net=args.lpips_net)
    check_extras(opts.metrics)
    for module in ("matplotlib", "cv2"):
        require(module, "the report (plots, contact sheet)")
    for opt, folder in (("--generated", args.generated), ("--driving", args.driving), ("--reference", args.reference)):
        if folder is not None and out.resolve() in (folder.resolve(), *folder.resolve().parents):
            raise UserError(f"--out {out}: holds the {opt} folder {folder} (expected a folder outside the inputs)")
    pairs, ignored = pair_folders(args.generated, args.driving, args.reference)
    check_readable(pairs, sized=args.size is not None)

    from tqdm import tqdm

    results, cache = {}, {}
    with tqdm(total=len(pairs), unit="video", file=sys.stderr, desc="eval") as bar:
        for pair in pairs:
            def step(what, name=pair.name):
                bar.set_postfix_str(f"{name}: {what}")
            results[pair.name] = evaluate_pair(pair, opts, cache, step)
            bar.update(1)
    mean = pooled(results)
    from .report import write_report

    with cli.atomic_dir(out, overwrite=args.overwrite) as tmp:
        write_report(tmp, results, mean, protocol(opts))
    lines = [f"videos: {len(pairs)}", f"ignored files (not {'videos or images' if args.reference else 'videos'}): "
             f"{len(ignored)}"] + [f"  {p}" for p in ignored]
    lines.append("mean: " + ", ".join(f"{k} {mean[k]:.4g}" for k in SUMMARY_KEYS if k in mean))
    lines += [f"out: {out}", f"time: {time.time() - t0:.1f}s"]
    print("\n".join(lines))


def main(argv=None) -> int:
    """Exit code 0, or 2 with one ``error: ...`` line for bad input (``xdyna_jax.cli.run``)."""
    return cli.run(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
