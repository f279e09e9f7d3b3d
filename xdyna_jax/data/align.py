"""Retarget a driving skeleton onto the reference body's proportions (the authors' step is unreleased).

Model (all in pixels, OpenPose-18 + 2 hands + face mesh, see ``pose.py``):

* Kinematic tree rooted at the neck (``CHAIN``, parents before children): neck -> shoulders -> elbows ->
  wrists, neck -> hips -> knees -> ankles, neck -> nose -> eyes -> ears.
* Bone ratio ``r_b = L_ref(b) / L_drv(b)``: L_ref is the bone length in the reference image, L_drv its
  median over the first ``fit_frames`` driving frames where both ends are confident (``fit_frames=1``: the
  first frame). A bone never seen in one of them gets the global scale instead.
* Global map ``g(p) = anchor + s (p - neck_drv0)``: ``s`` = mean reference torso bone length / mean
  driving torso bone length (neck-shoulders, neck-hips), ``neck_drv0`` the driving neck at the first
  fitted frame, ``anchor`` the reference neck (``anchor="reference"``) or ``neck_drv0`` itself
  (``anchor="driving"``: keeps the dancer where she is, as the authors' examples appear to do).
* Per frame: neck' = g(neck); each child c of parent p: ``c' = p' + r_b (c - p)``, so every bone keeps its
  driving direction and gets its reference length (exactly, on frames whose driving length equals the
  fitted one). A child whose parent is missing falls back to g. With ``bones=False`` every point uses g.
* Hands follow their wrist: ``h' = wrist' + r_forearm (h - wrist)``; the face follows the nose with the
  neck-nose ratio. Missing points stay missing; confidences are copied.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pose import WRIST_OF_HAND, Poses

CHAIN = ((1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12),
         (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
TORSO = (0, 3, 6, 9)  # indices into CHAIN: neck-r_shoulder, neck-l_shoulder, neck-r_hip, neck-l_hip
FOREARM = {4: 2, 7: 5}  # wrist joint -> index of its elbow-wrist bone in CHAIN
NECK_NOSE = 12


@dataclass(frozen=True)
class Alignment:
    ratios: np.ndarray    # (17,) per-bone ratio for CHAIN
    scale: float          # global scale s
    origin: np.ndarray    # (2,) driving neck at the first fitted frame
    anchor: np.ndarray    # (2,) where the origin goes
    bones: bool = True

    def global_map(self, pts: np.ndarray) -> np.ndarray:
        return self.anchor + self.scale * (pts - self.origin)


def _valid(body: np.ndarray, thr: float) -> np.ndarray:
    return (body[..., 2] >= thr) & np.isfinite(body[..., :2]).all(-1)


def bone_lengths(body: np.ndarray, conf_thr: float = 0.3) -> np.ndarray:
    """(T, 17) lengths of the CHAIN bones of ``body`` (T, 18, 3); NaN where an end is missing."""
    body = np.asarray(body, np.float64)
    ok = _valid(body, conf_thr)
    par, chi = np.array(CHAIN).T
    length = np.linalg.norm(body[:, chi, :2] - body[:, par, :2], axis=-1)
    return np.where(ok[:, par] & ok[:, chi], length, np.nan)


def _median_lengths(body: np.ndarray, frames: int, conf_thr: float) -> np.ndarray:
    lengths = bone_lengths(body[:frames], conf_thr)
    with np.errstate(all="ignore"):
        return np.array([np.median(c[np.isfinite(c)]) if np.isfinite(c).any() else np.nan for c in lengths.T])


def fit_alignment(reference: np.ndarray, driving: np.ndarray, fit_frames: int = 10, conf_thr: float = 0.3,
                  anchor: str = "reference", bones: bool = True) -> Alignment:
    """Fit the retargeting from reference bodies ``(Tr, 18, 3)`` (or one ``(18, 3)``) to driving bodies
    ``(T, 18, 3)``, using the first ``fit_frames`` driving frames in which the neck is found."""
    ref = np.asarray(reference, np.float64).reshape(-1, 18, 3)
    drv = np.asarray(driving, np.float64).reshape(-1, 18, 3)
    if anchor not in ("reference", "driving"):
        raise ValueError(f"anchor must be 'reference' or 'driving', got {anchor!r}")
    ref_ok, drv_ok = _valid(ref, conf_thr)[:, 1], _valid(drv, conf_thr)[:, 1]
    if not ref_ok.any():
        raise ValueError("no neck (both shoulders) found in the reference pose")
    if not drv_ok.any():
        raise ValueError("no neck (both shoulders) found in any driving frame")
    drv = drv[np.flatnonzero(drv_ok)[0]:]
    l_ref, l_drv = _median_lengths(ref[ref_ok], len(ref), conf_thr), _median_lengths(drv, fit_frames, conf_thr)
    t_ref, t_drv = l_ref[list(TORSO)], l_drv[list(TORSO)]
    both = np.isfinite(t_ref) & np.isfinite(t_drv) & (t_drv > 0)
    scale = float(t_ref[both].mean() / t_drv[both].mean()) if both.any() else 1.0
    ratios = np.where(np.isfinite(l_ref) & np.isfinite(l_drv) & (l_drv > 1e-6), l_ref / np.maximum(l_drv, 1e-6),
                      scale)
    origin = drv[0, 1, :2].copy()
    target = ref[ref_ok][0, 1, :2].copy() if anchor == "reference" else origin.copy()
    return Alignment(ratios=ratios, scale=scale, origin=origin, anchor=target, bones=bones)


def apply_alignment(poses: Poses, al: Alignment, conf_thr: float = 0.3) -> Poses:
    """Retargeted copy of ``poses`` (body, hands and face)."""
    out = poses.copy()
    body = poses.body.astype(np.float64)
    ok = _valid(body, conf_thr)
    for t in range(len(poses)):
        new = al.global_map(body[t, :, :2])
        placed = np.zeros(18, bool)
        placed[1] = ok[t, 1]
        if al.bones:
            for b, (p, c) in enumerate(CHAIN):
                if ok[t, c] and placed[p]:
                    new[c] = new[p] + al.ratios[b] * (body[t, c, :2] - body[t, p, :2])
                    placed[c] = True
        out.body[t, :, :2] = np.where(np.isfinite(body[t, :, :2]), new, np.nan)
        for slot, wrist in WRIST_OF_HAND.items():
            hand = poses.hands[t, slot, :, :2].astype(np.float64)
            if al.bones and placed[wrist]:
                hand = new[wrist] + al.ratios[FOREARM[wrist]] * (hand - body[t, wrist, :2])
            else:
                hand = al.global_map(hand)
            out.hands[t, slot, :, :2] = hand
        face = poses.face[t, :, :2].astype(np.float64)
        if al.bones and placed[0]:
            face = new[0] + al.ratios[NECK_NOSE] * (face - body[t, 0, :2])
        else:
            face = al.global_map(face)
        out.face[t, :, :2] = face
    return out


def align_poses(driving: Poses, reference: Poses, fit_frames: int = 10, conf_thr: float = 0.3,
                anchor: str = "reference", bones: bool = True) -> Poses:
    """Fit on ``reference`` (e.g. the pose of the reference image) and the first driving frames, then apply."""
    al = fit_alignment(reference.body, driving.body, fit_frames, conf_thr, anchor, bones)
    return apply_alignment(driving, al, conf_thr)
