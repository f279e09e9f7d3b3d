"""Pose accuracy: body keypoints of generated frames against those of the driving frames.

Keypoints come from the data room's MediaPipe extractor (``data/pose.py``, OpenPose-18 layout, bundled
models, tracking across consecutive frames). A driving joint counts when its confidence is >= ``CONF``.

* ``pck`` (per joint and overall): share of counted driving joints whose generated joint is found
  (confidence >= ``CONF``) within ``alpha`` x the size of the driving person, the longer side of the
  bounding box of its counted joints in that frame (``PCK_ALPHA`` = 0.1 by default). A joint missing in
  the generated frame is a miss.
* ``joint_px``: per frame, the mean pixel distance over joints found in both (NaN when none).
* ``skeleton_iou``: per frame, ``score.mask_iou`` of the two bodies rendered in the authors' no-head
  skeleton style (``data/render.py``; dilated non-black masks).
"""
from __future__ import annotations

import numpy as np

from xdyna_jax.data.pose import OP_NAMES, Poses

CONF, PCK_ALPHA = 0.3, 0.1


def found(body: np.ndarray, conf: float = CONF) -> np.ndarray:
    """``(..., 18)`` bool: joint detected with confidence >= ``conf`` and finite coordinates."""
    return (body[..., 2] >= conf) & np.isfinite(body[..., :2]).all(-1)


def person_size(body: np.ndarray, conf: float = CONF) -> np.ndarray:
    """``(T,)`` longer side of the bounding box of each frame's found joints (NaN with fewer than 2)."""
    ok = found(body, conf)
    out = np.full(len(body), np.nan)
    for t in range(len(body)):
        if ok[t].sum() >= 2:
            xy = body[t, ok[t], :2]
            out[t] = float((xy.max(0) - xy.min(0)).max())
    return out


def pck(generated: np.ndarray, driving: np.ndarray, alpha: float = PCK_ALPHA,
        conf: float = CONF) -> tuple[np.ndarray, np.ndarray]:
    """``(hits, counted)``, both ``(T, 18)`` bool, for bodies ``(T, 18, 3)``: counted = driving joint found
    in a frame with a person size; hit = counted and the generated joint found within ``alpha`` x size."""
    size = person_size(driving, conf)
    counted = found(driving, conf) & np.isfinite(size)[:, None] & (size > 0)[:, None]
    dist = np.linalg.norm(generated[..., :2] - driving[..., :2], axis=-1)
    with np.errstate(invalid="ignore"):
        near = dist <= alpha * size[:, None]
    return counted & found(generated, conf) & near, counted


def joint_px(generated: np.ndarray, driving: np.ndarray, conf: float = CONF) -> np.ndarray:
    """``(T,)`` mean distance in pixels over the joints found in both frames (NaN when none)."""
    both = found(generated, conf) & found(driving, conf)
    dist = np.linalg.norm(generated[..., :2] - driving[..., :2], axis=-1)
    out = np.full(len(both), np.nan)
    for t in range(len(both)):
        if both[t].any():
            out[t] = float(dist[t, both[t]].mean())
    return out


def skeleton_iou(generated: np.ndarray, driving: np.ndarray, height: int, width: int) -> np.ndarray:
    """``(T,)`` IoU of the two bodies' skeleton renders (1.0 when neither has a body)."""
    from xdyna_jax.data.render import render_frame

    from .score import mask_iou

    return np.array([mask_iou(render_frame(g, None, height, width), render_frame(d, None, height, width))
                     for g, d in zip(generated, driving)])


def pose_scores(generated: Poses, driving: Poses, alpha: float = PCK_ALPHA) -> dict:
    """Per-frame series and summaries of two ``Poses`` of the same length and frame size."""
    g, d = generated.body, driving.body
    hits, counted = pck(g, d, alpha)
    n = counted.sum(0)
    per_joint = {name: (float(hits[:, j].sum() / n[j]) if n[j] else None) for j, name in enumerate(OP_NAMES)}
    frame_counted = counted.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frame_pck = np.where(frame_counted > 0, hits.sum(1) / np.maximum(frame_counted, 1), np.nan)
    return {"pck": float(hits.sum() / counted.sum()) if counted.any() else float("nan"),
            "pck_per_joint": per_joint, "pck_frames": frame_pck, "joint_px": joint_px(g, d),
            "skeleton_iou": skeleton_iou(g, d, driving.height, driving.width),
            "driving_body_frames": int((found(d).sum(1) >= 2).sum())}
