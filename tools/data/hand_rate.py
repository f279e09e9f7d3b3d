"""How many of the hands drawn in the authors' ``pose_N.mp4`` our extraction finds (X-Dyna examples).

The authors' renderer draws every hand keypoint as a full-blue (0, 0, 255) disc. Their hands are the
connected groups of such pixels (merged by a 15 px dilation) holding at least ``MIN_HAND_PIXELS`` of them;
a single disc of that colour is the left knee, which shares it. A drawn hand counts as found when at least
half of the keypoints of one of our hands (confidence >= 0.3) fall within 24 px of the group. Also
reported: our hands that match no drawn hand (extra) and the share of frames whose two found hands sit in
the slots of the body's wrists they are nearest to (left/right consistency).

    PYTHONPATH=. .venv/bin/python tools/data/hand_rate.py --mode static --stride 24
    PYTHONPATH=. .venv/bin/python tools/data/hand_rate.py --mode track --stride 1 --start 100 --max-frames 32
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

from xdyna_jax.data.pose import WRIST_OF_HAND, extract_poses  # noqa: E402
from xdyna_jax.data.video import read_video  # noqa: E402

BLUE = np.array([0, 0, 255], np.float32)
MIN_HAND_PIXELS = 100  # a knee disc (radius 4) has ~50; a drawn hand's 21 discs several hundred
NEAR_PX = 24


def drawn_hands(img: np.ndarray) -> list[np.ndarray]:
    """Masks (H, W bool, dilated by NEAR_PX) of the hands drawn in one authors' skeleton frame."""
    import cv2

    blue = (np.linalg.norm(img.astype(np.float32) - BLUE, axis=-1) < 45).astype(np.uint8)
    merged = cv2.dilate(blue, np.ones((15, 15), np.uint8))
    n, labels = cv2.connectedComponents(merged)
    out = []
    for k in range(1, n):
        comp = labels == k
        if int((blue.astype(bool) & comp).sum()) >= MIN_HAND_PIXELS:
            out.append(cv2.dilate(comp.astype(np.uint8), np.ones((2 * NEAR_PX + 1,) * 2, np.uint8)) > 0)
    return out


def match_frame(drawn: list[np.ndarray], hands: np.ndarray) -> tuple[int, int]:
    """(found, extra): drawn hands with one of ours on them; our hands on no drawn hand."""
    ours = [h[:, :2] for h in hands if h[0, 2] >= 0.3 and np.isfinite(h[:, :2]).all()]
    h, w = drawn[0].shape if drawn else (0, 0)
    on = np.zeros((len(ours), len(drawn)), bool)
    for i, pts in enumerate(ours):
        xy = np.round(pts).astype(int)
        inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
        for j, mask in enumerate(drawn):
            hit = np.zeros(len(xy), bool)
            hit[inside] = mask[xy[inside, 1], xy[inside, 0]]
            on[i, j] = hit.mean() >= 0.5
    return int(on.any(0).sum()), int((~on.any(1)).sum())


def slots_consistent(body: np.ndarray, hands: np.ndarray) -> bool | None:
    """Both hands found: is each nearer to its own slot's wrist than to the other? (None: not decidable)."""
    ok = [hands[s, 0, 2] >= 0.3 and body[WRIST_OF_HAND[s], 2] >= 0.3 for s in (0, 1)]
    if not all(ok):
        return None
    d = lambda s, wr: float(np.linalg.norm(hands[s, 0, :2] - body[WRIST_OF_HAND[wr], :2]))  # noqa: E731
    return d(0, 0) + d(1, 1) <= d(0, 1) + d(1, 0)


def rate_example(examples: Path, n: int, static: bool, stride: int, start: int, max_frames, **kw) -> dict:
    drv = read_video(examples / f"driving_{n}.mp4", stride=stride, max_frames=max_frames, start=start)
    gt = read_video(examples / f"pose_{n}.mp4", stride=stride, max_frames=max_frames, start=start)
    t = min(len(drv), len(gt))
    t0 = time.time()
    poses = extract_poses(drv[:t], static=static, **kw)
    secs = (time.time() - t0) / t
    drawn = found = extra = 0
    consistent = []
    for k in range(t):
        hands = drawn_hands(gt[k])
        f, e = match_frame(hands, poses.hands[k])
        drawn, found, extra = drawn + len(hands), found + f, extra + e
        c = slots_consistent(poses.body[k], poses.hands[k])
        if c is not None:
            consistent.append(c)
    return {"frames": t, "drawn": drawn, "found": found, "extra": extra, "s_per_frame": secs,
            "lr_consistent": float(np.mean(consistent)) if consistent else float("nan")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=Path, default=ROOT.parent / "shared" / "data" / "xdyna_examples")
    ap.add_argument("--mode", choices=("static", "track"), default="static")
    ap.add_argument("--stride", type=int, default=24)
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--max-frames", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = {n: rate_example(args.examples, n, args.mode == "static", args.stride, args.start, args.max_frames)
           for n in (1, 2, 3)}
    print(f"mode {args.mode}, stride {args.stride}, start {args.start}, max_frames {args.max_frames}\n")
    print("| example | frames | hands drawn by the authors | found by us | rate | extra hands | L/R consistent | s/frame |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in res.items():
        print(f"| {n} | {r['frames']} | {r['drawn']} | {r['found']} | {r['found'] / max(r['drawn'], 1):.2f} | "
              f"{r['extra']} | {r['lr_consistent']:.2f} | {r['s_per_frame']:.2f} |")
    tot = {k: sum(r[k] for r in res.values()) for k in ("frames", "drawn", "found", "extra")}
    print(f"| all | {tot['frames']} | {tot['drawn']} | {tot['found']} | {tot['found'] / max(tot['drawn'], 1):.2f} | "
          f"{tot['extra']} | | |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
