"""Video I/O and MediaPipe pose extraction: synthetic checks, and detection on a few real driving frames."""
from __future__ import annotations

import numpy as np
import pytest

from xdyna_jax.data.pose import (N_FACE, OP_NAMES, OPENPOSE_FROM_MEDIAPIPE, Poses, extract_poses,
                                 smooth_poses)
from xdyna_jax.data.video import VideoError, read_video, video_info, write_video


def test_index_map_is_openpose18():
    assert len(OP_NAMES) == 18 and len(OPENPOSE_FROM_MEDIAPIPE) == 18
    # person-centric: OpenPose right limbs <- MediaPipe right landmarks (even indices 12..28), left <- odd
    assert list(OPENPOSE_FROM_MEDIAPIPE[2:5]) == [12, 14, 16] and list(OPENPOSE_FROM_MEDIAPIPE[5:8]) == [11, 13, 15]
    assert list(OPENPOSE_FROM_MEDIAPIPE[8:14]) == [24, 26, 28, 23, 25, 27]


def test_video_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(np.repeat(rng.integers(0, 255, (5, 6, 4, 3), dtype=np.uint8), 8, 1), 8, 2)  # 48x32
    path = write_video(tmp_path / "v.mp4", frames, fps=8, crf=0)
    assert video_info(path) == {"frames": 5, "fps": 8.0, "width": 32, "height": 48}
    back = read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames).mean() < 12  # lossless luma, 4:2:0 chroma
    sub = read_video(path, stride=2, max_frames=2)
    assert sub.shape[0] == 2 and np.array_equal(sub[1], back[2])


def test_video_errors_name_the_file(tmp_path):
    with pytest.raises(VideoError, match="missing.mp4"):
        read_video(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(VideoError, match="bad.mp4"):
        read_video(bad)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    path = write_video(tmp_path / "short.mp4", frames)
    with pytest.raises(VideoError, match="short.mp4"):
        read_video(path, start=10)


def test_poses_shapes_and_empty():
    p = Poses.empty(3, 64, 32)
    assert p.body.shape == (3, 18, 3) and p.hands.shape == (3, 2, 21, 3) and p.face.shape == (3, N_FACE, 3)
    assert np.isnan(p.body[..., :2]).all() and (p.body[..., 2] == 0).all()
    assert len(p[1]) == 1 and len(p[1:]) == 2
    with pytest.raises(ValueError):
        Poses(p.body, p.hands[:2], p.face, 64, 32)


def test_smoothing_moving_average_over_confident_frames():
    t = 7
    p = Poses.empty(t, 100, 100)
    p.body[:, 0, 0] = np.arange(t) * 10.0
    p.body[:, 0, 1] = 5.0
    p.body[:, 0, 2] = 1.0
    p.body[3, 0, 2] = 0.0  # a miss in the middle: ignored by its neighbours, left as is
    p.body[3, 0, :2] = np.nan
    s = smooth_poses(p, window=3)
    assert np.allclose(s.body[:, 0, 1][p.body[:, 0, 2] > 0], 5.0)  # constants stay constant
    assert s.body[1, 0, 0] == pytest.approx(10.0)   # mean(0, 10, 20)
    assert s.body[2, 0, 0] == pytest.approx(15.0)   # mean(10, 20); frame 3 is a miss
    assert s.body[0, 0, 0] == pytest.approx(5.0)    # edge: mean(0, 10)
    assert np.isnan(s.body[3, 0, 0]) and s.body[3, 0, 2] == 0
    assert np.isnan(s.body[:, 5, :2]).all()         # never seen: stays missing


@pytest.fixture(scope="module")
def driving_2(examples_dir):
    frames = read_video(examples_dir / "driving_2.mp4", start=100, stride=40, max_frames=4)
    return frames, extract_poses(frames, static=True)


def test_detects_person_in_driving_frames(driving_2):
    frames, poses = driving_2
    h, w = frames.shape[1:3]
    assert (poses.height, poses.width) == (h, w)
    core = [1, 2, 5, 8, 11]  # neck, shoulders, hips
    assert (poses.body[:, core, 2] > 0.5).all()
    xy = poses.body[:, core, :2]
    assert ((xy >= 0) & (xy < [w, h])).all()
    neck, hip = poses.body[:, 1, 1], poses.body[:, [8, 11], 1].mean(1)
    assert (hip - neck > 80).all()  # upright: hips well below the neck
    # the face (visible in this video) is found and sits above the neck
    assert (poses.face[:, :, 2] > 0).all()
    assert (np.nanmax(poses.face[:, :, 1], axis=1) < neck + 10).all()
    # at least one hand found somewhere, near its wrist
    found = poses.hands[:, :, 0, 2] > 0
    assert found.any()
    t, slot = np.argwhere(found)[0]
    wrist = poses.body[t, 7 if slot == 0 else 4, :2]
    assert np.linalg.norm(poses.hands[t, slot, 0, :2] - wrist) < 60
