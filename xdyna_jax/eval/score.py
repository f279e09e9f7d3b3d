"""Overlap between two skeleton renders (ours vs. the authors' ``pose_N`` frames).

Two measures, both computed on rendered images only, so they apply to the authors' videos, whose keypoints
were never released:

* ``mask_iou``: IoU of the non-black pixels (max channel > ``thr``) of the two images, each mask dilated
  by a square of ``dilate`` px first. Dilation forgives the few-pixel offsets that video compression and
  detector jitter cause, so the score measures where the skeleton is, not its exact pixels.
* ``joint_distance``: mean pixel distance between body joints found in both images. A joint is found by
  colour: the renderer draws joint j as a full-brightness disc of ``BODY_COLORS[j]`` on top of limbs that
  were dimmed to 60 %, so pixels within ``tol`` (RGB distance) of that colour belong to the disc; its
  position is the centroid of the largest disc-shaped such blob (``find_joints``; thin hand edges of a
  similar hue are rejected by shape). Head joints (eyes,
  ears) are not drawn in the no-head style, and the left knee (joint 12) is drawn in pure blue (0, 0, 255),
  the colour of every hand point, so it cannot be told apart: ``SCORED_JOINTS`` = 0..11 and 13.
"""
from __future__ import annotations

import numpy as np

from xdyna_jax.data.render import BODY_COLORS


def nonblack(img: np.ndarray, thr: int = 40) -> np.ndarray:
    return np.asarray(img).max(-1) > thr


def mask_iou(a: np.ndarray, b: np.ndarray, dilate: int = 9, thr: int = 40) -> float:
    """IoU of the dilated non-black masks of two uint8 RGB images (1.0 when both are empty)."""
    import cv2

    kernel = np.ones((dilate, dilate), np.uint8)
    ma = cv2.dilate(nonblack(a, thr).astype(np.uint8), kernel) > 0
    mb = cv2.dilate(nonblack(b, thr).astype(np.uint8), kernel) > 0
    union = np.logical_or(ma, mb).sum()
    return 1.0 if union == 0 else float(np.logical_and(ma, mb).sum() / union)


SCORED_JOINTS = tuple(range(12)) + (13,)


def find_joints(img: np.ndarray, joints=SCORED_JOINTS, tol: float = 45.0, min_pixels: int = 8) -> np.ndarray:
    """(18, 3) array: centroid (x, y) and 1 for each body joint found by colour in a rendered image; NaN/0
    for joints not found (or not in ``joints``)."""
    import cv2

    img = np.asarray(img, np.float32)
    out = np.zeros((18, 3), np.float32)
    out[:, :2] = np.nan
    for j in joints:
        d = np.linalg.norm(img - np.array(BODY_COLORS[j], np.float32), axis=-1)
        mask = (d < tol).astype(np.uint8)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n <= 1:
            continue
        # Keep disc-like blobs only (joint discs have radius 4): hand edges of a similar hue are thin lines.
        w, h, area = stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT], stats[1:, cv2.CC_STAT_AREA]
        disc = (area >= min_pixels) & (w <= 13) & (h <= 13) & (area >= 0.45 * w * h)
        if not disc.any():
            continue
        k = 1 + int(np.argmax(np.where(disc, area, -1)))
        out[j] = (cents[k][0], cents[k][1], 1.0)
    return out


def joint_distance(a: np.ndarray, b: np.ndarray, **kwargs) -> tuple[float, int]:
    """(mean distance in px, number of joints) over body joints found by colour in both images."""
    ja, jb = find_joints(a, **kwargs), find_joints(b, **kwargs)
    both = (ja[:, 2] > 0) & (jb[:, 2] > 0)
    if not both.any():
        return float("nan"), 0
    return float(np.linalg.norm(ja[both, :2] - jb[both, :2], axis=-1).mean()), int(both.sum())
