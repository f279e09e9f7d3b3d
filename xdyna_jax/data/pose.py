"""Per-frame pose extraction with MediaPipe (offline, bundled models) -> OpenPose-18 body + 2 hands + face mesh.

The authors used DWPose (unreleased pipeline); we use MediaPipe's legacy ``solutions`` API (Pose, Hands,
FaceMesh), whose models ship inside the ``mediapipe`` wheel, and map its keypoints onto the OpenPose layout
that the renderer and the pose ControlNet expect.

Body: MediaPipe Pose (33 landmarks, person-centric left/right) -> OpenPose-18 (``OPENPOSE_FROM_MEDIAPIPE``):

    OP  name        MP index                 OP  name        MP index
     0  nose        0 nose                    9  r_knee      26 right_knee
     1  neck        mean(11, 12) shoulders   10  r_ankle     28 right_ankle
     2  r_shoulder  12 right_shoulder        11  l_hip       23 left_hip
     3  r_elbow     14 right_elbow           12  l_knee      25 left_knee
     4  r_wrist     16 right_wrist           13  l_ankle     27 left_ankle
     5  l_shoulder  11 left_shoulder         14  r_eye        5 right_eye
     6  l_elbow     13 left_elbow            15  l_eye        2 left_eye
     7  l_wrist     15 left_wrist            16  r_ear        8 right_ear
     8  r_hip       24 right_hip             17  l_ear        7 left_ear

Confidence is MediaPipe's per-landmark ``visibility``; the neck takes the smaller of the two shoulders'.
Hands: MediaPipe Hands (21 landmarks, same order as OpenPose hands). Slot 0 is the person's left hand, slot 1
the right (COCO-WholeBody / DWPose order). A hand is put in the slot of the nearer body wrist (OP 7 / OP 4)
when the body was found, else by MediaPipe's handedness label (which assumes a mirrored image, so its
"Left" is the person's right). Confidence of every hand keypoint is the handedness score.
Face: MediaPipe FaceMesh (468 landmarks, first face); confidence 1 where found (FaceMesh gives no
per-landmark score).

Misses are ``x = y = NaN`` and ``conf = 0``. Coordinates are pixels (x right, y down) of the input frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

N_BODY, N_HAND, N_FACE = 18, 21, 468

# OpenPose-18 index -> MediaPipe Pose index (neck, index 1, is the shoulder midpoint: -1 here).
OPENPOSE_FROM_MEDIAPIPE = np.array([0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7])
OP_NAMES = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
            "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")
LEFT_HAND, RIGHT_HAND = 0, 1
WRIST_OF_HAND = {LEFT_HAND: 7, RIGHT_HAND: 4}  # OpenPose wrist each hand slot hangs from


@dataclass
class Poses:
    """Keypoints of T frames: ``[..., 0:2]`` = (x, y) pixels, ``[..., 2]`` = confidence (0 and NaN xy = miss)."""

    body: np.ndarray   # (T, 18, 3) OpenPose-18
    hands: np.ndarray  # (T, 2, 21, 3) [left, right]
    face: np.ndarray   # (T, 468, 3) face mesh
    height: int
    width: int

    def __post_init__(self):
        t = self.body.shape[0]
        for name, arr, tail in (("body", self.body, (N_BODY, 3)), ("hands", self.hands, (2, N_HAND, 3)),
                                ("face", self.face, (N_FACE, 3))):
            if arr.shape != (t, *tail):
                raise ValueError(f"Poses.{name} must be {(t, *tail)}, got {arr.shape}")

    def __len__(self) -> int:
        return self.body.shape[0]

    def __getitem__(self, idx) -> "Poses":
        """Frame subset (an int keeps the time axis)."""
        if isinstance(idx, (int, np.integer)):
            idx = slice(int(idx), int(idx) + 1) if idx != -1 else slice(-1, None)
        return Poses(self.body[idx], self.hands[idx], self.face[idx], self.height, self.width)

    def copy(self) -> "Poses":
        return Poses(self.body.copy(), self.hands.copy(), self.face.copy(), self.height, self.width)

    @staticmethod
    def empty(t: int, height: int, width: int) -> "Poses":
        def blank(*shape):
            a = np.zeros((t, *shape, 3), np.float32)
            a[..., :2] = np.nan
            return a
        return Poses(blank(N_BODY), blank(2, N_HAND), blank(N_FACE), height, width)

    @staticmethod
    def concatenate(items: Iterable["Poses"]) -> "Poses":
        items = list(items)
        return Poses(np.concatenate([p.body for p in items]), np.concatenate([p.hands for p in items]),
                     np.concatenate([p.face for p in items]), items[0].height, items[0].width)


class PoseExtractor:
    """MediaPipe Pose + Hands + FaceMesh, run on every frame. Use as a context manager (closes the graphs).

    ``static=True`` detects every frame independently (images); ``False`` lets Pose and full-frame Hands
    track across frames (videos). Hand crops and FaceMesh always detect per frame (their crops move).
    """

    def __init__(self, static: bool = False, body: bool = True, hands: bool = True, face: bool = True,
                 model_complexity: int = 1, min_detection_confidence: float = 0.5,
                 hand_crop_confidence: float = 0.3, hand_crop_scale: float = 2.2):
        import mediapipe as mp

        sol = mp.solutions
        kw = dict(static_image_mode=static, min_detection_confidence=min_detection_confidence)
        self._pose = sol.pose.Pose(model_complexity=model_complexity, **kw) if body else None
        self._hands = sol.hands.Hands(max_num_hands=2, model_complexity=1, **kw) if hands else None
        self.hand_crop_scale = hand_crop_scale  # crop side in forearm lengths
        # Crops move from frame to frame, so the crop graph detects every time (static mode).
        self._hand_crop_graph = (sol.hands.Hands(static_image_mode=True, max_num_hands=1, model_complexity=1,
                                                 min_detection_confidence=hand_crop_confidence)
                                 if hands and body else None)
        # FaceMesh sees head crops and, as a fallback, whole frames: never track across the two.
        self._face = (sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                                             min_detection_confidence=min_detection_confidence)
                      if face else None)

    def close(self) -> None:
        for g in (self._pose, self._hands, self._hand_crop_graph, self._face):
            if g is not None:
                g.close()

    def __enter__(self) -> "PoseExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frame(self, rgb: np.ndarray) -> Poses:
        """Keypoints of one uint8 RGB ``(H, W, 3)`` frame, as a 1-frame ``Poses``."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        out = Poses.empty(1, h, w)
        scale = np.array([w, h], np.float32)
        if self._pose is not None:
            res = self._pose.process(rgb)
            if res.pose_landmarks is not None:
                mp33 = np.array([[p.x, p.y, p.visibility] for p in res.pose_landmarks.landmark], np.float32)
                body = mp33[np.maximum(OPENPOSE_FROM_MEDIAPIPE, 0)].copy()
                body[1, :2] = (mp33[11, :2] + mp33[12, :2]) / 2
                body[1, 2] = min(mp33[11, 2], mp33[12, 2])
                body[:, :2] *= scale
                out.body[0] = body
        if self._hands is not None:
            self._hands_from_crops(rgb, out)
        if self._hands is not None and (out.hands[0, :, 0, 2] == 0).any():
            res = self._hands.process(rgb)
            if res.multi_hand_landmarks:
                taken = {slot for slot in (0, 1) if out.hands[0, slot, 0, 2] > 0}
                cands = []
                for lm, hd in zip(res.multi_hand_landmarks, res.multi_handedness):
                    pts = np.array([[p.x, p.y] for p in lm.landmark], np.float32) * scale
                    c = hd.classification[0]
                    cands.append((pts, float(c.score), LEFT_HAND if c.label == "Right" else RIGHT_HAND))
                for pts, score, slot in self._assign_slots(cands, out.body[0]):
                    if slot in taken:
                        continue
                    taken.add(slot)
                    out.hands[0, slot, :, :2] = pts
                    out.hands[0, slot, :, 2] = score
        if self._face is not None:
            face = self._face_in_crop(rgb, out.body[0])
            if face is None:  # no body, or the head crop failed: try the whole frame
                face = self._face_mesh(rgb)
            if face is not None:
                out.face[0, :, :2] = face
                out.face[0, :, 2] = 1.0
        return out

    def _face_mesh(self, rgb: np.ndarray) -> Optional[np.ndarray]:
        res = self._face.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        lm = res.multi_face_landmarks[0].landmark
        h, w = rgb.shape[:2]
        return np.array([[p.x * w, p.y * h] for p in lm[:N_FACE]], np.float32)

    def _face_in_crop(self, rgb: np.ndarray, body: np.ndarray) -> Optional[np.ndarray]:
        """FaceMesh on a square head crop (side 2x the shoulder width, centred on the nose/eyes/ears),
        resized to 256 px: the bundled short-range face detector misses small faces in full frames."""
        head = body[[0, 14, 15, 16, 17]]
        head = head[head[:, 2] > 0.3]
        sh = body[[2, 5]]
        if len(head) == 0 or (sh[:, 2] <= 0.3).any():
            return None
        cx, cy = head[:, :2].mean(0)
        side = max(2.0 * float(np.linalg.norm(sh[0, :2] - sh[1, :2])), 48.0)
        got = self._crop_square(rgb, cx, cy, side)
        if got is None:
            return None
        crop, x0, y0, n = got
        face = self._face_mesh(crop)
        if face is None:
            return None
        return face * (n / crop.shape[0]) + np.array([x0, y0], np.float32)

    def _crop_square(self, rgb, cx, cy, side, size=256):
        """Zero-padded square crop of ``side`` px centred at (cx, cy), resized to ``size``; returns
        (crop, x0, y0, side_int) so that frame xy = crop xy * side_int / size + (x0, y0)."""
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

    def _hands_from_crops(self, rgb: np.ndarray, out: Poses) -> None:
        """Small hands are missed in full frames: run Hands on a square crop around each confident wrist
        (centre 1/3 forearm past the wrist, side ``hand_crop_scale`` forearm lengths, >= 0.6 shoulder widths;
        palm threshold ``hand_crop_confidence``; 2.2 and 0.3 found the most hands on the examples among
        1.6/2.2 x 0.2/0.3/0.5). Fills the wrist's slot when the found hand's wrist lies near it."""
        body = out.body[0]
        if self._hand_crop_graph is None:
            return
        shoulder = float(np.linalg.norm(body[2, :2] - body[5, :2])) if (body[[2, 5], 2] > 0.3).all() else 0.0
        for slot, (wrist, elbow) in ((LEFT_HAND, (7, 6)), (RIGHT_HAND, (4, 3))):
            if body[wrist, 2] < 0.2 or body[elbow, 2] < 0.1:
                continue
            fore = body[wrist, :2] - body[elbow, :2]
            length = float(np.linalg.norm(fore))
            side = max(self.hand_crop_scale * length, 0.6 * shoulder, 32.0)
            cx, cy = body[wrist, :2] + fore / 3.0
            got = self._crop_square(rgb, cx, cy, side)
            if got is None:
                continue
            crop, x0, y0, n = got
            res = self._hand_crop_graph.process(crop)
            if not res.multi_hand_landmarks:
                continue
            pts = np.array([[p.x, p.y] for p in res.multi_hand_landmarks[0].landmark], np.float32)
            pts = pts * n + np.array([x0, y0], np.float32)  # normalised crop coords -> frame pixels
            if np.linalg.norm(pts[0] - body[wrist, :2]) > max(0.75 * length, 0.25 * side):
                continue  # a hand, but not the one on this wrist
            out.hands[0, slot, :, :2] = pts
            out.hands[0, slot, :, 2] = float(res.multi_handedness[0].classification[0].score)

    @staticmethod
    def _assign_slots(cands, body):
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

    def video(self, frames: np.ndarray) -> Poses:
        """Keypoints of uint8 RGB ``(T, H, W, 3)`` frames."""
        return Poses.concatenate(self.frame(f) for f in frames)


