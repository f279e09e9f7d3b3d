"""How far are the authors' "aligned" pose_N skeletons from the raw driving skeleton?

For each example: detect driving poses (MediaPipe, every ``--stride``-th frame), render them unaligned, find
the body joints by colour in our renders and in ``pose_N`` (``score.find_joints``), and fit per-axis
least-squares similarities x_authors = a x_ours + b (same for y). Also prints the median bone-length ratio
authors/ours and reference/ours (first 10 CHAIN bones: torso and limbs). Numbers in docs/DATA.md.

    PYTHONPATH=. .venv/bin/python tools/data/authors_similarity.py --stride 48 --max-frames 12
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from xdyna_jax.data.align import bone_lengths  # noqa: E402
from xdyna_jax.data.pose import extract_poses  # noqa: E402
from xdyna_jax.data.render import render_poses  # noqa: E402
from xdyna_jax.eval.score import find_joints  # noqa: E402
from xdyna_jax.data.video import read_video  # noqa: E402


def read_image(path: Path) -> np.ndarray:
    import cv2
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return img[:, :, ::-1].copy()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=Path, default=ROOT.parent / "shared" / "data" / "xdyna_examples")
    ap.add_argument("--stride", type=int, default=48)
    ap.add_argument("--max-frames", type=int, default=12)
    args = ap.parse_args(argv)
    np.set_printoptions(precision=2, suppress=True, linewidth=160)
    for n in (1, 2, 3):
        drv = read_video(args.examples / f"driving_{n}.mp4", stride=args.stride, max_frames=args.max_frames)
        gt = read_video(args.examples / f"pose_{n}.mp4", stride=args.stride, max_frames=args.max_frames)
        ref = extract_poses(read_image(next(args.examples.glob(f"reference_{n}.*"))), static=True,
                            hands=False, face=False)
        ours = extract_poses(drv, static=True, hands=False, face=False)
        a = np.stack([find_joints(x) for x in render_poses(ours, hands=False)])
        b = np.stack([find_joints(x) for x in gt])
        ok = (a[..., 2] > 0) & (b[..., 2] > 0)
        fits = []
        for axis in (0, 1):
            m = np.stack([a[ok][:, axis], np.ones(ok.sum())], 1)
            coef = np.linalg.lstsq(m, b[ok][:, axis], rcond=None)[0]
            fits.append((coef, np.abs(m @ coef - b[ok][:, axis]).mean()))
        with np.errstate(all="ignore"):
            la, lb = np.nanmedian(bone_lengths(a), 0), np.nanmedian(bone_lengths(b), 0)
            lr, ld = bone_lengths(ref.body)[0], np.nanmedian(bone_lengths(ours.body), 0)
        print(f"example {n}: x = {fits[0][0][0]:.3f} x + {fits[0][0][1]:.1f} (resid {fits[0][1]:.1f} px), "
              f"y = {fits[1][0][0]:.3f} y + {fits[1][0][1]:.1f} (resid {fits[1][1]:.1f} px)")
        print("  bone ratio authors/ours   ", (lb / la)[:10])
        print("  bone ratio reference/ours ", (lr / ld)[:10])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
