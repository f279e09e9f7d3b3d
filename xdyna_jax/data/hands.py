"""Hands of the OpenPose skeleton: slot 0 is the person's left hand, slot 1 the right (COCO-WholeBody order).

The bundled palm detector works on a downscaled frame and misses the small, fisted, gloved or blurred hands
of a full-body dance video. Each slot is filled by the first of (step 1 in ``pose.PoseExtractor``, which
takes the body from the same Holistic call; steps 2 and 3 in ``HandFinder.find``):

1. **Holistic**: MediaPipe Holistic places a hand box from the pose's wrist, index, pinky and thumb
   landmarks (its ``hand_recrop`` model) and runs the hand landmark model there, with no palm detector.
   Its pose is the Pose model itself (identical landmarks), so ``pose.py`` takes the body from the same
   call. Confidence 1.0 (Holistic reports no hand score).
2. **Crop search**: the palm detector on square crops around the wrist (centre 1/3 forearm past it), in
   the order of ``CROP_TRIES`` (side in forearm lengths, mirrored or not; >= 0.6 shoulder widths), palm
   threshold ``crop_confidence`` (0.3); a hand counts only if its wrist lies near the body's wrist.
3. **Full frame**: the palm detector on the whole frame (tracking across frames in video mode), each
   hand given to the nearer body wrist.

Then ``consistent_sides``: a hand nearer the other body wrist moves to that slot, and one hand found for
both slots is kept once. Across frames (tracking mode only, as frames are near), ``fill_gaps`` fills a
slot missing for at most ``max_gap`` frames between two detections: the hand moves with its wrist, its
shape interpolated.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

N_HAND = 21
LEFT_HAND, RIGHT_HAND = 0, 1
WRIST_OF_HAND = {LEFT_HAND: 7, RIGHT_HAND: 4}   # OpenPose wrist each slot hangs from
ELBOW_OF_HAND = {LEFT_HAND: 6, RIGHT_HAND: 3}
# (crop side in forearm lengths, mirrored): most found first; measured on the examples (docs/DATA.md)
CROP_TRIES = ((2.2, False), (2.2, True), (1.5, False), (3.0, True))


def crop_square(rgb: np.ndarray, cx: float, cy: float, side: float, size: int = 256):
    """Zero-padded square crop of ``side`` px centred at (cx, cy), resized to ``size``; returns
    (crop, x0, y0, side_int) so that frame xy = crop xy * side_int / size + (x0, y0), or None if outside."""
    import cv2

    n = max(int(round(side)), 16)
    x0, y0 = int(round(cx - n / 2)), int(round(cy - n / 2))
    h, w = rgb.shape[:2]
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x0 + n, w), min(y0 + n, h)
    if sx1 <= sx0 or sy1 <= sy0:
        return None
    crop = np.zeros((n, n, 3), np.uint8)
    crop[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR), x0, y0, n


def _pts(landmarks, w: float, h: float) -> np.ndarray:
    return np.array([[p.x * w, p.y * h] for p in landmarks.landmark[:N_HAND]], np.float32)


def from_holistic(res, height: int, width: int) -> np.ndarray:
    """(2, 21, 3) hands of a Holistic result (its left hand is the person's left)."""
    out = np.zeros((2, N_HAND, 3), np.float32)
    out[..., :2] = np.nan
    for slot, lm in ((LEFT_HAND, res.left_hand_landmarks), (RIGHT_HAND, res.right_hand_landmarks)):
        if lm is not None:
            out[slot, :, :2] = _pts(lm, width, height)
            out[slot, :, 2] = 1.0
    return out


class HandFinder:
    """Steps 2 and 3 of the module docstring (step 1 comes with the body from ``pose.PoseExtractor``)."""

    def __init__(self, static: bool, min_detection_confidence: float = 0.5, crop_confidence: float = 0.3,
                 crop_tries=CROP_TRIES):
        import mediapipe as mp

        hands = mp.solutions.hands.Hands
        # crops move from frame to frame, so their graph detects every time
        self._crop = hands(static_image_mode=True, max_num_hands=1, model_complexity=1,
                           min_detection_confidence=crop_confidence)
        self._full = hands(static_image_mode=static, max_num_hands=2, model_complexity=1,
                           min_detection_confidence=min_detection_confidence)
        self.crop_tries = tuple(crop_tries)

    def close(self) -> None:
        self._crop.close()
        self._full.close()

    def find(self, rgb: np.ndarray, body: np.ndarray, hands: np.ndarray) -> np.ndarray:
        """Fill the empty slots of ``hands`` (2, 21, 3) in place, then make the sides consistent."""
        for slot in (LEFT_HAND, RIGHT_HAND):
            if hands[slot, 0, 2] <= 0:
                found = self._in_crops(rgb, body, slot)
                if found is not None:
                    hands[slot] = found
        if (hands[:, 0, 2] <= 0).any():
            self._full_frame(rgb, body, hands)
        hands[:] = consistent_sides(hands, body)
        return hands

    def _in_crops(self, rgb, body, slot) -> Optional[np.ndarray]:
        wrist, elbow = body[WRIST_OF_HAND[slot]], body[ELBOW_OF_HAND[slot]]
        if wrist[2] < 0.2 or elbow[2] < 0.1:
            return None
        fore = wrist[:2] - elbow[:2]
        length = float(np.linalg.norm(fore))
        shoulder = float(np.linalg.norm(body[2, :2] - body[5, :2])) if (body[[2, 5], 2] > 0.3).all() else 0.0
        for scale, mirrored in self.crop_tries:
            side = max(scale * length, 0.6 * shoulder, 32.0)
            got = crop_square(rgb, *(wrist[:2] + fore / 3.0), side)
            if got is None:
                return None
            crop, x0, y0, n = got
            res = self._crop.process(np.ascontiguousarray(crop[:, ::-1]) if mirrored else crop)
            if not res.multi_hand_landmarks:
                continue
            pts = _pts(res.multi_hand_landmarks[0], 1.0, 1.0)
            if mirrored:
                pts[:, 0] = 1.0 - pts[:, 0]
            pts = pts * n + np.array([x0, y0], np.float32)  # normalised crop coords -> frame pixels
            if np.linalg.norm(pts[0] - wrist[:2]) > max(0.75 * length, 0.25 * side):
                continue  # a hand, but not the one on this wrist
            out = np.empty((N_HAND, 3), np.float32)
            out[:, :2], out[:, 2] = pts, float(res.multi_handedness[0].classification[0].score)
            return out
        return None

    def _full_frame(self, rgb, body, hands) -> None:
        h, w = rgb.shape[:2]
        res = self._full.process(rgb)
        if not res.multi_hand_landmarks:
            return
        taken = {s for s in (LEFT_HAND, RIGHT_HAND) if hands[s, 0, 2] > 0}
        cands = []
        for lm, hd in zip(res.multi_hand_landmarks, res.multi_handedness):
            c = hd.classification[0]
            # MediaPipe's label assumes a mirrored (selfie) image: its "Right" is the person's left
            cands.append((_pts(lm, w, h), float(c.score), LEFT_HAND if c.label == "Right" else RIGHT_HAND))
        for pts, score, slot in assign_slots(cands, body):
            if slot in taken:
                continue
            taken.add(slot)
            hands[slot, :, :2], hands[slot, :, 2] = pts, score


def assign_slots(cands, body):
    """Hands -> slots: nearest confident body wrist (unique), else the handedness label."""
    wrists = {s: body[WRIST_OF_HAND[s]] for s in (LEFT_HAND, RIGHT_HAND)}
    if len(cands) == 0 or not all(wrists[s][2] > 0.1 for s in wrists):
        return [(p, sc, lab) for p, sc, lab in cands]
    if len(cands) == 1:
        p, sc, _ = cands[0]
        d = {s: np.linalg.norm(p[0] - wrists[s][:2]) for s in wrists}
        return [(p, sc, min(d, key=d.get))]
    (p0, s0, _), (p1, s1, _) = cands[:2]
    direct = np.linalg.norm(p0[0] - wrists[0][:2]) + np.linalg.norm(p1[0] - wrists[1][:2])
    swapped = np.linalg.norm(p0[0] - wrists[1][:2]) + np.linalg.norm(p1[0] - wrists[0][:2])
    return [(p0, s0, 0), (p1, s1, 1)] if direct <= swapped else [(p0, s0, 1), (p1, s1, 0)]


def consistent_sides(hands: np.ndarray, body: np.ndarray, same_frac: float = 0.3) -> np.ndarray:
    """(2, 21, 3) hands with each in the slot of the body wrist it is nearest to, and a hand found for both
    slots (wrists within ``same_frac`` of the hand's size) kept only in the slot whose wrist is nearer."""
    out = hands.copy()
    found = out[:, 0, 2] > 0
    wr = {s: body[WRIST_OF_HAND[s]] for s in (LEFT_HAND, RIGHT_HAND)}
    if not all(wr[s][2] > 0.1 and np.isfinite(wr[s][:2]).all() for s in wr):
        return out
    d = np.array([[np.linalg.norm(out[h, 0, :2] - wr[s][:2]) if found[h] else np.inf for s in (0, 1)]
                  for h in (0, 1)])  # d[hand slot, wrist slot]
    if found.all():
        size = max(float(np.nanmax(np.ptp(out[0, :, :2], axis=0))), 1.0)
        if np.linalg.norm(out[0, 0, :2] - out[1, 0, :2]) < same_frac * size:  # one hand, twice
            drop = 0 if d[0, 0] > d[1, 1] else 1
            out[drop, :, :2], out[drop, :, 2] = np.nan, 0.0
        elif d[0, 1] + d[1, 0] < d[0, 0] + d[1, 1]:
            out = out[::-1].copy()
    else:
        h = int(np.argmax(found)) if found.any() else None
        if h is not None and d[h, 1 - h] < d[h, h]:
            out = out[::-1].copy()
    return out


def fill_gaps(hands: np.ndarray, body: np.ndarray, max_gap: int = 4, conf: float = 0.5) -> np.ndarray:
    """(T, 2, 21, 3) hands with runs of at most ``max_gap`` missing frames between two detections of the
    same slot filled: the hand's offsets from its anchor (the body wrist, or the hand's own wrist point when
    the body wrist is missing) are interpolated linearly and placed on the anchor of each filled frame
    (the body wrist there, else the interpolated anchor). Filled points get confidence ``conf``."""
    out = hands.copy()

    def anchor(t, slot):
        wrist = body[t, WRIST_OF_HAND[slot]]
        return wrist[:2] if wrist[2] > 0.2 and np.isfinite(wrist[:2]).all() else None

    for slot in (LEFT_HAND, RIGHT_HAND):
        seen = np.flatnonzero(hands[:, slot, 0, 2] > 0)
        for a, b in zip(seen[:-1], seen[1:]):
            if b - a < 2 or b - a - 1 > max_gap:
                continue
            ends = []
            for t in (a, b):
                pts = hands[t, slot, :, :2]
                at = anchor(t, slot)
                ends.append((pts[0] if at is None else at, pts))
            (pa, ha), (pb, hb) = ends
            for t in range(a + 1, b):
                u = (t - a) / (b - a)
                at = anchor(t, slot)
                at = (1 - u) * pa + u * pb if at is None else at
                out[t, slot, :, :2] = at + (1 - u) * (ha - pa) + u * (hb - pb)
                out[t, slot, :, 2] = conf
    return out