def extract_poses(frames: np.ndarray, static: Optional[bool] = None, smooth_window: int = 0,
                  **kwargs) -> Poses:
    """Detect keypoints in ``(T, H, W, 3)`` (or one ``(H, W, 3)``) uint8 RGB frames.

    ``static`` defaults to True for a single image and False (tracking) for videos. ``smooth_window`` > 1
    applies ``smooth_poses`` (centred moving average over confident frames).
    """
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) or (H, W, 3) RGB, got {frames.shape}")
    if static is None:
        static = frames.shape[0] == 1
    with PoseExtractor(static=static, **kwargs) as ex:
        poses = ex.video(frames)
    return smooth_poses(poses, smooth_window) if smooth_window > 1 else poses


def _smooth(arr: np.ndarray, window: int, min_conf: float) -> np.ndarray:
    """Centred moving average of xy along axis 0 over frames with conf >= min_conf; misses stay misses."""
    xy, conf = arr[..., :2], arr[..., 2]
    ok = (conf >= min_conf) & np.isfinite(xy).all(-1)
    w = np.where(ok, 1.0, 0.0)[..., None]
    v = np.where(ok[..., None], xy, 0.0)
    half = window // 2
    t = arr.shape[0]
    def conv(a):  # sum over [i-half, i+half] along time, edges truncated
        pad = np.concatenate([np.zeros((half, *a.shape[1:])), a, np.zeros((half, *a.shape[1:]))])
        c = np.cumsum(np.concatenate([np.zeros((1, *a.shape[1:])), pad]), axis=0)
        return c[2 * half + 1:2 * half + 1 + t] - c[:t]
    num, den = conv(v), conv(w)
    out = arr.copy()
    out[..., :2] = np.where(ok[..., None], num / np.maximum(den, 1e-9), xy)
    return out


def smooth_poses(poses: Poses, window: int = 5, min_conf: float = 0.3) -> Poses:
    """Temporal smoothing: each confident keypoint becomes the mean of its confident values within a
    centred window of ``window`` frames (odd; even rounds up). Missed/low-confidence points are unchanged."""
    if window <= 1:
        return poses.copy()
    return Poses(_smooth(poses.body, window, min_conf), _smooth(poses.hands, window, min_conf),
                 _smooth(poses.face, window, min_conf), poses.height, poses.width)
