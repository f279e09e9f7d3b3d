"""The embedded default of ``python sample.py``: the tiny world's trained weights on two jobs.

1. ``world_test_000``: a held-out clip of the tiny world (``data.split=test``: a figure and streams that
   training never saw), its first frame as the reference, its own skeleton and S-Face condition.
2. ``example_1_out_of_domain``: the real example reference and the authors' skeleton from
   ``../shared/data/xdyna_examples/`` when present, cropped and resized to the model's 128x128: a photo of
   a person is far outside the cartoon world this model learned, so this shows how it generalises, not
   what X-Dyna does at full size. Its face condition is all black, what training used for "no face".
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from .jobs import Job, read_job


def default_jobs(examples: Optional[Path], frames: int, stride: int, height: int, width: int, log=print):
    """(jobs, inputs) of the embedded default (module doc)."""
    from xdyna_jax.eval.world import world_case

    job, inputs, _, kind = world_case(0, frames * stride, height, width)
    jobs, all_inputs = [job], [inputs]
    log(f"{job.name}: a held-out tiny-world clip ({kind} background), its own skeleton and face condition")
    if examples is not None and (examples / "reference_1.png").is_file() and (examples / "pose_1.mp4").is_file():
        ex = Job("example_1_out_of_domain", examples / "reference_1.png", pose=examples / "pose_1.mp4")
        x = read_job(ex, frames=frames, stride=stride, height=height, width=width, face=False)
        x.face = np.zeros(x.pose.shape[:3] + (6,), np.uint8)
        jobs.append(ex)
        all_inputs.append(x)
        log(f"{ex.name}: {ex.reference.name} + {ex.pose.name} at {height}x{width}, a real photo: out of the "
            f"tiny world's domain")
    return jobs, all_inputs
