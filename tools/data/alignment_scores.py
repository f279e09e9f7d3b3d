"""Overlap of our skeleton renders with the authors' aligned ``pose_N.mp4`` (X-Dyna examples).

For each example N: detect the reference pose in ``reference_N`` and the driving poses in a sample of
``driving_N.mp4`` frames (every ``--stride``-th frame), render them (no-head style) unaligned and after
each retargeting variant, and compare each render with frame k of ``pose_N.mp4`` (``xdyna_jax.eval.score``:
IoU of dilated non-black masks, mean distance of colour-found joints). Prints a markdown table.

    PYTHONPATH=. .venv/bin/python tools/data/alignment_scores.py --stride 24
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from xdyna_jax.data.align import align_poses  # noqa: E402
from xdyna_jax.data.pose import extract_poses  # noqa: E402
from xdyna_jax.data.render import render_poses  # noqa: E402
from xdyna_jax.eval.score import joint_distance, mask_iou  # noqa: E402
from xdyna_jax.data.video import read_video  # noqa: E402

VARIANTS = {
    "unaligned": None,
    "aligned (bones, reference neck)": dict(anchor="reference", bones=True),
    "aligned (global only, reference neck)": dict(anchor="reference", bones=False),
    "aligned (bones, driving neck)": dict(anchor="driving", bones=True),
    "aligned (global only, driving neck)": dict(anchor="driving", bones=False),
}


def read_image(path: Path) -> np.ndarray:
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return img[:, :, ::-1].copy()


def score_example(examples: Path, n: int, stride: int, max_frames: int, fit_frames: int) -> dict:
    ref_path = next(examples.glob(f"reference_{n}.*"))
    drv = read_video(examples / f"driving_{n}.mp4", stride=stride, max_frames=max_frames)
    gt = read_video(examples / f"pose_{n}.mp4", stride=stride, max_frames=max_frames)
    t = min(len(drv), len(gt))
    drv, gt = drv[:t], gt[:t]
    ref_pose = extract_poses(read_image(ref_path), static=True)
    drv_pose = extract_poses(drv, static=True)  # sparse frames: detect each independently
    out = {}
    for name, kw in VARIANTS.items():
        poses = drv_pose if kw is None else align_poses(drv_pose, ref_pose, fit_frames=fit_frames, **kw)
        renders = render_poses(poses)
        ious = [mask_iou(a, b) for a, b in zip(renders, gt)]
        dists = [joint_distance(a, b) for a, b in zip(renders, gt)]
        d = np.array([x for x, k in dists if k > 0])
        out[name] = {"iou": float(np.mean(ious)), "iou_min": float(np.min(ious)),
                     "joint_px": float(d.mean()) if len(d) else float("nan"),
                     "joints": float(np.mean([k for _, k in dists]))}
    out["frames"] = t
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=Path, default=ROOT.parent / "shared" / "data" / "xdyna_examples")
    ap.add_argument("--stride", type=int, default=24)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--fit-frames", type=int, default=1, help="driving frames (of the sample) to fit ratios on")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    results, t0 = {}, time.time()
    for n in (1, 2, 3):
        results[n] = score_example(args.examples, n, args.stride, args.max_frames, args.fit_frames)
        print(f"example {n}: {results[n]['frames']} frames, {time.time() - t0:.0f}s", file=sys.stderr)
    print(f"stride {args.stride}, fit_frames {args.fit_frames}\n")
    print("| variant | " + " | ".join(f"ex{n} IoU / joint px" for n in results) + " | mean IoU | mean joint px |")
    print("|---|" + "---|" * (len(results) + 2))
    for name in VARIANTS:
        cells = [f"{results[n][name]['iou']:.3f} / {results[n][name]['joint_px']:.1f}" for n in results]
        mi = np.mean([results[n][name]["iou"] for n in results])
        mj = np.mean([results[n][name]["joint_px"] for n in results])
        print(f"| {name} | " + " | ".join(cells) + f" | {mi:.3f} | {mj:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
