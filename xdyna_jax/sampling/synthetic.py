"""A generated stand-in job for the embedded default when no example data is at hand: a stick figure
picture as the reference and a skeleton video of the figure waving, in the no-head OpenPose style."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .jobs import Job

# OpenPose-18 joints of a standing figure in [0, 1] units (x, y): nose, neck, right arm, left arm,
# right leg, left leg, eyes and ears (eyes and ears are not drawn in the no-head style)
_STAND = np.array([(.50, .14), (.50, .24), (.40, .25), (.36, .38), (.34, .50), (.60, .25), (.64, .38),
                   (.66, .50), (.44, .52), (.44, .70), (.44, .88), (.56, .52), (.56, .70), (.56, .88),
                   (.48, .12), (.52, .12), (.46, .13), (.54, .13)])


def figure_pose(t: float) -> np.ndarray:
    """(18, 2) joints at phase ``t``: the arms wave, the body sways."""
    p = _STAND.copy()
    p[:, 0] += 0.03 * np.sin(2 * np.pi * t)
    for elbow, wrist, side in ((3, 4, -1), (6, 7, 1)):
        a = 0.9 * np.sin(2 * np.pi * t + (0 if side > 0 else np.pi))
        shoulder = p[elbow - 1]
        p[elbow] = shoulder + 0.13 * np.array([side * np.cos(a), np.sin(a)])
        p[wrist] = p[elbow] + 0.12 * np.array([side * np.cos(1.3 * a), np.sin(1.3 * a)])
    return p


def _body(points: np.ndarray, height: int, width: int) -> np.ndarray:
    xy = points * np.array([width, height])
    return np.concatenate([xy, np.ones((18, 1))], axis=1)


def write_synthetic_job(folder: Path, height: int = 256, width: int = 128, frames: int = 16) -> Job:
    """Write ``reference.png`` and ``skeleton.mp4`` into ``folder``; returns their job."""
    from PIL import Image

    from xdyna_jax.data.render import render_frame
    from xdyna_jax.data.video import write_video

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    yy = np.linspace(0, 1, height)[:, None, None]
    background = (np.array([90, 140, 200]) * (1 - yy) + np.array([230, 210, 170]) * yy).astype(np.uint8)
    background = np.broadcast_to(background, (height, width, 3)).copy()
    skeleton = render_frame(_body(figure_pose(0.0), height, width), None, height, width)
    reference = np.where(skeleton.any(-1, keepdims=True), skeleton, background)
    Image.fromarray(reference).save(folder / "reference.png")
    video = np.stack([render_frame(_body(figure_pose(k / frames), height, width), None, height, width)
                      for k in range(frames)])
    write_video(folder / "skeleton.mp4", video, fps=8)
    return Job("synthetic", folder / "reference.png", pose=folder / "skeleton.mp4")
