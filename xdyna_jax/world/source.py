"""The tiny world as a training source for ``training.loop.train``: clips drawn per step, or a pre-encoded pool.

``data.source=synthetic``: every clip is a pure function of ``(seed, split, index)`` (``index`` = global
sample number), so a batch is a pure function of ``(seed, step)`` and does not depend on how many hosts
draw it: host ``p`` of ``P`` draws its own rows of the global batch. Batches have the loader's layout
(``data/loader.py``): ``frames (B, 1+F, H, W, 3)`` uint8 (frame 0 the reference), ``pose (B, F, H, W, 3)``,
``face (B, F, H, W, 6)`` and ``is_scene (B,)``. Scene clips (a fraction ``scene_ratio``) have no figure, an
empty skeleton and an all-black face condition, like the dataset's natural-scene videos. ``split`` ("train" /
"test") picks the world's stream; the test split's clips and figures are never drawn for training
(``generator`` module doc).

``data.source=pool``: ``data.pool_clips`` clips of ``data.pool_frames`` frames (+ a reference) are drawn once
and run once through the frozen encoders of the run's own params: the VAE's posterior moments of every frame
and the CLIP hidden states of the reference. A step's row ``i`` then takes pool clip and window start from
``[seed, step, i]``: ``train.frames`` consecutive frames with their skeletons. The step skips the frozen VAE
and CLIP (a fifth of its work) and the host draws nothing; what it gives up is unlimited clips. Still a pure
function of ``(seed, step)``, so resuming rebuilds the same pool and the same batches.
"""
from __future__ import annotations

import numpy as np

from .generator import world_clip

LAYOUT = ("frames", "pose", "face", "is_scene")


def synthetic_clip(seed: int, index: int, frames: int, height: int, width: int, scene_ratio: float,
                   split: str = "train") -> dict:
    """One clip: reference + ``frames`` frames, pose and face conditions, and what the world drew."""
    return world_clip(seed, index, frames, height, width, scene_ratio, split)


def synthetic_batch(seed: int, step: int, batch_size: int, frames: int, height: int, width: int,
                    scene_ratio: float, rows: slice | None = None, split: str = "train") -> dict:
    """Rows ``rows`` (default: all) of the global batch of ``step``."""
    idx = range(batch_size)[rows or slice(None)]
    clips = [synthetic_clip(seed, step * batch_size + i, frames, height, width, scene_ratio, split) for i in idx]
    return {k: np.stack([c[k] for c in clips]) for k in LAYOUT}


def host_rows(batch_size: int) -> slice:
    import jax

    p, n = jax.process_index(), jax.process_count()
    return slice(p * batch_size // n, (p + 1) * batch_size // n)


class SyntheticSource:
    """This host's rows of the synthetic global batch of each step; its position is the step itself."""

    def __init__(self, run):
        self.run, self.rows = run, host_rows(run.train.batch_size)

    def batch(self, step: int) -> dict:
        t = self.run.train
        return synthetic_batch(t.seed, step, t.batch_size, t.frames, t.height, t.width,
                               self.run.data.scene_ratio, self.rows, self.run.data.split)

    def state(self, next_step: int) -> dict:
        return {"source": self.run.data.source, "next_step": next_step}

    def close(self):
        pass


def encode_pool(params, models, frames: np.ndarray, batch: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(VAE moments (N, 1+P, h, w, 2c) float16, CLIP hidden states of frame 0 (N, tokens, width) float32) of
    uint8 clips ``frames`` (N, 1+P, H, W, 3), with the frozen encoders of ``params``."""
    import jax
    import jax.numpy as jnp

    from xdyna_jax.models import xdyna
    from xdyna_jax.models.clip_preprocess import clip_pixel_values, default_image_processor
    from xdyna_jax.models.vae import AutoencoderKL

    vae = AutoencoderKL(models.vae)
    moments = jax.jit(lambda p, x: jnp.concatenate(vae.apply({"params": p}, x, method="encode"), axis=-1))
    hidden = jax.jit(lambda p, x: xdyna.clip_hidden_states(p, x, cfg=models))
    processor = default_image_processor(models.image_encoder.image_size)
    n, f = frames.shape[:2]
    flat = frames.reshape((n * f,) + frames.shape[2:])
    out_m, out_h = [], []
    for i in range(0, n * f, batch):  # a fixed batch shape: one compile (the last one padded)
        x = flat[i:i + batch]
        pad = batch - len(x)
        x = np.concatenate([x, np.repeat(x[-1:], pad, 0)]) if pad else x
        m = moments(params["vae"], np.asarray(x, np.float32) / 127.5 - 1.0)
        out_m.append(np.asarray(m, np.float16)[:batch - pad])
    for i in range(0, n, batch):
        x = list(frames[i:i + batch, 0])
        pad = batch - len(x)
        pix = clip_pixel_values(x + [x[-1]] * pad, processor)
        out_h.append(np.asarray(hidden(params, pix), np.float32)[:batch - pad])
    m = np.concatenate(out_m)
    return m.reshape((n, f) + m.shape[1:]), np.concatenate(out_h)


class PoolSource:
    """A pre-encoded pool of world clips (module doc); batches hold ``vae_moments``, ``clip_hidden``, ``pose``
    (and ``face`` when the models have a face ControlNet), ``is_scene``."""

    def __init__(self, run, params, models, log=print):
        import time

        t, d = run.train, run.data
        self.run, self.rows = run, host_rows(t.batch_size)
        tic = time.perf_counter()
        clips = [world_clip(t.seed, i, d.pool_frames, t.height, t.width, d.scene_ratio, d.split)
                 for i in range(d.pool_clips)]
        self.pose = np.stack([c["pose"] for c in clips])
        self.face = np.stack([c["face"] for c in clips]) if models.face_controlnet is not None else None
        self.is_scene = np.array([c["is_scene"] for c in clips])
        drawn = time.perf_counter() - tic
        self.moments, self.hidden = encode_pool(params, models, np.stack([c["frames"] for c in clips]))
        log(f"pool: {d.pool_clips} clips of 1+{d.pool_frames} frames drawn in {drawn:.0f}s, encoded in "
            f"{time.perf_counter() - tic - drawn:.0f}s ({(self.moments.nbytes + self.pose.nbytes) / 2 ** 20:.0f} MiB)")

    def batch(self, step: int) -> dict:
        t = self.run.train
        rows = []
        for i in range(t.batch_size)[self.rows]:
            rng = np.random.default_rng([t.seed, step, i])
            c = int(rng.integers(len(self.pose)))
            s = int(rng.integers(self.pose.shape[1] - t.frames + 1))
            frames = np.r_[0, 1 + s:1 + s + t.frames]  # the reference, then the window
            row = {"vae_moments": self.moments[c, frames], "clip_hidden": self.hidden[c],
                   "pose": self.pose[c, s:s + t.frames], "is_scene": self.is_scene[c]}
            if self.face is not None:
                row["face"] = self.face[c, s:s + t.frames]
            rows.append(row)
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def state(self, next_step: int) -> dict:
        return {"source": "pool", "next_step": next_step}

    def close(self):
        pass


def make_source(run, saved, params, models, log=print):
    """The world source of ``run.data.source`` (``synthetic`` or ``pool``), for ``training.loop.train``."""
    if run.data.source == "pool":
        return PoolSource(run, params, models, log)
    return SyntheticSource(run)
