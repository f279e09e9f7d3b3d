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
The body comes from MediaPipe Holistic when hands are wanted (its pose is the Pose model, same landmarks).
Hands: 21 landmarks, same order as OpenPose hands; slot 0 is the person's left hand, slot 1 the right
(COCO-WholeBody / DWPose order), each in the slot of the nearer body wrist (OP 7 / OP 4). How they are found
(Holistic, crop search around the wrists, full frame, gap filling) is in ``hands.py``.
Face: MediaPipe FaceMesh (468 landmarks, first face); confidence 1 where found (FaceMesh gives no
per-landmark score).

Misses are ``x = y = NaN`` and ``conf = 0``. Coordinates are pixels (x right, y down) of the input frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import numpy as np

from .hands import CROP_TRIES, HandFinder, crop_square, fill_gaps, from_holistic
from .hands import LEFT_HAND, N_HAND, RIGHT_HAND, WRIST_OF_HAND  # noqa: F401  (re-exported: the slot layout)

N_BODY, N_FACE = 18, 468

# OpenPose-18 index -> MediaPipe Pose index (neck, index 1, is the shoulder midpoint: -1 here).
OPENPOSE_FROM_MEDIAPIPE = np.array([0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7])
OP_NAMES = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
            "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear")


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
    """MediaPipe Holistic (body + hands) or Pose, the hand search of ``hands.py``, and FaceMesh, run on every
    frame. Use as a context manager (closes the graphs).

    ``static=True`` detects every frame independently (images, frames far apart); ``False`` lets the body
    and hand graphs track across frames (consecutive video frames) and fills short hand gaps
    (``hands.fill_gaps``, up to ``hand_max_gap`` frames). Hand crops and FaceMesh always detect per frame
    (their crops move).
    """

    def __init__(self, static: bool = False, body: bool = True, hands: bool = True, face: bool = True,
                 model_complexity: int = 1, min_detection_confidence: float = 0.5,
                 hand_crop_confidence: float = 0.3, hand_crop_tries=CROP_TRIES, hand_max_gap: int = 4):
        import mediapipe as mp

        sol = mp.solutions
        kw = dict(static_image_mode=static, min_detection_confidence=min_detection_confidence,
                  model_complexity=model_complexity)
        # Holistic's pose is the Pose model (identical landmarks) and adds pose-guided hand landmarks
        self._holistic = sol.holistic.Holistic(**kw) if body and hands else None
        self._pose = sol.pose.Pose(**kw) if body and not hands else None
        self._hands = (HandFinder(static, min_detection_confidence, hand_crop_confidence, hand_crop_tries)
                       if hands else None)
        self.static, self.hand_max_gap = static, hand_max_gap
        # FaceMesh sees head crops and, as a fallback, whole frames: never track across the two.
        self._face = (sol.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False,
                                             min_detection_confidence=min_detection_confidence)
                      if face else None)

    def close(self) -> None:
        for g in (self._holistic, self._pose, self._hands, self._face):
            if g is not None:
                g.close()

    def __enter__(self) -> "PoseExtractor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def frame(self, rgb: np.ndarray) -> Poses:
        """Keypoints of one uint8 RGB ``(H, W, 3)`` frame, as a 1-frame ``Poses`` (no gap filling)."""
        rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
        h, w = rgb.shape[:2]
        out = Poses.empty(1, h, w)
        graph = self._holistic or self._pose
        if graph is not None:
            res = graph.process(rgb)
            if res.pose_landmarks is not None:
                mp33 = np.array([[p.x, p.y, p.visibility] for p in res.pose_landmarks.landmark], np.float32)
                body = mp33[np.maximum(OPENPOSE_FROM_MEDIAPIPE, 0)].copy()
                body[1, :2] = (mp33[11, :2] + mp33[12, :2]) / 2
                body[1, 2] = min(mp33[11, 2], mp33[12, 2])
                body[:, :2] *= np.array([w, h], np.float32)
                out.body[0] = body
            if self._holistic is not None:
                out.hands[0] = from_holistic(res, h, w)
        if self._hands is not None:
            self._hands.find(rgb, out.body[0], out.hands[0])
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
        got = crop_square(rgb, cx, cy, side)
        if got is None:
            return None
        crop, x0, y0, n = got
        face = self._face_mesh(crop)
        if face is None:
            return None
        return face * (n / crop.shape[0]) + np.array([x0, y0], np.float32)

    def video(self, frames: np.ndarray) -> Poses:
        """Keypoints of uint8 RGB ``(T, H, W, 3)`` frames."""
        poses = Poses.concatenate(self.frame(f) for f in frames)
        if not self.static and self._hands is not None and self.hand_max_gap > 0:
            poses.hands = fill_gaps(poses.hands, poses.body, self.hand_max_gap)
        return poses


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
