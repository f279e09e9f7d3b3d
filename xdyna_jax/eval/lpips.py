"""LPIPS scores of uint8 videos (the network and its arithmetic: ``models/lpips.py``)."""
from __future__ import annotations

import numpy as np

from xdyna_jax.models.lpips import load_lpips

from .frames import batched


def lpips_scores(generated: np.ndarray, truth: np.ndarray, net: str = "alex", batch: int = 8):
    """``(lpips (T,), features_generated (T, C), features_truth (T, C))`` of two uint8 ``(T, H, W, 3)`` videos."""
    if generated.shape != truth.shape or generated.ndim != 4:
        raise ValueError(f"expected two (T, H, W, 3) videos of the same shape, got {generated.shape} and "
                         f"{truth.shape}")
    m = load_lpips(net)
    dist, fa, fb = batched(lambda a, b: m["fn"](m["params"], m["lins"], a, b), (generated, truth), batch)
    return dist, fa, fb
