"""OpenPose-style skeleton rendering in the authors' "no-head" style (the look of ``pose_N.mp4``).

Drawing order and constants are those of the OpenPose/DWPose renderers (written here from their published
description, not copied):
1. black canvas; 2. body limbs as filled ellipses (``cv2.ellipse2Poly`` with half-axes
(length/2, stick width 4), 1-degree steps), limb i coloured ``BODY_COLORS[i]``; 3. the whole canvas is
multiplied by 0.6 (limbs dimmed); 4. joints as filled circles of radius 4 in ``BODY_COLORS[joint]``;
5. hands: 20 edges, 2 px lines coloured by an HSV rainbow (hue = edge/20, full saturation and value),
then the 21 points as radius-4 blue (0, 0, 255) discs.
"No head": limbs 13..16 (neck/nose -> eyes -> ears) and joints 14..17 (eyes, ears) are skipped; the
nose-neck limb (12) and the nose joint are kept. Colours are RGB; the canvas is uint8 RGB.
"""
from __future__ import annotations

import colorsys
from typing import Optional

import numpy as np

from .pose import Poses

# OpenPose-18 limbs (0-based joint pairs); limb i is drawn with BODY_COLORS[i].
BODY_LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
              (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
BODY_COLORS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
               (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
               (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HEAD_LIMBS = (13, 14, 15, 16)     # nose-eye and eye-ear limbs
HEAD_JOINTS = (14, 15, 16, 17)    # eyes and ears
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
              (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
HAND_EDGE_COLORS = tuple(tuple(c * 255.0 for c in colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0))
                         for i in range(len(HAND_EDGES)))
HAND_POINT_COLOR = (0, 0, 255)
STICK_WIDTH, JOINT_RADIUS, HAND_LINE, HAND_RADIUS, LIMB_DIM = 4, 4, 2, 4, 0.6


def _ok(p: np.ndarray, thr: float) -> bool:
    return bool(p[2] >= thr and np.isfinite(p[:2]).all())


def draw_body(canvas: np.ndarray, body: np.ndarray, conf_thr: float = 0.3, head: bool = False) -> np.ndarray:
    """Draw one OpenPose-18 body ``(18, 3)`` (pixels, conf) on ``canvas`` in place (limbs, dim, joints)."""
    import cv2

    for i, (a, b) in enumerate(BODY_LIMBS):
        if (not head and i in HEAD_LIMBS) or not (_ok(body[a], conf_thr) and _ok(body[b], conf_thr)):
            continue
        (xa, ya), (xb, yb) = body[a, :2], body[b, :2]
        length = float(np.hypot(xa - xb, ya - yb))
        angle = float(np.degrees(np.arctan2(ya - yb, xa - xb)))
        poly = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), STICK_WIDTH),
                                int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, poly, BODY_COLORS[i])
    canvas[:] = (canvas * LIMB_DIM).astype(np.uint8)
    for j in range(18):
        if (not head and j in HEAD_JOINTS) or not _ok(body[j], conf_thr):
            continue
        cv2.circle(canvas, (int(body[j, 0]), int(body[j, 1])), JOINT_RADIUS, BODY_COLORS[j], thickness=-1)
    return canvas


def draw_hand(canvas: np.ndarray, hand: np.ndarray, conf_thr: float = 0.3) -> np.ndarray:
    """Draw one 21-keypoint hand ``(21, 3)`` on ``canvas`` in place (rainbow edges, then blue points)."""
    import cv2

    for i, (a, b) in enumerate(HAND_EDGES):
        if _ok(hand[a], conf_thr) and _ok(hand[b], conf_thr):
            cv2.line(canvas, (int(hand[a, 0]), int(hand[a, 1])), (int(hand[b, 0]), int(hand[b, 1])),
                     HAND_EDGE_COLORS[i], thickness=HAND_LINE)
    for j in range(21):
        if _ok(hand[j], conf_thr):
            cv2.circle(canvas, (int(hand[j, 0]), int(hand[j, 1])), HAND_RADIUS, HAND_POINT_COLOR, thickness=-1)
    return canvas


def render_frame(body: np.ndarray, hands: Optional[np.ndarray], height: int, width: int,
                 conf_thr: float = 0.3, hand_conf_thr: float = 0.3, head: bool = False) -> np.ndarray:
    """One skeleton image, uint8 RGB ``(height, width, 3)``: body ``(18, 3)``, hands ``(2, 21, 3)`` or None."""
    canvas = np.zeros((height, width, 3), np.uint8)
    draw_body(canvas, np.asarray(body, np.float64), conf_thr, head)
    if hands is not None:
        for hand in np.asarray(hands, np.float64):
            draw_hand(canvas, hand, hand_conf_thr)
    return canvas


def render_poses(poses: Poses, hands: bool = True, height: Optional[int] = None, width: Optional[int] = None,
                 **kwargs) -> np.ndarray:
    """Skeleton video ``(T, H, W, 3)`` uint8 RGB of ``poses`` (size defaults to the poses' frame size)."""
    h, w = height or poses.height, width or poses.width
    return np.stack([render_frame(poses.body[t], poses.hands[t] if hands else None, h, w, **kwargs)
                     for t in range(len(poses))])
