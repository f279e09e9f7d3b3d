"""Deterministic, non-zero weights for the official-parity reference cases.

The reference outputs in ``tests/data/official/*.npz`` were produced by the
official PyTorch X-Dyna networks (see ``tools/official_parity/``) with weights
made by :func:`official_weights`.  The npz files store no weights: a test
regenerates them here from the case's ``seed`` and the ``keys_json`` shape list,
converts them to its own parameter layout and compares outputs.

Rules (applied per state-dict key, independently of every other key, so the
order of ``shapes`` does not matter):

* the generator is ``np.random.default_rng([seed, zlib.crc32(key.encode())])``
  and every value comes from ``rng.standard_normal(shape)`` (float64, then cast
  to float32);
* keys ending in ``.pe`` (the motion module's sinusoidal position-encoding
  buffers) are skipped: the model keeps its own deterministic values;
* a 1-D ``*.weight`` (LayerNorm / GroupNorm scale) is ``1 + 0.1 * N(0, 1)``;
* a 1-D ``*.bias`` is ``0.1 * N(0, 1)``;
* the Resampler's learned queries ``latents`` (1, Q, D) are ``N(0, 1)``;
* every other tensor (Linear / conv weights) is ``N(0, 1) / sqrt(fan_in)``
  with ``fan_in = prod(shape[1:])`` (PyTorch layout: Linear (out, in),
  conv (out, in, kh, kw)).

No parameter is zero, so zero-initialised layers of the official code (motion
module ``proj_out``, ControlNet zero convolutions) are exercised too.
"""
from __future__ import annotations

import math
import zlib
from typing import Dict, Iterable, Mapping, Sequence, Tuple, Union

import numpy as np

Shapes = Union[Mapping[str, Sequence[int]], Iterable[Tuple[str, Sequence[int]]]]


def key_rng(seed: int, key: str) -> np.random.Generator:
    """The generator used for one state-dict key."""
    return np.random.default_rng([int(seed), zlib.crc32(key.encode())])


def official_weight(key: str, shape: Sequence[int], seed: int) -> np.ndarray:
    """The float32 value of one state-dict entry (see module docstring)."""
    shape = tuple(int(s) for s in shape)
    z = key_rng(seed, key).standard_normal(shape)
    if len(shape) == 1 and key.endswith(".weight"):
        v = 1.0 + 0.1 * z
    elif len(shape) == 1 and key.endswith(".bias"):
        v = 0.1 * z
    elif len(shape) == 1:
        raise ValueError(f"no rule for 1-D parameter {key!r}")
    elif key == "latents" or key.endswith(".latents"):
        v = z
    else:
        fan_in = math.prod(shape[1:])
        v = z / math.sqrt(fan_in)
    return v.astype(np.float32)


def official_weights(shapes: Shapes, seed: int) -> Dict[str, np.ndarray]:
    """Weights for every key of ``shapes`` except ``*.pe`` buffers.

    ``shapes`` is a dict ``{key: shape}`` or an iterable of ``(key, shape)``
    pairs, e.g. ``json.loads(npz["keys_json"])`` of a reference case.
    """
    items = shapes.items() if isinstance(shapes, Mapping) else shapes
    out: Dict[str, np.ndarray] = {}
    for key, shape in items:
        if key.endswith(".pe"):
            continue
        out[key] = official_weight(key, shape, seed)
    return out
