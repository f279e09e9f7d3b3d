"""Sampling jobs on the host: what to animate, read and checked, turned into model inputs.

A job is one (reference image, driving motion) pair. The motion is a rendered skeleton video
(``pose``, the official input) and/or a raw driving video (``driving``): without a skeleton, poses
are extracted from the driving video, optionally retargeted to the reference body, and rendered as
the no-head skeleton; with a face ControlNet the S-Face condition is built from the driving video.

Frame selection follows the official pose-only path (spec §1.3 step 1, §7.2): frames 0, s, 2s, ...
until ``frames`` are collected, each resized to (W, H) with area interpolation. The S-Face condition
uses the same frames (the official S-Face mode re-reads consecutive frames instead; one frame list
for both conditions keeps them in step). The reference is centre-cropped to the W/H aspect and
resized bilinearly (``imread_resize_crop``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from xdyna_jax.cli import UserError, check_input_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclasses.dataclass(frozen=True)
class Job:
    name: str
    reference: Path
    pose: Optional[Path] = None
    driving: Optional[Path] = None
    caption: str = ""


@dataclasses.dataclass
class JobInputs:
    """Host arrays of one job: model inputs and the panels of the side-by-side grid."""

    reference: np.ndarray         # (H, W, 3) float32 in [-1, 1], the VAE input
    reference_rgb: np.ndarray     # (H, W, 3) uint8, cropped and resized (grid panel)
    clip_image: Any               # the original reference (PIL), for CLIPImageProcessor
    pose: np.ndarray              # (N, H, W, 3) uint8 skeleton frames
    face: Optional[np.ndarray]    # (N, H, W, 6) uint8 [local, global] or None
    driving: Optional[np.ndarray] # (N, H, W, 3) uint8 driving frames, when read (grid panel)
    notes: list


# --- the jobs list --------------------------------------------------------------------------------

def load_jobs(path) -> list[Job]:
    """A JSON or YAML list in the style of the official ``examples/example.json``.

    Each entry: ``image_path`` (or ``reference``), and ``target_no_head_poses`` (or ``pose``) and/or
    ``target_videos`` (or ``driving``); optional ``name`` and ``caption``. Relative paths are taken
    from the current folder, else from the jobs file's folder.
    """
    import yaml

    path = check_input_file(path, "a JSON or YAML list of jobs", "--jobs")
    try:
        data = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"--jobs {path}: cannot parse ({str(e).splitlines()[0]}); expected a JSON or YAML list "
                        f"of jobs") from e
    if not isinstance(data, list) or not data:
        raise UserError(f"--jobs {path}: expected a non-empty list of jobs, got {type(data).__name__}")
    keys = {"image_path": "reference", "reference": "reference", "target_no_head_poses": "pose", "pose": "pose",
            "target_videos": "driving", "driving": "driving", "name": "name", "caption": "caption"}
    jobs, names = [], set()
    for i, entry in enumerate(data):
        where = f"--jobs {path}: job {i}"
        if not isinstance(entry, dict):
            raise UserError(f"{where}: expected a mapping with image_path and target_no_head_poses")
        unknown = sorted(set(entry) - set(keys))
        if unknown:
            raise UserError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(keys)}")
        fields = {keys[k]: v for k, v in entry.items() if v is not None}
        if "reference" not in fields:
            raise UserError(f"{where}: no image_path (the reference image)")
        if "pose" not in fields and "driving" not in fields:
            raise UserError(f"{where}: needs target_no_head_poses (a skeleton video) or target_videos (a driving video)")
        for k in ("reference", "pose", "driving"):
            if k in fields:
                fields[k] = _resolve(fields[k], path.parent)
        job = make_job(**fields)
        if job.name in names:
            raise UserError(f"{where}: job name {job.name!r} is used twice (give each job a distinct name)")
        names.add(job.name)
        jobs.append(job)
    return jobs


def _resolve(p, base: Path) -> Path:
    p = Path(str(p))
    return p if p.is_absolute() or p.exists() or not (base / p).exists() else base / p


def make_job(reference, pose=None, driving=None, name=None, caption="") -> Job:
    reference = Path(reference)
    motion = Path(pose) if pose is not None else Path(driving)
    name = name or f"{reference.stem}_{motion.stem}"
    if "/" in str(name) or name in (".", ".."):
        raise UserError(f"job name {name!r}: expected a plain file name")
    return Job(str(name), reference, Path(pose) if pose is not None else None,
               Path(driving) if driving is not None else None, str(caption))


def check_files(jobs: list[Job]) -> None:
    """Every input file of every job exists and is not empty (cheap, before any work)."""
    for job in jobs:
        check_input_file(job.reference, "a reference image (PNG or JPEG)")
        if job.pose is not None:
            check_input_file(job.pose, "a skeleton video (mp4)")
        if job.driving is not None:
            check_input_file(job.driving, "a driving video (mp4)")


# --- reading one job ------------------------------------------------------------------------------

def _cv2():
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def resize(img: np.ndarray, width: int, height: int, area: bool) -> np.ndarray:
    """cv2's INTER_AREA / INTER_LINEAR as the official code (PIL box / bilinear without opencv)."""
    cv2 = _cv2()
    if cv2 is not None:
        return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if area else cv2.INTER_LINEAR)
    from PIL import Image

    mode = Image.Resampling.BOX if area else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(img).resize((width, height), mode))


