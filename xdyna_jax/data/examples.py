"""One video -> its dataset examples: the per-video work of a build (decode, conditions, encode, extras).

``video_examples`` is the one function both executions of ``build`` call: the local loop (``datasets.py``)
and the Beam transform (``beam.py``), so the two write the same examples. It never raises for a bad
video: anything that goes wrong with one video (it cannot be decoded, the pose / face models or the
extra encoders fail on it, its conditions have the wrong shape, no person is found in any frame) comes
back as a ``VideoResult`` whose ``reject`` says why, and the build lists it in ``rejects.jsonl`` and the
report's ``skipped``. Fields of an example are described in ``datasets.py``.
"""
from __future__ import annotations

import dataclasses
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np

from xdyna_jax.cli import UserError

from .records import DatasetError, encode_image
from .video import VideoError, read_video, video_info

ConditionsFn = Callable[[np.ndarray], Mapping[str, Any]]
ExtraFn = Callable[[str, np.ndarray, Mapping[str, Any]], Mapping[str, Any]]


@dataclasses.dataclass
class VideoResult:
    """What one video gave: its ``(key, example)`` pairs and counts, or why it gave none."""

    split: str
    file: str                                   # the source path, as listed
    examples: list = dataclasses.field(default_factory=list)
    frames: int = 0
    detections: int = 0
    misses: int = 0
    reject: Optional[str] = None

    def report_line(self) -> dict:
        """The JSON-able summary of this video (no examples): what the build report adds up."""
        return {"split": self.split, "file": self.file, "frames": self.frames, "detections": self.detections,
                "misses": self.misses, "reject": self.reject}


class _Reject(Exception):
    """This video gives no examples, for the reason in the message."""


def check_conditions(conds: Mapping[str, Any], shape: tuple, where: str) -> tuple:
    """``(pose, face, meta, meta_json)`` of a ``conditions_fn`` result, checked against the frames' shape."""
    t, h, w, _ = shape
    out = []
    for key, c in (("pose", 3), ("face", 6)):
        arr = np.asarray(conds.get(key)) if key in conds else None
        if arr is None or arr.dtype != np.uint8 or arr.shape != (t, h, w, c):
            got = "missing" if arr is None else f"{arr.dtype} {arr.shape}"
            raise DatasetError(f"{where}: conditions_fn field {key!r} must be uint8 {(t, h, w, c)}, got {got}")
        out.append(arr)
    meta = dict(conds.get("meta") or {})
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except TypeError as e:
        raise DatasetError(f"{where}: conditions_fn field 'meta' is not JSON-serialisable ({e})") from e
    return out[0], out[1], meta, meta_json


def video_examples(split: str, root: Path, path: Path, settings, conditions_fn: Optional[ConditionsFn],
                   extra_fn: Optional[ExtraFn] = None, pool: Optional[ThreadPoolExecutor] = None) -> VideoResult:
    """The examples of the video ``path`` (under the folder ``root``) of ``split`` ("human" / "scene")."""
    try:
        if pool is None:
            with ThreadPoolExecutor(max(1, settings.encode_threads)) as own:
                return _examples(split, Path(root), Path(path), settings, conditions_fn, extra_fn, own)
        return _examples(split, Path(root), Path(path), settings, conditions_fn, extra_fn, pool)
    except (_Reject, UserError) as e:  # UserError: a conditions_fn result of the wrong shape
        return VideoResult(split, str(path), reject=str(e))
    except Exception as e:  # any other failure on this one video: rejected, the others go on
        return VideoResult(split, str(path), reject=f"{type(e).__name__}: {e}")


def _examples(split, root, path, s, conditions_fn, extra_fn, pool) -> VideoResult:
    rel = path.relative_to(root).as_posix()
    try:
        frames = read_video(path, stride=s.frame_stride, max_frames=s.max_frames)
        fps = video_info(path)["fps"] / s.frame_stride
    except VideoError as e:  # unreadable, truncated, not a video
        raise _Reject(str(e)) from e
    if s.size is not None and tuple(frames.shape[1:3]) != tuple(s.size):
        import cv2
        frames = np.stack([cv2.resize(fr, (s.size[1], s.size[0]), interpolation=cv2.INTER_AREA) for fr in frames])
    t, h, w, _ = frames.shape
    is_scene = split == "scene"
    pose = face = []
    meta, meta_json = {}, "{}"
    conds: Mapping[str, Any] = {}
    if not is_scene:
        try:
            conds = conditions_fn(frames)
        except Exception as e:  # any failure of the pose / face models on this video
            raise _Reject(f"conditions failed: {type(e).__name__}: {e}") from e
        pose_a, face_a, meta, meta_json = check_conditions(conds, frames.shape, str(path))
        # a human video without a person would teach the pose ControlNet nothing (an empty skeleton)
        if "detections" in meta and int(meta["detections"]) == 0:
            raise _Reject(f"no person found in any of its {t} frames")
        pose = list(pool.map(lambda im: encode_image(im, "png"), pose_a))
        face = list(pool.map(lambda im: encode_image(im, "png"), face_a))
    enc = list(pool.map(lambda im: encode_image(im, s.frame_codec, s.jpeg_quality), frames))
    det = int(meta.get("detections", 0)) if not is_scene else 0
    miss = int(meta.get("misses", 0)) if not is_scene else 0
    n_seg = -(-t // s.segment_frames) if s.segment_frames else 1
    examples = []  # all segments first: a video whose extras fail is rejected whole
    for k, seg in enumerate(np.array_split(np.arange(t), n_seg)):
        a, b = int(seg[0]), int(seg[-1]) + 1
        blobs = lambda lst: np.array(lst[a:b] if len(lst) else [], dtype=object)  # noqa: E731
        ex = {"video_id": rel, "segment": k, "start_frame": a, "is_scene": is_scene, "num_frames": b - a,
              "fps": fps, "height": h, "width": w, "frames": blobs(enc), "pose": blobs(pose),
              "face": blobs(face), "detections": det, "misses": miss, "meta_json": meta_json}
        if extra_fn is not None:
            sub = {key: (v[a:b] if key in ("pose", "face") else v) for key, v in conds.items()}
            try:
                ex.update(extra_fn(rel, frames[a:b], sub))
            except Exception as e:  # any failure of the extra encoders on this video
                raise _Reject(f"extra features failed: {type(e).__name__}: {e}") from e
        examples.append((f"{split}/{rel}" if n_seg == 1 else f"{split}/{rel}#{k:05d}", ex))
    return VideoResult(split, str(path), examples, frames=t, detections=det, misses=miss)
