"""The built-in synthetic training source: procedurally drawn moving figures on moving textured
backgrounds, with their no-head skeleton renders and S-Face conditions.

Every clip is a pure function of ``(seed, index)`` (``index`` = global sample number), so a batch is a
pure function of ``(seed, step)`` and does not depend on how many hosts draw it: host ``p`` of ``P``
draws its own rows of the global batch. Batches have the loader's layout (``data/loader.py``):
``frames (B, 1+F, H, W, 3)`` uint8 (frame 0 the reference), ``pose (B, F, H, W, 3)``, ``face (B, F, H, W, 6)``
and ``is_scene (B,)``. Scene clips (a fraction ``scene_ratio``) have no figure, an empty skeleton and
an all-black face condition, like the dataset's natural-scene videos.
"""
from __future__ import annotations

import numpy as np

from xdyna_jax.data.render import render_frame
from xdyna_jax.data.sface import sface_condition
from xdyna_jax.sampling.synthetic import figure_pose

# OpenPose-18 limbs drawn on the figure itself (not the skeleton render): arms, legs, torso, neck
_LIMBS = ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
          (8, 11), (1, 0))


def _face68(cx: float, cy: float, r: float) -> np.ndarray:
    """68 iBUG-ordered points of a round cartoon face of radius ``r`` (only their layout matters to S-Face)."""
    jaw = [(np.cos(a), np.sin(a)) for a in np.linspace(np.pi * 1.05, -0.05 * np.pi, 17)]
    jaw = [(x, -y * 0.2 + (1 - abs(x)) * 1.0) for x, y in jaw]  # 0-16: a U from ear to ear through the chin
    brows = [(x, -0.55) for x in np.linspace(-0.7, -0.2, 5)] + [(x, -0.55) for x in np.linspace(0.2, 0.7, 5)]
    nose = [(0.0, y) for y in np.linspace(-0.35, 0.1, 4)] + [(x, 0.2) for x in np.linspace(-0.2, 0.2, 5)]
    eye = lambda ex: [(ex + 0.15 * np.cos(a), -0.3 + 0.08 * np.sin(a)) for a in np.linspace(np.pi, -np.pi, 6,
                                                                                           endpoint=False)]
    mouth = [(0.3 * np.cos(a), 0.5 + 0.1 * np.sin(a)) for a in np.linspace(np.pi, -np.pi, 12, endpoint=False)]
    inner = [(0.2 * np.cos(a), 0.5 + 0.05 * np.sin(a)) for a in np.linspace(np.pi, -np.pi, 8, endpoint=False)]
    pts = np.array(jaw + brows + nose + eye(-0.4) + eye(0.4) + mouth + inner, np.float64)
    return pts * r + np.array([cx, cy])


def _background(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """(frames, H, W, 3) float: two-colour stripes times a checker, both drifting over time."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    c1, c2 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    f = rng.uniform(0.02, 0.12, 2) * rng.choice([-1, 1], 2)
    v = rng.uniform(-2, 2, 2)             # drift, pixels per frame
    cell = rng.uniform(6, 16)
    out = []
    for k in range(frames):
        x, y = xx + v[0] * k, yy + v[1] * k
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * (f[0] * x + f[1] * y))
        checker = ((np.floor(x / cell) + np.floor(y / cell)) % 2) * 0.3 + 0.7
        out.append((c1 + (c2 - c1) * stripes[..., None]) * checker[..., None])
    return np.stack(out)


def synthetic_clip(seed: int, index: int, frames: int, height: int, width: int, scene_ratio: float) -> dict:
    """One clip: reference + ``frames`` frames, pose and face conditions (see the module doc)."""
    import cv2

    rng = np.random.default_rng([seed, index])
    is_scene = bool(rng.uniform() < scene_ratio)
    bg = _background(rng, frames + 1, height, width)
    if is_scene:
        zeros = np.zeros((frames, height, width, 3), np.uint8)
        return {"frames": np.clip(bg, 0, 255).astype(np.uint8), "pose": zeros,
                "face": np.zeros((frames, height, width, 6), np.uint8), "is_scene": np.bool_(True)}
    body_col = tuple(float(c) for c in rng.uniform(0, 255, 3))
    skin = tuple(float(c) for c in rng.uniform(120, 255, 3))
    phase, speed = rng.uniform(0, 1), rng.uniform(0.04, 0.12) * rng.choice([-1, 1])
    scale = rng.uniform(0.7, 1.0)
    centre = np.array([rng.uniform(0.4, 0.6), rng.uniform(0.45, 0.55)])
    drift = rng.uniform(-0.01, 0.01, 2)
    t_ref = rng.uniform(0, 1)             # the reference is the same figure at another phase
    times = [t_ref] + [phase + speed * k for k in range(frames)]
    size = np.array([width, height], np.float64)
    out_frames, poses, faces = [], [], []
    thick = max(2, int(round(0.05 * min(height, width) * scale)))
    for k, t in enumerate(times):
        at = centre + drift * max(k - 1, 0)
        joints = ((figure_pose(t) - 0.5) * scale + at) * size          # (18, 2) pixels
        img = np.ascontiguousarray(np.clip(bg[k], 0, 255).astype(np.uint8))
        for a, b in _LIMBS:
            cv2.line(img, tuple(int(v) for v in joints[a]), tuple(int(v) for v in joints[b]), body_col, thick)
        r = 0.07 * scale * min(height, width) * 1.4
        head = joints[0] - np.array([0, 0.4 * r])
        cv2.circle(img, (int(head[0]), int(head[1])), int(r), skin, -1)
        lmk = _face68(head[0], head[1], r)
        for e in (lmk[36:42].mean(0), lmk[42:48].mean(0)):
            cv2.circle(img, (int(e[0]), int(e[1])), max(1, int(0.15 * r)), (20, 20, 20), -1)
        mouth_open = 0.5 + 0.5 * np.sin(2 * np.pi * t)             # the face moves too
        cv2.ellipse(img, (int(head[0]), int(head[1] + 0.5 * r)), (max(1, int(0.3 * r)),
                    max(1, int(0.12 * r * mouth_open) + 1)), 0, 0, 360, (150, 30, 40), -1)
        out_frames.append(img)
        if k > 0:
            body = np.concatenate([joints, np.ones((18, 1))], axis=1)
            poses.append(render_frame(body, None, height, width))
            faces.append(sface_condition(img, lmk))
    return {"frames": np.stack(out_frames), "pose": np.stack(poses), "face": np.stack(faces),
            "is_scene": np.bool_(False)}


def synthetic_batch(seed: int, step: int, batch_size: int, frames: int, height: int, width: int,
                    scene_ratio: float, rows: slice | None = None) -> dict:
    """Rows ``rows`` (default: all) of the global batch of ``step``."""
    idx = range(batch_size)[rows or slice(None)]
    clips = [synthetic_clip(seed, step * batch_size + i, frames, height, width, scene_ratio) for i in idx]
    return {k: np.stack([c[k] for c in clips]) for k in ("frames", "pose", "face", "is_scene")}
