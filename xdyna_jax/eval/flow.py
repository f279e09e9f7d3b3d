"""Dynamics: how much moves inside and outside the person, X-Dyna's claim of lively hair, clothes and scenes.

* Optical flow: OpenCV's Farneback (dense, CPU; ``FARNEBACK`` settings) between consecutive frames,
  converted to grey and resized so the longer side is ``FLOW_SIDE`` = 256 px. Magnitudes are in pixels per
  frame at that size, so videos of any resolution compare.
* Person mask: MediaPipe selfie segmentation (general model, bundled), probability >= 0.5, resized to the
  flow size. For the frame pair (t, t+1) the person is the union of both masks; the background is what lies
  more than ``EDGE`` px (at flow size) outside that union, so a moving silhouette's edge does not count as
  background motion. Letter-box bars count as (still) background.
* ``flow_fg`` / ``flow_bg``: per pair, the mean magnitude over the person / background pixels (NaN when the
  region is empty); a video's value is the mean over pairs.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from xdyna_jax.extras import require

FLOW_SIDE, EDGE, MASK_THRESHOLD = 256, 7, 0.5
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
ENGINE = "OpenCV Farneback, grey frames at 256 px longer side"


def flow_size(height: int, width: int) -> tuple[int, int]:
    s = FLOW_SIDE / max(height, width)
    return max(1, round(height * s)), max(1, round(width * s))


def person_masks(frames: np.ndarray) -> np.ndarray:
    """``(T, h, w)`` bool person masks at flow size of uint8 RGB ``(T, H, W, 3)`` frames."""
    mp = require("mediapipe", "person segmentation (flow_fg / flow_bg)")
    cv2 = require("cv2", "person segmentation (flow_fg / flow_bg)")
    h, w = flow_size(*frames.shape[1:3])
    out = []
    with mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as seg:
        for f in frames:
            prob = seg.process(np.ascontiguousarray(f)).segmentation_mask
            out.append(cv2.resize(prob, (w, h), interpolation=cv2.INTER_AREA) >= MASK_THRESHOLD)
    return np.array(out, bool)


def flow_magnitudes(frames: np.ndarray) -> np.ndarray:
    """``(T-1, h, w)`` Farneback flow magnitude (px per frame at flow size) between consecutive frames."""
    cv2 = require("cv2", "optical flow (flow_fg / flow_bg)")
    h, w = flow_size(*frames.shape[1:3])
    grey = [cv2.resize(cv2.cvtColor(np.ascontiguousarray(f), cv2.COLOR_RGB2GRAY), (w, h),
                       interpolation=cv2.INTER_AREA) for f in frames]
    out = np.zeros((max(len(frames) - 1, 0), h, w), np.float32)
    for t in range(len(frames) - 1):
        flow = cv2.calcOpticalFlowFarneback(grey[t], grey[t + 1], None, **FARNEBACK)
        out[t] = np.linalg.norm(flow, axis=-1)
    return out


def region_means(mag: np.ndarray, masks: Optional[np.ndarray]) -> dict[str, np.ndarray]:
    """``{'fg', 'bg'}``: ``(T-1,)`` mean magnitudes inside / outside the person (``masks`` ``(T, h, w)``;
    None means no person: everything is background and ``fg`` is NaN)."""
    cv2 = require("cv2", "optical flow (flow_fg / flow_bg)")
    fg, bg = np.full(len(mag), np.nan), np.full(len(mag), np.nan)
    kernel = np.ones((2 * EDGE + 1, 2 * EDGE + 1), np.uint8)
    for t, m in enumerate(mag):
        if masks is None:
            person = np.zeros(m.shape, bool)
        else:
            person = masks[t] | masks[t + 1]
        back = cv2.dilate(person.astype(np.uint8), kernel) == 0
        if person.any():
            fg[t] = float(m[person].mean())
        if back.any():
            bg[t] = float(m[back].mean())
    return {"fg": fg, "bg": bg}


def dynamics(frames: np.ndarray, segment: bool = True) -> dict[str, np.ndarray]:
    """``{'fg', 'bg'}`` per frame pair of a uint8 ``(T, H, W, 3)`` video (``segment=False``: no person)."""
    return region_means(flow_magnitudes(frames), person_masks(frames) if segment else None)
