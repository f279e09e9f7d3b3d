"""The file formats of the data tools, read with every library error mapped to a one-line ``UserError``.

* poses ``.npz`` (``extract`` writes it): ``body (T,18,3)``, ``hands (T,2,21,3)``, ``face (T,468,3)``,
  ``height``, ``width`` (``pose.Poses``); written under a temporary name and renamed when complete;
* images (PNG, JPEG, BMP, WebP) via OpenCV, and videos via ``video.read_video``.

A file of the wrong kind is named with what it looks like (``cli.sniff``); object arrays are refused,
never loaded with pickling.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from xdyna_jax.cli import NPZ, UserError, atomic_file, check_input_file, sniff

from .pose import N_BODY, N_FACE, N_HAND, Poses
from .video import read_video

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
POSES_FIELDS = ("body", "hands", "face", "height", "width")
POSES_WHAT = "a poses .npz written by `extract`"


def save_poses(path, poses: Poses) -> Path:
    path = Path(path)
    with atomic_file(path) as tmp, open(tmp, "wb") as f:  # a file object: savez adds no ".npz" to the name
        np.savez_compressed(f, body=poses.body, hands=poses.hands, face=poses.face,
                            height=poses.height, width=poses.width)
    return path


def load_poses(path, option: str = "") -> Poses:
    """A ``Poses`` from a poses ``.npz``; a ``UserError`` names the file and what is wrong with it."""
    path = check_input_file(path, POSES_WHAT, option)
    label = f"{option} {path}" if option else str(path)
    kind = sniff(path)
    if kind != NPZ:
        raise UserError(f"{label}: not a poses .npz, it looks like {kind}")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in POSES_FIELDS if k not in z.files]
            if missing:
                raise UserError(f"{label}: poses .npz without {', '.join(missing)} (found {', '.join(z.files)}; "
                                f"expected {', '.join(POSES_FIELDS)})")
            arrays = {k: z[k] for k in POSES_FIELDS}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, UserError):
            raise
        # a cut-short member, or object arrays (refused: loading them would unpickle)
        raise UserError(f"{label}: unreadable poses .npz, damaged or holding non-numeric arrays "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    return _poses_from_arrays(arrays, label)


def _poses_from_arrays(a: dict, label: str) -> Poses:
    for k in ("height", "width"):
        v = a[k]
        if v.shape != () or v.dtype.kind not in "iu" or int(v) < 1:
            found = v.item() if v.size == 1 else f"shape {v.shape}"
            raise UserError(f"{label}: {k} must be a positive integer, found {found} ({v.dtype})")
    body = a["body"]
    t = body.shape[0] if body.ndim == 3 else -1
    for k, tail in (("body", (N_BODY, 3)), ("hands", (2, N_HAND, 3)), ("face", (N_FACE, 3))):
        arr = a[k]
        if arr.dtype.kind != "f":
            raise UserError(f"{label}: {k} must hold floats, found {arr.dtype}")
        if arr.shape[1:] != tail or arr.shape[0] != t or t < 1:
            want = "(T, " + ", ".join(map(str, tail)) + ")"
            raise UserError(f"{label}: {k} has shape {arr.shape}, expected {want} with the same T >= 1 "
                            f"as body")
        if not np.isfinite(arr[..., 2]).all():
            raise UserError(f"{label}: {k} confidences (last column) must be finite")
    return Poses(body.astype(np.float32), a["hands"].astype(np.float32), a["face"].astype(np.float32),
                 int(a["height"]), int(a["width"]))


def read_image(path, option: str = "") -> np.ndarray:
    """uint8 RGB ``(H, W, 3)`` of an image file."""
    import cv2

    path = check_input_file(path, "an image", option)
    label = f"{option} {path}" if option else str(path)
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one-line error says it instead
    try:
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if img is None:
        kind = sniff(path)
        what = "damaged or truncated image" if "image" in kind else f"not an image, it looks like {kind}"
        raise UserError(f"{label}: cannot read image: {what}")
    return img[..., ::-1].copy()


def is_image(path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def read_media(path, max_frames=None, stride: int = 1, option: str = "") -> np.ndarray:
    """(T, H, W, 3) RGB frames of a video, or a 1-frame array of an image."""
    if is_image(path):
        return read_image(path, option)[None]
    return read_video(path, stride=stride, max_frames=max_frames)
