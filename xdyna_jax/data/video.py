"""Video files <-> uint8 RGB arrays (PyAV).

``read_video`` returns ``(T, H, W, 3)`` uint8 RGB; ``write_video`` writes an H.264 (yuv420p) mp4 under a
temporary name and renames it when complete (an interrupted write leaves nothing).
Errors name the file: a missing, empty, unreadable or frame-less video raises ``VideoError``, saying what
the file looks like when it is not a video.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import numpy as np

from xdyna_jax.cli import UserError, atomic_file, sniff

PathLike = Union[str, Path]


class VideoError(UserError, RuntimeError):
    """A video could not be read (missing, not a video, no video stream, or no frames)."""


def read_video(path: PathLike, stride: int = 1, max_frames: Optional[int] = None,
               start: int = 0) -> np.ndarray:
    """Decode frames ``start, start+stride, ...`` (at most ``max_frames``) as uint8 RGB ``(T, H, W, 3)``."""
    import av

    path = Path(path)
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    _check_file(path)
    frames = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"no video stream in {path}")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                if i < start or (i - start) % stride:
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except VideoError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:  # InvalidDataError, decoder failures, ...
        raise VideoError(f"cannot decode video {path}: {_what(path)} ({exc})") from exc
    if not frames:
        raise VideoError(f"no frames decoded from {path} (start={start}, stride={stride})")
    return np.stack(frames).astype(np.uint8, copy=False)


def video_info(path: PathLike) -> dict:
    """``{'frames', 'fps', 'width', 'height'}`` from the container header (frames may be 0 if unknown)."""
    import av

    path = Path(path)
    _check_file(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"no video stream in {path}")
            s = container.streams.video[0]
            return {"frames": int(s.frames), "fps": float(s.average_rate or 0),
                    "width": int(s.width), "height": int(s.height)}
    except VideoError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise VideoError(f"cannot open video {path}: {_what(path)} ({exc})") from exc


def _what(path: Path) -> str:
    kind = sniff(path)
    return "damaged or truncated video" if "video" in kind else f"not a video, it looks like {kind}"


def _check_file(path: Path) -> None:
    if not path.exists():
        raise VideoError(f"{path}: no such file (expected a video)")
    if not path.is_file():
        raise VideoError(f"{path}: not a file (expected a video)")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file, 0 bytes (expected a video)")


def write_video(path: PathLike, frames: np.ndarray, fps: float = 8.0, crf: int = 18) -> Path:
    """Write uint8 RGB ``(T, H, W, 3)`` frames to an H.264 mp4 (H and W must be even for yuv420p)."""
    import av
    from fractions import Fraction

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T>0, H, W, 3), got {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"H and W must be even for yuv420p, got {h}x{w}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a finite number > 0, got {fps}")
    path = Path(path)
    fmt = {".mkv": "matroska", ".mov": "mov"}.get(path.suffix.lower(), "mp4")  # not by the temporary name
    with atomic_file(path) as tmp, av.open(str(tmp), mode="w", format=fmt) as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
