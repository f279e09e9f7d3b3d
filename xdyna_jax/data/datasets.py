"""Video folders -> an ``array_record`` TFDS dataset (written and read without TensorFlow).

Layout: ``OUT/xdyna_videos/1.0.0/`` holds ``xdyna_videos-{human,scene}.array_record-*`` shards,
TFDS's ``dataset_info.json`` / ``features.json``, and our ``build_report.json``. Read it with
``records.open_splits(OUT)`` (``tfds.builder_from_directory(...).as_data_source()``: random access, no TF;
re-exported here).

One example per video (split ``human`` from the human folder, ``scene`` from the scene folder), or per
segment of at most ``settings.segment_frames`` frames (near-equal consecutive parts of the video):

    video_id   text    path relative to its folder ("dance/a.mp4")
    segment, start_frame  int32  segment number and its first frame in the (strided) video (0, 0 if unsplit)
    is_scene   bool    scene videos have no pose/face: ``pose`` and ``face`` are empty lists
    num_frames, height, width  int32;  fps float32 (after ``frame_stride``)
    frames     T encoded RGB frames        (settings.frame_codec: "jpeg" by default, or "png")
    pose       T PNG skeleton renders      (RGB, same H x W)
    face       T PNG S-Face conditions     (6 channels stored as one (H, 2W, 3) PNG: ch 0-2 | ch 3-5)
    detections, misses  int32  frames of the whole video with / without a detected person (from ``meta``)
    meta_json  text    the conditions' report (JSON)

Format choice: per-frame encoded images, not raw ``(T, H, W, C)`` uint8. One 571-frame 512x896 example
video is 786 MB raw (1.38 MB a frame; + the same for pose, twice that for face). Measured on
``driving_1.mp4`` / ``pose_1.mp4``: a frame is 56 KB as JPEG q95 (25x smaller; mean error 0.4/255), 168 KB
as PNG; a skeleton frame 43 KB as PNG (32x, lossless; JPEG gets 25 KB but errs by up to 138/255 on the
thin coloured limbs, so conditions are always PNG). Decoding one 512x896 frame takes ~8 ms (OpenCV,
releases the GIL), and a clip decodes only the 17 frames it uses, in the loader's threads. Use
``frame_codec="png"`` for bit-exact frames. A read returns the whole example, so long videos should be
built with ``segment_frames`` (e.g. 96-192): a sample then reads a few MB, not the whole video; the
reference frame is then drawn from the clip's segment.

``conditions_fn(frames) -> {"pose": uint8 (T,H,W,3), "face": uint8 (T,H,W,6), "meta": dict}`` makes the
per-frame conditions of a human video; ``meta`` must be JSON-serialisable and may give ``detections``
and ``misses``. ``default_conditions`` wires the pose / render / S-Face modules.

Extra per-example fields: pass ``extra_features`` (name -> a TF-free ``tfds.features`` object, e.g.
``Tensor(shape=(None, 64, 64, 8), dtype=np.float16)``) and ``extra_fn(video_id, frames, conditions) ->
{name: value}`` (per example: the segment's frames and conditions) to ``build_dataset``; a video whose
``extra_fn`` raises is skipped and reported. ``encode.frame_encoders`` makes the pair that pre-encodes
VAE posteriors and CLIP hidden states (the ``build --vae/--image-encoder`` options), which the loader
returns aligned with the clip (``LoaderConfig.encoded``).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional

import numpy as np

from xdyna_jax.cli import atomic_dir

# re-exported: the reading side lives in records.py
from .records import (NAME, SPLITS, VERSION, DatasetError, dataset_dir, decode_image, encode_image,
                      load_report, open_splits, resolve_dataset_dir)
from .video import VideoError, read_video, video_info

__all__ = ["BuildReport", "BuildSettings", "ConditionsFn", "DatasetError", "NAME", "SPLITS", "VERSION",
           "VIDEO_EXTENSIONS", "build_dataset", "count_detections", "dataset_dir", "decode_image",
           "default_conditions", "encode_image", "list_videos", "load_report", "open_splits",
           "resolve_dataset_dir"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")

ConditionsFn = Callable[[np.ndarray], Mapping[str, Any]]


@dataclasses.dataclass(frozen=True)
class BuildSettings:
    """How each video becomes an example (loadable with ``xdyna_jax.config.load``)."""

    max_frames: Optional[int] = None          # keep the first max_frames frames (after frame_stride)
    frame_stride: int = 1                     # keep every n-th decoded frame
    size: Optional[tuple[int, int]] = None    # (H, W) resize (before the conditions are made)
    frame_codec: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = 95
    segment_frames: Optional[int] = None      # split longer videos into examples of <= this many frames
    encode_threads: int = 4

    def __post_init__(self):
        if self.max_frames is not None and self.max_frames < 1:
            raise ValueError(f"BuildSettings.max_frames must be >= 1 or None, got {self.max_frames}")
        if self.frame_stride < 1:
            raise ValueError(f"BuildSettings.frame_stride must be >= 1, got {self.frame_stride}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise ValueError(f"BuildSettings.size must be (H, W) with H, W >= 1, got {self.size}")
        if self.segment_frames is not None and self.segment_frames < 1:
            raise ValueError(f"BuildSettings.segment_frames must be >= 1 or None, got {self.segment_frames}")
        if self.frame_codec not in ("jpeg", "png"):
            raise ValueError(f"BuildSettings.frame_codec must be 'jpeg' or 'png', got {self.frame_codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"BuildSettings.jpeg_quality must be in [1, 100], got {self.jpeg_quality}")


# ---------------------------------------------------------------- build

@dataclasses.dataclass
class BuildReport:
    dataset_dir: str = ""
    videos: dict = dataclasses.field(default_factory=lambda: {s: 0 for s in SPLITS})
    frames: int = 0
    detections: int = 0
    misses: int = 0
    skipped: list = dataclasses.field(default_factory=list)   # [{"file", "reason"}]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        lines = [f"dataset: {self.dataset_dir}",
                 f"videos: {sum(self.videos.values())} ({', '.join(f'{k} {v}' for k, v in self.videos.items())})",
                 f"frames: {self.frames}", f"detections: {self.detections}", f"misses: {self.misses}",
                 f"skipped files: {len(self.skipped)}"]
        lines += [f"  skipped {s['file']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


def list_videos(folder: str | Path) -> list[Path]:
    """Video files under ``folder`` (recursive, sorted); an empty or missing folder is an error."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: video folder not found")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS)
    if not files:
        raise DatasetError(f"{folder}: no video files ({', '.join(VIDEO_EXTENSIONS)}) found")
    return files


