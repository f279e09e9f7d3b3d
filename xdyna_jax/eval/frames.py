"""Per-frame pixel metrics of generated frames against ground-truth frames: L1, PSNR, SSIM.

All on uint8 RGB frames of the same size, scaled to [0, 1]:

* ``l1``: mean absolute difference over pixels and channels (0 = identical, 1 = black vs white);
* ``psnr``: ``10 log10(1 / MSE)`` in dB per frame, capped at ``PSNR_CAP`` (identical frames have an infinite
  PSNR, which would swamp any mean);
* ``ssim``: Wang et al. (2004) with an 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, averaged over
  the valid window positions and the three channels (dm-pix; the same numbers as scikit-image's
  ``structural_similarity(..., gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  channel_axis=-1)``).

``batched`` runs a jitted function over fixed-size batches (the last one padded), so each frame size is
compiled once whatever the video length.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from xdyna_jax.extras import require

PSNR_CAP = 100.0
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5

_JITTED: dict = {}


def batched(fn: Callable, arrays: tuple, batch: int) -> list[np.ndarray]:
    """``fn(*chunks)`` over chunks of ``batch`` items of equally long ``arrays``; outputs concatenated."""
    n = len(arrays[0])
    outs = []
    for i in range(0, n, batch):
        chunk = [a[i:i + batch] for a in arrays]
        k = len(chunk[0])
        if k < batch:  # pad with copies of the last item: one compiled shape
            chunk = [np.concatenate([c, np.repeat(c[-1:], batch - k, axis=0)]) for c in chunk]
        res = fn(*chunk)
        res = res if isinstance(res, tuple) else (res,)
        outs.append([np.asarray(r)[:k] for r in res])
    return [np.concatenate(parts) for parts in zip(*outs)]


def _frame_fn():
    if "frames" not in _JITTED:
        import jax
        import jax.numpy as jnp

        pix = require("dm_pix", "SSIM")
        r = SSIM_WINDOW // 2
        taps = np.exp(-0.5 * (np.arange(-r, r + 1) / SSIM_SIGMA) ** 2)
        taps = [float(t) for t in taps / taps.sum()]

        def blur(z):  # (B, H, W, C) -> valid 11x11 Gaussian, separable: dm-pix's vmapped convolve is slow on CPU
            h, w = z.shape[-3] - 2 * r, z.shape[-2] - 2 * r
            z = sum(t * z[..., k:k + h, :, :] for k, t in enumerate(taps))
            return sum(t * z[..., :, k:k + w, :] for k, t in enumerate(taps))

        def scores(a, b):
            # integer differences summed per row exactly (0 for identical pixels; int32 holds a row of squares up to
            # ~11,000 pixels wide); only a frame's H row totals are summed in float32: a float32 mean over all
            # pixels drifted by 4e-6 on XLA:CPU's loop reductions
            d = a.astype(jnp.int32) - b.astype(jnp.int32)
            count = d[0].size
            l1 = jnp.abs(d).sum((2, 3)).astype(jnp.float32).sum(1) / (255.0 * count)
            mse = jnp.square(d).sum((2, 3)).astype(jnp.float32).sum(1) / (255.0 ** 2 * count)
            a = a.astype(jnp.float32) / 255.0
            b = b.astype(jnp.float32) / 255.0
            psnr = jnp.minimum(-10.0 * jnp.log10(jnp.maximum(mse, 1e-30)), PSNR_CAP)
            return l1, psnr, pix.ssim(a, b, max_val=1.0, filter_fn=blur)

        _JITTED["frames"] = jax.jit(scores)
    return _JITTED["frames"]


def frame_scores(generated: np.ndarray, truth: np.ndarray, batch: int = 8) -> dict[str, np.ndarray]:
    """``{'l1', 'psnr', 'ssim'}``: one value per frame of two uint8 ``(T, H, W, 3)`` videos of the same shape."""
    if generated.shape != truth.shape or generated.ndim != 4:
        raise ValueError(f"expected two (T, H, W, 3) videos of the same shape, got {generated.shape} and "
                         f"{truth.shape}")
    l1, psnr, ssim = batched(_frame_fn(), (generated, truth), batch)
    return {"l1": l1, "psnr": psnr, "ssim": ssim}