def read_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    from xdyna_jax.cli import sniff

    check_input_file(path, "a reference image (PNG or JPEG)")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{path}: cannot read the reference image: it looks like {sniff(path)}") from e


def crop_resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to the W/H aspect (integer sizes, ``//2`` offsets), then resize bilinearly."""
    h, w = img.shape[:2]
    if w / h > width / height:
        cw = int(h * width / height)
        img = img[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = int(w * height / width)
        img = img[(h - ch) // 2:(h - ch) // 2 + ch]
    return resize(np.ascontiguousarray(img), width, height, area=False)


def _frames(path: Path, stride: int, frames: int, width: int, height: int, what: str) -> np.ndarray:
    from xdyna_jax.data.video import read_video

    check_input_file(path, what)
    raw = read_video(path, stride=stride, max_frames=frames)
    return np.stack([resize(f, width, height, area=True) for f in raw])


def read_job(job: Job, *, frames: int, stride: int, height: int, width: int, face: bool,
             align: bool = False) -> JobInputs:
    """Read and prepare one job's inputs at (height, width); ``face``: build the S-Face condition."""
    notes = []
    image = read_image(job.reference)
    rgb = crop_resize(np.asarray(image), width, height)
    driving = None
    if job.pose is not None:
        pose = _frames(job.pose, stride, frames, width, height, "a skeleton video (mp4)")
    if job.driving is not None and (job.pose is None or face):
        pose_d, face_c, driving, more = _from_driving(job, image, frames=frames, stride=stride, height=height,
                                                      width=width, face=face, align=align)
        notes += more
        if job.pose is None:
            pose = pose_d
    else:
        face_c = None
        if face:
            notes.append("no driving video: S-Face condition off (pose only)")
    if face_c is not None and len(face_c) != len(pose):
        raise UserError(f"{job.name}: the skeleton video gives {len(pose)} frames but the driving video "
                        f"{len(face_c)}; pose and face inputs must have the same length")
    return JobInputs(reference=rgb.astype(np.float32) / 127.5 - 1.0, reference_rgb=rgb, clip_image=image,
                     pose=pose, face=face_c, driving=driving, notes=notes)


def _from_driving(job: Job, image, *, frames, stride, height, width, face, align):
    """Skeleton (and S-Face) frames extracted from the raw driving video with ``xdyna_jax.data``."""
    from xdyna_jax.data.video import read_video

    try:
        from xdyna_jax.data.pose import extract_poses
        from xdyna_jax.data.render import render_poses
        from xdyna_jax.data.sface import sface_video
    except ImportError as e:
        raise UserError(f"--driving {job.driving}: pose extraction needs the data extra "
                        f"(pip install -e '.[data]'): {e}") from e
    check_input_file(job.driving, "a driving video (mp4)")
    raw = read_video(job.driving, stride=stride, max_frames=frames)
    # extraction at the video's own resolution; far-apart frames are detected one by one
    poses = extract_poses(raw, static=stride > 4)
    notes = [f"extracted poses from {len(raw)} driving frames"]
    if align:
        from xdyna_jax.data.align import align_poses

        ref_poses = extract_poses(np.asarray(image), static=True)
        poses = align_poses(poses, ref_poses)
        notes.append("skeleton retargeted to the reference body (--align)")
    skeleton = render_poses(poses)
    pose = np.stack([resize(f, width, height, area=True) for f in skeleton])
    face_c = None
    if face:
        cond, report = sface_video(raw, poses)
        face_c = np.stack([np.concatenate([resize(c[..., :3], width, height, True),
                                           resize(c[..., 3:], width, height, True)], -1) for c in cond])
        notes.append(f"S-Face condition: {report['frames'] - report['no_face']}/{report['frames']} frames "
                     f"with a face")
    driving = np.stack([resize(f, width, height, area=True) for f in raw])
    return pose, face_c, driving, notes
