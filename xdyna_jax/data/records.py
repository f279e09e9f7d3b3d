"""The on-disk record format of the X-Dyna video dataset, and reading it (no TensorFlow).

``OUT/xdyna_videos/1.0.0/`` holds the ``array_record`` shards of splits ``human`` / ``scene`` (see
``datasets.py`` for the fields), TFDS's ``dataset_info.json`` / ``features.json`` and ``build_report.json``.
Frames are stored one encoded image per frame; ``encode_image`` / ``decode_image`` (OpenCV) are the codec.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from xdyna_jax.cli import UserError

NAME, VERSION = "xdyna_videos", "1.0.0"
SPLITS = ("human", "scene")


class DatasetError(UserError, RuntimeError):
    """A dataset could not be built or read (the message names the folder or file)."""


# ---------------------------------------------------------------- image codec (OpenCV, no TF)

def encode_image(img: np.ndarray, codec: str = "png", quality: int = 95) -> bytes:
    """uint8 ``(H, W, C)`` (C = 1, 3 or a multiple of 3) -> JPEG/PNG bytes; C = 3k is tiled to (H, kW, 3)."""
    import cv2

    img = np.asarray(img)
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"encode_image: expected uint8 (H, W, C), got {img.dtype} {img.shape}")
    c = img.shape[-1]
    if c == 1:
        bgr = img[..., 0]
    elif c % 3 == 0:
        bgr = np.concatenate([img[..., i:i + 3][..., ::-1] for i in range(0, c, 3)], axis=1)
    else:
        raise ValueError(f"encode_image: channels must be 1 or a multiple of 3, got {c}")
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if codec == "jpeg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(".jpg" if codec == "jpeg" else ".png", np.ascontiguousarray(bgr), params)
    if not ok:
        raise ValueError(f"encode_image: OpenCV could not encode a {img.shape} image as {codec}")
    return buf.tobytes()


def decode_image(data: bytes, channels: int = 3, where: str = "image") -> np.ndarray:
    """Inverse of ``encode_image``: bytes -> uint8 ``(H, W, channels)`` RGB."""
    import cv2

    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if img is None:
        raise DatasetError(f"{where}: not a decodable JPEG/PNG ({len(data)} bytes)")
    if channels == 1:
        return img[..., None]
    k = channels // 3
    if img.shape[1] % k:
        raise DatasetError(f"{where}: width {img.shape[1]} does not split into {k} tiles of 3 channels")
    w = img.shape[1] // k
    return np.concatenate([img[:, i * w:(i + 1) * w, ::-1] for i in range(k)], axis=-1)


def dataset_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / NAME / VERSION


# ---------------------------------------------------------------- read

def resolve_dataset_dir(path: str | Path) -> Path:
    """``path`` itself (holding dataset_info.json) or ``path/xdyna_videos/1.0.0``."""
    path = Path(path)
    for cand in (path, dataset_dir(path)):
        if (cand / "dataset_info.json").is_file():
            return cand
    raise DatasetError(f"{path}: no {NAME} dataset here (expected dataset_info.json in it or in {dataset_dir(path)})")


def open_splits(path: str | Path, splits: Sequence[str] = SPLITS) -> dict:
    """``{split: random-access data source}`` of the splits that exist (asked-for but absent ones are skipped)."""
    import tensorflow_datasets as tfds

    d = resolve_dataset_dir(path)
    sources = tfds.builder_from_directory(str(d)).as_data_source()
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DatasetError(f"{d}: unknown split(s) {unknown}; known: {list(SPLITS)}")
    out = {s: sources[s] for s in splits if s in sources}
    if not out:
        raise DatasetError(f"{d}: none of the splits {list(splits)} exist (found {sorted(sources)})")
    return out


def load_report(path: str | Path) -> dict:
    p = resolve_dataset_dir(path) / "build_report.json"
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"{p}: cannot read the build report ({e})") from e
