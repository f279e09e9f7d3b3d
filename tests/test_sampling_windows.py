"""Context windows: lists written out by hand from the official rule (spec §1.7), not generated.

Rule: N <= 16 -> one window [0..N-1], offset ignored; else for j = 0, 12, 24, ... < N the window
[(j + e + offset) mod N for e in 0..15].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xdyna_jax.sampling import context_windows, window_count, window_length


def r(a, b):
    """Inclusive range a..b."""
    return list(range(a, b + 1))


EXPECTED = {
    # (N, offset): windows
    (10, 0): [r(0, 9)],
    (10, 7): [r(0, 9)],  # one window, no offset
    (16, 0): [r(0, 15)],
    (16, 11): [r(0, 15)],
    (40, 0): [r(0, 15), r(12, 27), r(24, 39), r(36, 39) + r(0, 11)],
    (40, 9): [r(9, 24), r(21, 36), r(33, 39) + r(0, 8), r(5, 20)],
    (192, 0): [r(0, 15), r(12, 27), r(24, 39), r(36, 51), r(48, 63), r(60, 75), r(72, 87), r(84, 99),
               r(96, 111), r(108, 123), r(120, 135), r(132, 147), r(144, 159), r(156, 171), r(168, 183),
               r(180, 191) + r(0, 3)],
    (192, 5): [r(5, 20), r(17, 32), r(29, 44), r(41, 56), r(53, 68), r(65, 80), r(77, 92), r(89, 104),
               r(101, 116), r(113, 128), r(125, 140), r(137, 152), r(149, 164), r(161, 176), r(173, 188),
               r(185, 191) + r(0, 8)],
    (20, 15): [r(15, 19) + r(0, 10), r(7, 19) + r(0, 2)],
}


@pytest.mark.parametrize("frames,offset", sorted(EXPECTED))
def test_windows_match_the_official_lists(frames, offset):
    want = EXPECTED[(frames, offset)]
    got = context_windows(frames, offset)
    assert got.tolist() == want
    assert window_count(frames) == len(want) and window_length(frames) == len(want[0])


@pytest.mark.parametrize("frames,offset", [(40, 9), (192, 5), (10, 3)])
def test_windows_in_graph_with_a_traced_offset(frames, offset):
    fn = jax.jit(lambda o: context_windows(frames, o, xp=jnp))
    assert np.asarray(fn(jnp.int32(offset))).tolist() == EXPECTED.get((frames, offset), [r(0, frames - 1)])


def test_every_frame_covered_and_no_frame_twice_in_a_window():
    for frames in (17, 20, 29, 40, 192):
        for offset in range(16):
            w = context_windows(frames, offset)
            assert all(len(set(row)) == 16 for row in w.tolist())
            assert set(w.ravel().tolist()) == set(range(frames))


def test_bad_window_settings_raise():
    with pytest.raises(ValueError):
        context_windows(20, 0, size=16, overlap=16)
    with pytest.raises(ValueError):
        window_count(0)