def _check_conditions(conds: Mapping[str, Any], shape: tuple, where: str) -> tuple:
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


def _make_builder_class():
    import tensorflow_datasets as tfds

    class XDynaVideos(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """One example per video; configured at construction (folders, settings, conditions_fn)."""

        name = NAME
        VERSION = tfds.core.Version(VERSION)
        # No checksums / metadata files beside this module. (TFDS's own lookup also needs the
        # ``importlib_resources`` backport on Python >= 3.9, which TFDS does not declare.)
        code_path = tfds.core.utils.classproperty(classmethod(lambda cls: None))

        def __init__(self, *, data_dir, sources: Mapping[str, tuple[Path, list[Path]]], settings: BuildSettings,
                     conditions_fn: Optional[ConditionsFn], report: BuildReport,
                     extra_features: Optional[Mapping[str, Any]] = None, extra_fn=None,
                     progress: Optional[Callable[[str, int, int, str], None]] = None):
            self._sources, self._settings, self._conditions_fn = sources, settings, conditions_fn
            self._report, self._extra_features, self._extra_fn = report, dict(extra_features or {}), extra_fn
            self._progress = progress
            super().__init__(data_dir=str(data_dir), file_format="array_record")

        def _info(self):
            f = tfds.features
            blobs = lambda: f.Tensor(shape=(None,), dtype=np.object_)  # noqa: E731
            feats = {"video_id": f.Text(), "segment": np.int32, "start_frame": np.int32, "is_scene": np.bool_, "num_frames": np.int32, "fps": np.float32,
                     "height": np.int32, "width": np.int32, "frames": blobs(), "pose": blobs(), "face": blobs(),
                     "detections": np.int32, "misses": np.int32, "meta_json": f.Text(),
                     **self._extra_features}
            return tfds.core.DatasetInfo(builder=self, features=f.FeaturesDict(feats),
                                         description="X-Dyna training videos with pose / S-Face conditions")

        def _split_generators(self, dl_manager):
            return {split: self._generate_examples(split, root, files)
                    for split, (root, files) in self._sources.items()}

        def _generate_examples(self, split, root, files):
            s = self._settings
            with ThreadPoolExecutor(max(1, s.encode_threads)) as pool:
                for n, path in enumerate(files):
                    rel = path.relative_to(root).as_posix()
                    if self._progress:
                        self._progress(split, n, len(files), rel)
                    yield from self._examples(split, path, rel, pool)
                if self._progress:
                    self._progress(split, len(files), len(files), "")

        def _examples(self, split, path, rel, pool):
            s, rep = self._settings, self._report
            try:
                frames = read_video(path, stride=s.frame_stride, max_frames=s.max_frames)
                fps = video_info(path)["fps"] / s.frame_stride
            except VideoError as e:
                rep.skipped.append({"file": str(path), "reason": str(e)})
                return
            if s.size is not None and tuple(frames.shape[1:3]) != tuple(s.size):
                import cv2
                frames = np.stack([cv2.resize(fr, (s.size[1], s.size[0]), interpolation=cv2.INTER_AREA)
                                   for fr in frames])
            t, h, w, _ = frames.shape
            is_scene = split == "scene"
            pose = face = []
            meta, meta_json = {}, "{}"
            conds: Mapping[str, Any] = {}
            if not is_scene:
                try:
                    conds = self._conditions_fn(frames)
                except Exception as e:  # any failure of the pose / face models on this video: skip it
                    rep.skipped.append({"file": str(path), "reason": f"conditions failed: {type(e).__name__}: {e}"})
                    return
                pose_a, face_a, meta, meta_json = _check_conditions(conds, frames.shape, str(path))
                pose = list(pool.map(lambda im: encode_image(im, "png"), pose_a))
                face = list(pool.map(lambda im: encode_image(im, "png"), face_a))
            enc = list(pool.map(lambda im: encode_image(im, s.frame_codec, s.jpeg_quality), frames))
            det = int(meta.get("detections", 0)) if not is_scene else 0
            miss = int(meta.get("misses", 0)) if not is_scene else 0
            n_seg = -(-t // s.segment_frames) if s.segment_frames else 1
            examples = []  # all segments first: a video whose extras fail is skipped whole
            for k, seg in enumerate(np.array_split(np.arange(t), n_seg)):
                a, b = int(seg[0]), int(seg[-1]) + 1
                blobs = lambda lst: np.array(lst[a:b] if len(lst) else [], dtype=object)  # noqa: E731
                ex = {"video_id": rel, "segment": k, "start_frame": a, "is_scene": is_scene, "num_frames": b - a,
                      "fps": fps, "height": h, "width": w, "frames": blobs(enc), "pose": blobs(pose),
                      "face": blobs(face), "detections": det, "misses": miss, "meta_json": meta_json}
                if self._extra_fn is not None:
                    sub = {key: (v[a:b] if key in ("pose", "face") else v) for key, v in conds.items()}
                    try:
                        ex.update(self._extra_fn(rel, frames[a:b], sub))
                    except Exception as e:  # any failure of the extra encoders on this video: skip it
                        rep.skipped.append({"file": str(path), "reason": f"extra features failed: "
                                                                          f"{type(e).__name__}: {e}"})
                        return
                examples.append((f"{split}/{rel}" if n_seg == 1 else f"{split}/{rel}#{k:05d}", ex))
            rep.videos[split] += 1
            rep.frames += t
            rep.detections += det
            rep.misses += miss
            yield from examples

    return XDynaVideos


def build_dataset(out_dir: str | Path, human_dir: str | Path | None = None, scene_dir: str | Path | None = None,
                  settings: BuildSettings = BuildSettings(), conditions_fn: Optional[ConditionsFn] = None,
                  overwrite: bool = False, extra_features: Optional[Mapping[str, Any]] = None,
                  extra_fn=None, progress=None) -> BuildReport:
    """Build ``OUT/xdyna_videos/1.0.0`` from the video folders; returns (and writes) the build report.

    Unreadable videos are skipped and listed in ``report.skipped``; a split none of whose videos
    could be read is an error, as are empty folders. The dataset folder is built under a temporary name
    beside its final place and renamed when complete: a failed build leaves nothing behind.
    """
    if human_dir is None and scene_dir is None:
        raise DatasetError("build_dataset: give a human video folder, a scene video folder, or both")
    sources = {split: (Path(d), list_videos(d)) for split, d in (("human", human_dir), ("scene", scene_dir))
               if d is not None}
    if human_dir is not None and conditions_fn is None:
        conditions_fn = default_conditions
    target = dataset_dir(out_dir)
    if target.exists() and not overwrite:
        raise DatasetError(f"{target}: dataset already exists (pass overwrite=True / --overwrite)")
    report = BuildReport(dataset_dir=str(target))
    with atomic_dir(target, overwrite=overwrite, hint=" (pass overwrite=True / --overwrite)") as tmp:
        # TFDS writes <data_dir>/xdyna_videos/1.0.0 (+ an unused downloads/): build in a scratch data_dir
        # inside the temporary folder, then lift the version folder's files up into it
        scratch = tmp / "_tfds"
        builder = _make_builder_class()(data_dir=scratch, sources=sources, settings=settings,
                                        conditions_fn=conditions_fn, report=report, extra_features=extra_features,
                                        extra_fn=extra_fn, progress=progress)
        try:
            builder.download_and_prepare()
        except AssertionError as e:
            if "No examples were yielded" not in str(e):
                raise
            split = next((s for s in sources if f'"{s}"' in str(e)), "?")
            folder = sources[split][0] if split in sources else "?"
            reasons = "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in report.skipped)
            raise DatasetError(f"{folder}: none of the {split} videos could be used ({reasons})") from e
        for item in dataset_dir(scratch).iterdir():
            item.rename(tmp / item.name)
        shutil.rmtree(scratch)
        (tmp / "build_report.json").write_text(json.dumps(report.to_dict(), indent=1))
    return report


def count_detections(poses) -> int:
    """Frames of a ``pose.Poses`` in which any body keypoint was found."""
    return int(np.sum((np.asarray(poses.body)[..., 2] > 0).any(axis=-1)))


def default_conditions(frames: np.ndarray) -> dict:
    """Pose renders + S-Face conditions from the pose / render / sface modules."""
    try:
        from . import pose as pose_lib, render, sface
    except ImportError as e:
        raise DatasetError(f"default_conditions: the pose/render/sface modules are not available ({e})") from e
    t, h, w, _ = frames.shape
    poses = pose_lib.extract_poses(frames)
    pose = render.render_poses(poses, height=h, width=w)
    face, face_report = sface.sface_video(frames, poses)
    detected = count_detections(poses)
    return {"pose": pose, "face": face,
            "meta": {"detections": detected, "misses": t - detected, "face": _jsonable(face_report)}}


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _jsonable(dataclasses.asdict(x))
    return x
