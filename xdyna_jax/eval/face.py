"""Face control: is there a face, and does it make the driving face's expression.

* ``detect_faces``: MediaPipe FaceDetection, full-range model (``model_selection=1``; the short-range one
  misses the small faces of full-body dance videos), confidence >= 0.5. The Face-Det rate is the share of
  frames with at least one face.
* ``expression_distance``: per frame, the 468 FaceMesh landmarks of the generated face (``data/pose.py``)
  are aligned onto the driving ones by the least-squares similarity (rotation, uniform scale, translation;
  Umeyama 1991, no reflection), then the mean landmark distance is divided by the driving face's
  inter-ocular distance (outer eye corners, landmarks 33 and 263). Alignment removes head position, size
  and in-plane rotation; what remains is expression, out-of-plane rotation and face shape, so a different
  identity has a floor above 0. NaN where either face is missing.
"""
from __future__ import annotations

import numpy as np

from xdyna_jax.extras import require

EYE_OUTER = (33, 263)
FACE_DET_MODEL, FACE_DET_CONF = 1, 0.5


def detect_faces(frames: np.ndarray, min_conf: float = FACE_DET_CONF) -> np.ndarray:
    """``(T,)`` bool: MediaPipe FaceDetection finds a face in each uint8 RGB frame."""
    mp = require("mediapipe", "face detection")
    out = []
    with mp.solutions.face_detection.FaceDetection(model_selection=FACE_DET_MODEL,
                                                   min_detection_confidence=min_conf) as det:
        for f in frames:
            out.append(bool(det.process(np.ascontiguousarray(f)).detections))
    return np.array(out, bool)


def similarity_align(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """``src`` ``(N, 2)`` mapped by the similarity transform that best fits it onto ``dst`` (least squares)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    x, y = src - ms, dst - md
    u, s, vt = np.linalg.svd(y.T @ x / len(x))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt))])  # a rotation, never a mirror
    rot = u @ d @ vt
    var = (x ** 2).sum(1).mean()
    scale = float(np.trace(np.diag(s) @ d) / var) if var > 0 else 1.0
    return scale * x @ rot.T + md


def expression_distance(generated: np.ndarray, driving: np.ndarray) -> np.ndarray:
    """``(T,)`` for face meshes ``(T, 468, 3)`` (x, y, found): aligned mean landmark distance / inter-ocular
    distance of the driving face; NaN where either face is missing."""
    out = np.full(len(driving), np.nan)
    for t, (g, d) in enumerate(zip(generated, driving)):
        if not (g[:, 2] > 0).all() or not (d[:, 2] > 0).all():
            continue
        iod = float(np.linalg.norm(d[EYE_OUTER[0], :2] - d[EYE_OUTER[1], :2]))
        if iod <= 0:
            continue
        aligned = similarity_align(g[:, :2], d[:, :2])
        out[t] = float(np.linalg.norm(aligned - d[:, :2], axis=1).mean() / iod)
    return out
