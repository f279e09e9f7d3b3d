"""S-Face condition maps (spec §7.4): local eye/mouth patches and the enlarged face box, from the face mesh.

The official code detects 68-point iBUG landmarks (``face_alignment``); we detect MediaPipe's 468-point face
mesh (``pose.py``) and pick, for each iBUG point, the mesh vertex at the same anatomical spot
(``MESH_FROM_IBUG68``; 0-based iBUG order):

* 0-16 jaw line, right ear level -> chin (8 = mesh 152) -> left ear level: the face-oval vertices;
* 17-21 / 22-26 right / left eyebrow (mesh 70, 63, 105, 66, 107 / 336, 296, 334, 293, 300);
* 27-30 nose bridge (168, 197, 5, 4), 31-35 nostrils and base (75, 97, 2, 326, 305);
* 36-41 right eye: outer corner 33, upper lid 160, 158, inner corner 133, lower lid 153, 144;
* 42-47 left eye: inner corner 362, upper lid 385, 387, outer corner 263, lower lid 373, 380;
* 48-59 outer lips: right corner 61, 40, 37, top 0, 267, 270, left corner 291, 321, 314, bottom 17, 84, 91;
* 60-67 inner lips: 78, 81, 13, 311, 308, 402, 14, 178.

"Right/left" are the person's. The official slices are kept as written (spec §7.4): "left-eye" centre =
mean(lmks[43:48]) (left eye without its inner corner), "right-eye" centre = mean(lmks[37:42]) (right eye
without its outer corner), mouth = mean(lmks[49:68]) (lips without the right corner), each
``np.round(...).astype(int32)``. The box of all 68 points is enlarged by ``increased_box`` and clamped;
patches use numpy slicing (a negative start wraps, as in the official code).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .pose import Poses

MESH_FROM_IBUG68 = np.array([
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,   # 0-16 jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,                                       # 17-26 brows
    168, 197, 5, 4, 75, 97, 2, 326, 305,                                                  # 27-35 nose
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,                            # 36-47 eyes
    61, 40, 37, 0, 267, 270, 291, 321, 314, 17, 84, 91,                                   # 48-59 outer lips
    78, 81, 13, 311, 308, 402, 14, 178])                                                  # 60-67 inner lips
BOX_FACTORS = (1.35, 1.25, 1.35, 1.45)  # left, top, right, bottom (spec §7.4 step 3)


def ibug68_from_mesh(face: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG-ordered points from a (468, 2|3) face mesh."""
    return np.asarray(face)[MESH_FROM_IBUG68, :2].astype(np.float64)


def centres(lmk68: np.ndarray) -> np.ndarray:
    """(3, 2) int32: official "left-eye", "right-eye" and mouth centres (x, y), slices kept as written."""
    lm = np.asarray(lmk68, np.float64)
    return np.stack([np.round(lm[s].mean(0)).astype(np.int32)
                     for s in (slice(43, 48), slice(37, 42), slice(49, 68))])


def increased_box(ltrb: Sequence[float], factors=BOX_FACTORS) -> tuple:
    """Square-side expansion around the box centre: s = max(w, h); (int(cx - fl s), int(cy - ft s),
    int(cx + fr s), int(cy + fb s)) (``int`` truncates toward zero, as Python does)."""
    left, top, right, bot = (float(v) for v in ltrb)
    s = max(right - left, bot - top)
    cx, cy = (left + right) * 0.5, (top + bot) * 0.5
    fl, ft, fr, fb = factors
    return int(cx - fl * s), int(cy - ft * s), int(cx + fr * s), int(cy + fb * s)


def face_box(lmk68: np.ndarray, height: int, width: int) -> tuple:
    """Enlarged, clamped face box (L, T, R, B): the official clamps L, T below at 0 and R, B above at W, H."""
    lm = np.asarray(lmk68, np.float64)
    left, top, right, bot = increased_box((lm[:, 0].min(), lm[:, 1].min(), lm[:, 0].max(), lm[:, 1].max()))
    return max(0, left), max(0, top), min(width, right), min(height, bot)


def sface_maps(frame: np.ndarray, lmk68: Optional[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(local, global) uint8 RGB maps of one frame; both all black when ``lmk68`` is None."""
    frame = np.asarray(frame)
    h, w = frame.shape[:2]
    local, glob = np.zeros_like(frame), np.zeros_like(frame)
    if lmk68 is None:
        return local, glob
    left, top, right, bot = face_box(lmk68, h, w)
    glob[top:bot, left:right] = frame[top:bot, left:right]
    hx, hy = int((right - left) / 512 * 64), int((bot - top) / 512 * 64)
    for cx, cy in centres(lmk68):
        cx, cy = int(cx), int(cy)
        local[cy - hy:cy + hy, cx - hx:cx + hx] = frame[cy - hy:cy + hy, cx - hx:cx + hx]
    return local, glob


def sface_condition(frame: np.ndarray, lmk68: Optional[np.ndarray]) -> np.ndarray:
    """(H, W, 6) uint8: [local patches RGB, global crop RGB]."""
    return np.concatenate(sface_maps(frame, lmk68), axis=-1)


def sface_video(frames: np.ndarray, poses: Poses, min_conf: float = 0.5) -> tuple[np.ndarray, dict]:
    """(T, H, W, 6) conditions for ``frames`` from ``poses.face``, and a report
    ``{"frames": T, "no_face": n, "no_face_frames": [indices]}`` (frames without a face are all black)."""
    frames = np.asarray(frames)
    if len(frames) != len(poses):
        raise ValueError(f"{len(frames)} frames but {len(poses)} poses")
    out = np.zeros((*frames.shape[:3], 6), np.uint8)
    missing = []
    for t, frame in enumerate(frames):
        face = poses.face[t]
        ok = face[:, 2] >= min_conf
        if not ok.all() or not np.isfinite(face[:, :2]).all():
            missing.append(t)
            continue
        out[t] = sface_condition(frame, ibug68_from_mesh(face))
    return out, {"frames": int(len(frames)), "no_face": len(missing), "no_face_frames": missing}
