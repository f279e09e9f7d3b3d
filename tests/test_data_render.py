"""No-head skeleton renderer: pixel checks on a hand-made skeleton."""
from __future__ import annotations

import colorsys

import numpy as np

from xdyna_jax.data.render import BODY_COLORS, BODY_LIMBS, HAND_EDGES, render_frame

H, W = 200, 160


def _body():
    b = np.zeros((18, 3))
    pts = {0: (80, 30), 1: (80, 60), 2: (50, 60), 3: (40, 100), 4: (40, 140), 5: (110, 60), 6: (120, 100),
           7: (120, 140), 8: (60, 130), 9: (60, 165), 10: (60, 195), 11: (100, 130), 12: (100, 165),
           13: (100, 195), 14: (72, 22), 15: (88, 22), 16: (64, 26), 17: (96, 26)}
    for j, (x, y) in pts.items():
        b[j] = (x, y, 1.0)
    return b


def test_palette_and_limb_order():
    assert len(BODY_LIMBS) == 17 and len(BODY_COLORS) == 18
    assert BODY_LIMBS[12] == (1, 0) and BODY_COLORS[12] == (0, 0, 255)  # nose-neck limb: blue


def test_body_pixels():
    img = render_frame(_body(), None, H, W)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    dim = lambda c: tuple(int(v * 0.6) for v in c)  # noqa: E731
    # joints: full colour discs drawn after the limbs were dimmed
    for j in (0, 1, 2, 4, 7, 10, 13):
        x, y = _body()[j, :2].astype(int)
        assert tuple(img[y, x]) == BODY_COLORS[j], j
    # limb midpoints: dimmed limb colour
    assert tuple(img[80, 45]) == dim(BODY_COLORS[2])   # r_shoulder-r_elbow, limb 2: (50,60)-(40,100)
    assert tuple(img[45, 80]) == dim(BODY_COLORS[12])  # neck-nose kept: dimmed blue
    assert tuple(img[165 + 15, 100]) == dim(BODY_COLORS[11])  # l_knee-l_ankle, limb 11
    # stick half-width 4: 3 px off the limb axis is drawn, 6 px is not
    assert img[80, 45 + 3].any() and not img[120, 40 + 6].any()
    # no head: eye and ear joints and their limbs are not drawn
    for j in (14, 15, 16, 17):
        x, y = _body()[j, :2].astype(int)
        assert not img[y, x].any(), j
    assert not img[26, 76].any()  # midpoint of nose-r_eye
    assert not img[5, 5].any() and not img[H - 3, W - 3].any()  # black background
    # head=True draws them
    full = render_frame(_body(), None, H, W, head=True)
    assert tuple(full[22, 72]) == BODY_COLORS[14]


def test_low_confidence_points_are_skipped():
    b = _body()
    b[4, 2] = 0.1  # r_wrist below threshold: neither the joint nor the elbow-wrist limb
    img = render_frame(b, None, H, W)
    assert not img[140, 40].any() and not img[125, 40].any()
    b[4, :2] = np.nan
    b[4, 2] = 1.0
    assert not render_frame(b, None, H, W)[125, 40].any()


def test_hand_pixels():
    hands = np.zeros((2, 21, 3))
    hands[..., :2] = np.nan
    # one hand: wrist at (80, 100), fingers fanned upward, 4 joints each
    hands[0, 0] = (80, 100, 0.9)
    for f in range(5):
        for k in range(4):
            hands[0, 1 + 4 * f + k] = (40 + 20 * f, 90 - 18 * k, 0.9)
    img = render_frame(np.zeros((18, 3)), hands, H, W)
    # points: blue discs of radius 4
    for j in (0, 4, 8, 20):
        x, y = hands[0, j, :2].astype(int)
        assert tuple(img[y, x]) == (0, 0, 255), j
    # an edge's middle has its rainbow colour (hue = edge / 20)
    for e in (1, 6, 10, 18):
        a, b = HAND_EDGES[e]
        (xa, ya), (xb, yb) = hands[0, a, :2], hands[0, b, :2]
        x, y = int((xa + xb) / 2), int((ya + yb) / 2)
        want = np.array(colorsys.hsv_to_rgb(e / 20, 1, 1)) * 255
        assert np.abs(img[y, x].astype(float) - want).max() <= 1, e
    assert not img[190, 10].any()
