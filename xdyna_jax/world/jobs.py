"""The tiny world's sampling jobs: held-out clips as prepared inputs, and the embedded default of ``sample.py``.

The embedded default (``python sample.py`` with the trained weights):
1. ``world_test_000``: a held-out clip of the tiny world (the test split: a figure and streams that training
   never saw), its first frame as the reference, its own skeleton (and S-Face condition when the model has a
   face ControlNet).
2. ``example_1_out_of_domain``: the real example reference and the authors' skeleton from
   ``../shared/data/xdyna_examples/`` when present, cropped and resized to the model's 128x128: a photo of
   a person is far outside the cartoon world this model learned, so this shows how it generalises, not
   what X-Dyna does at full size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from xdyna_jax.sampling.jobs import Job, JobInputs, read_job

from .generator import world_clip

WORLD_SEED = 0  # the test-split stream of the default job


def world_case(index: int, frames: int, height: int, width: int, seed: int = WORLD_SEED) -> dict:
    """Held-out clip ``index`` of the test split as a self-reenactment job: ``job``, ``inputs`` (JobInputs),
    ``truth`` (F, H, W, 3) uint8, ``masks`` (F, H, W) and ``ref_mask`` (H, W) of the figure, ``plates``
    (F, H, W, 3) (the background alone) and ``background`` (its kind).

    The reference is the clip's first frame; the job animates the ``frames`` frames that follow it, with their
    skeletons and S-Face maps, and those frames are the ground truth. The reference's own frame is not a
    target: a copy of the input scores an infinite PSNR, a number set by the cap rather than by the video.
    """
    from PIL import Image

    # test clips: frames [reference, its own frame (a copy), the frames after it]; pose/face from its own frame
    clip = world_clip(seed, index, frames + 1, height, width, scene_ratio=0.0, split="test", truth=True)
    ref, truth = clip["frames"][0], clip["frames"][2:]
    inputs = JobInputs(reference=ref.astype(np.float32) / 127.5 - 1.0, reference_rgb=ref,
                       clip_image=Image.fromarray(ref), pose=clip["pose"][1:], face=clip["face"][1:], driving=truth,
                       notes=[])
    job = Job(f"world_test_{index:03d}", Path(f"tiny-world-test-{index}.png"))
    return {"job": job, "inputs": inputs, "truth": truth, "masks": clip["masks"][2:], "ref_mask": clip["masks"][0],
            "plates": clip["plates"][2:], "background": clip["background"]}


def default_jobs(examples: Optional[Path], frames: int, stride: int, height: int, width: int, face: bool = True,
                 log=print):
    """(jobs, inputs) of the embedded default (module doc); ``face=False`` drops the S-Face conditions (a
    pose-only model)."""
    case = world_case(0, frames * stride, height, width)
    job, inputs = case["job"], case["inputs"]
    if not face:
        inputs.face = None
    jobs, all_inputs = [job], [inputs]
    log(f"{job.name}: a held-out tiny-world clip ({case['background']} background), its own skeleton")
    if examples is not None and (examples / "reference_1.png").is_file() and (examples / "pose_1.mp4").is_file():
        ex = Job("example_1_out_of_domain", examples / "reference_1.png", pose=examples / "pose_1.mp4")
        x = read_job(ex, frames=frames, stride=stride, height=height, width=width, face=False)
        x.face = np.zeros(x.pose.shape[:3] + (6,), np.uint8) if face else None
        jobs.append(ex)
        all_inputs.append(x)
        log(f"{ex.name}: {ex.reference.name} + {ex.pose.name} at {height}x{width}, a real photo: out of the "
            f"tiny world's domain")
    return jobs, all_inputs
