"""S-Face maps (spec §7.4): boxes and centres against hand-computed numbers, black output without a face."""
from __future__ import annotations

import numpy as np
import pytest

from xdyna_jax.data.pose import Poses
from xdyna_jax.data.sface import (MESH_FROM_IBUG68, centres, face_box, ibug68_from_mesh, increased_box,
                                  sface_condition, sface_video)


def test_mesh_index_table():
    assert MESH_FROM_IBUG68.shape == (68,) and len(set(MESH_FROM_IBUG68.tolist())) == 68
    assert MESH_FROM_IBUG68.max() < 468
    assert MESH_FROM_IBUG68[8] == 152  # chin
    assert MESH_FROM_IBUG68[36] == 33 and MESH_FROM_IBUG68[45] == 263  # outer eye corners
    assert MESH_FROM_IBUG68[48] == 61 and MESH_FROM_IBUG68[54] == 291  # mouth corners


def test_increased_box_by_hand():
    # box (100, 200, 140, 260): w 40, h 60 -> s 60, centre (120, 230)
    # L = int(120 - 1.35*60) = 39, T = int(230 - 1.25*60) = 155, R = int(120 + 81) = 201, B = int(230 + 87) = 317
    assert increased_box((100, 200, 140, 260)) == (39, 155, 201, 317)
    # int() truncates toward zero: s = 10, cx = 10: 10 - 13.5 = -3.5 -> -3 (floor would give -4); 23.5 -> 23
    assert increased_box((5, 0, 15, 10))[0::2] == (-3, 23)


def _lmk68(x0=100.0, y0=200.0):
    """Synthetic 68 points inside the box (x0, y0)-(x0+40, y0+60) with chosen eye/mouth points."""
    lm = np.zeros((68, 2))
    lm[:] = (x0 + 20, y0 + 30)
    lm[0] = (x0, y0 + 10)
    lm[16] = (x0 + 40, y0 + 10)
    lm[8] = (x0 + 20, y0 + 60)
    lm[19] = (x0 + 10, y0)
    lm[36:42] = (x0 + 10, y0 + 20)
    lm[37] = (x0 + 8, y0 + 19)      # in the "right-eye" slice 37:42 (point 36 is not)
    lm[42:48] = (x0 + 30, y0 + 20)
    lm[45] = (x0 + 33, y0 + 21)     # in the "left-eye" slice 43:48 (point 42 is not)
    lm[48:68] = (x0 + 20, y0 + 45)
    lm[48] = (x0 + 2, y0 + 45)      # excluded from the mouth slice 49:68
    return lm


def test_centres_and_box_by_hand():
    lm = _lmk68()
    c = centres(lm)
    assert c.dtype == np.int32
    # left eye: 4 x (130, 220) + (133, 221) -> (130.6, 220.2) -> (131, 220)
    # right eye: 4 x (110, 220) + (108, 219) -> (109.6, 219.8) -> (110, 220); mouth: 19 x (120, 245)
    assert c.tolist() == [[131, 220], [110, 220], [120, 245]]
    assert face_box(lm, 896, 512) == (39, 155, 201, 317)
    assert face_box(_lmk68(x0=-10, y0=-20), 896, 512) == (0, 0, 91, 97)   # clamped at 0 (L, T)
    assert face_box(_lmk68(x0=480, y0=850), 896, 512)[2:] == (512, 896)   # clamped at W, H (R, B)


def test_condition_pixels():
    rng = np.random.default_rng(0)
    frame = rng.integers(1, 256, (896, 512, 3), dtype=np.uint8)
    cond = sface_condition(frame, _lmk68())
    assert cond.shape == (896, 512, 6) and cond.dtype == np.uint8
    local, glob = cond[..., :3], cond[..., 3:]
    # global: exactly the box (39, 155, 201, 317)
    mask = np.zeros((896, 512), bool)
    mask[155:317, 39:201] = True
    assert np.array_equal(glob[mask], frame[mask]) and not glob[~mask].any()
    # local: half sizes int(162 / 512 * 64) = 20 (x) and int(162 / 512 * 64) = 20 (y) around each centre
    lmask = np.zeros((896, 512), bool)
    for cx, cy in [(131, 220), (110, 220), (120, 245)]:
        lmask[cy - 20:cy + 20, cx - 20:cx + 20] = True
    assert np.array_equal(local[lmask], frame[lmask]) and not local[~lmask].any()


def test_no_face_is_black_and_counted():
    frames = np.full((3, 64, 48, 3), 200, np.uint8)
    poses = Poses.empty(3, 64, 48)
    face = np.zeros((468, 3))
    face[:, 0], face[:, 1], face[:, 2] = np.linspace(10, 30, 468), np.linspace(10, 40, 468), 1.0
    poses.face[1] = face
    cond, report = sface_video(frames, poses)
    assert report == {"frames": 3, "no_face": 2, "no_face_frames": [0, 2]}
    assert not cond[0].any() and not cond[2].any() and cond[1].any()
    with pytest.raises(ValueError):
        sface_video(frames[:2], poses)


def test_real_frames(examples_dir):
    from xdyna_jax.data.pose import extract_poses
    from xdyna_jax.data.video import read_video

    frames = read_video(examples_dir / "driving_2.mp4", start=60, stride=50, max_frames=3)
    poses = extract_poses(frames, static=True, hands=False)
    cond, report = sface_video(frames, poses)
    assert report["no_face"] == 0
    for t in range(len(frames)):
        lm = ibug68_from_mesh(poses.face[t])
        left, top, right, bot = face_box(lm, *frames.shape[1:3])
        assert 40 < right - left < 400 and 40 < bot - top < 400
        nose = poses.body[t, 0, :2]
        assert left < nose[0] < right and top < nose[1] < bot
        assert cond[t, ..., 3:].any() and cond[t, ..., :3].any()
