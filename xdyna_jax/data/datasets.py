"""Video folders -> an ``array_record`` TFDS dataset (written and read without TensorFlow).

Layout: ``OUT/xdyna_videos/1.0.0/`` holds ``xdyna_videos-{human,scene}.array_record-*`` shards,
TFDS's ``dataset_info.json`` / ``features.json``, our ``build_report.json`` and ``rejects.jsonl`` (one
``{"file", "reason"}`` line per video that gave no examples, as in the report's ``skipped``). Read it with
``records.open_splits(OUT)`` (``tfds.builder_from_directory(...).as_data_source()``: random access, no TF;
re-exported here).

The per-video work is ``examples.video_examples``; this module runs it over the videos one after another,
or hands the same builder a Beam transform that runs it on a pipeline's workers (``beam.py``, ``build
--beam``): the same examples and files either way.

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
``extra_fn`` raises is rejected and reported. ``encode.frame_encoders`` makes the pair that pre-encodes
VAE posteriors and CLIP hidden states (the ``build --vae/--image-encoder`` options), which the loader
returns aligned with the clip (``LoaderConfig.encoded``).
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional

import numpy as np

from xdyna_jax.cli import atomic_dir

# re-exported: the reading side lives in records.py
from .records import (NAME, SPLITS, VERSION, DatasetError, dataset_dir, decode_image, encode_image,
                      load_report, open_splits, resolve_dataset_dir)
from .examples import ConditionsFn, VideoResult, video_examples

__all__ = ["BuildReport", "BuildSettings", "ConditionsFn", "DatasetError", "NAME", "SPLITS", "VERSION",
           "VIDEO_EXTENSIONS", "build_dataset", "count_detections", "dataset_dir", "decode_image",
           "default_conditions", "encode_image", "list_videos", "load_report", "open_splits",
           "resolve_dataset_dir"]

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


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

    def add(self, result: VideoResult) -> None:
        """Count one video's result (its examples' frames, or its reject)."""
        if result.reject is not None:
            self.skipped.append({"file": result.file, "reason": result.reject})
            return
        self.videos[result.split] += 1
        self.frames += result.frames
        self.detections += result.detections
        self.misses += result.misses

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
                     progress: Optional[Callable[[str, int, int, str], None]] = None, pipeline=None):
            self._sources, self._settings, self._conditions_fn = sources, settings, conditions_fn
            self._report, self._extra_features, self._extra_fn = report, dict(extra_features or {}), extra_fn
            self._progress, self._pipeline = progress, pipeline
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
            if self._pipeline is not None:  # a Beam PTransform: TFDS then writes the split with its Beam writer
                return self._pipeline.transform(split, root, files, self._settings, self._conditions_fn)
            return self._local_examples(split, root, files)

        def _local_examples(self, split, root, files):
            s = self._settings
            with ThreadPoolExecutor(max(1, s.encode_threads)) as pool:
                for n, path in enumerate(files):
                    if self._progress:
                        self._progress(split, n, len(files), path.relative_to(root).as_posix())
                    result = video_examples(split, root, path, s, self._conditions_fn, self._extra_fn, pool)
                    self._report.add(result)
                    yield from result.examples
                if self._progress:
                    self._progress(split, len(files), len(files), "")

        def _process_pipeline_result(self, pipeline_result):
            self._pipeline.finished(pipeline_result)

    return XDynaVideos


def build_dataset(out_dir: str | Path, human_dir: str | Path | None = None, scene_dir: str | Path | None = None,
                  settings: BuildSettings = BuildSettings(), conditions_fn: Optional[ConditionsFn] = None,
                  overwrite: bool = False, extra_features: Optional[Mapping[str, Any]] = None,
                  extra_fn=None, progress=None, pipeline=None) -> BuildReport:
    """Build ``OUT/xdyna_videos/1.0.0`` from the video folders; returns (and writes) the build report.

    Videos that give no examples (``examples.video_examples``: unreadable, no person, a model failing
    on them) are skipped and listed in ``report.skipped`` and ``rejects.jsonl``; a split none of whose
    videos could be used is an error, as are empty folders. The dataset folder is built under a temporary
    name beside its final place and renamed when complete: a failed build leaves nothing behind.
    ``pipeline``: a ``beam.BeamPipeline`` runs the per-video work as a Beam pipeline instead of this
    process's loop (``extra_fn`` is then the pipeline's, made on each worker).
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
                                        extra_fn=extra_fn, progress=progress, pipeline=pipeline)
        try:
            builder.download_and_prepare(
                download_config=pipeline.download_config(tmp) if pipeline is not None else None)
        except Exception as e:  # only TFDS's refusal of an empty split is ours to explain; the rest propagates
            split = _empty_split(e, sources)
            if split is None:
                raise
            if pipeline is not None:
                pipeline.add_to(report)
            _none_used(sources, split, report, e)
        if pipeline is not None:
            pipeline.add_to(report)  # the pipeline's per-video lines, summed
        for item in dataset_dir(scratch).iterdir():
            item.rename(tmp / item.name)
        shutil.rmtree(scratch)
        (tmp / "build_report.json").write_text(json.dumps(report.to_dict(), indent=1))
        (tmp / "rejects.jsonl").write_text("".join(json.dumps(r) + "\n" for r in report.skipped))
    return report


def _empty_split(err: BaseException, sources) -> Optional[str]:
    """The split TFDS refused for having no examples (local writer: an AssertionError naming it in quotes;
    Beam writer: "... is 0 for split NAME"), or None for any other error."""
    text = str(err)
    if "No examples were yielded" in text:
        return next((s for s in sources if f'"{s}"' in text), "?")
    m = re.search(r"generated examples is 0 for split (\w+)", text)
    return m.group(1) if m else None


def _none_used(sources, split: str, report: BuildReport, cause: Optional[BaseException] = None):
    folder = sources[split][0] if split in sources else "?"
    reasons = "; ".join(f"{Path(s['file']).name}: {s['reason']}" for s in report.skipped)
    raise DatasetError(f"{folder}: none of the {split} videos could be used ({reasons})") from cause


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
