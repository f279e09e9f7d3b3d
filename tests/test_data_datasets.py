"""datasets.py: video folders -> array_record TFDS dataset, read back without TensorFlow."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

# the `data` extra (setup.cfg); the module is skipped without it
for _mod in ("tensorflow_datasets", "array_record", "av", "cv2"):
    pytest.importorskip(_mod)

from data_fakes import fake_conditions, make_folder  # noqa: E402
from xdyna_jax.data import datasets as D  # noqa: E402
from xdyna_jax.data.video import read_video  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    make_folder(root / "human", n_videos=3, corrupt=True)
    make_folder(root / "scene", n_videos=2, corrupt=False)
    report = D.build_dataset(root / "out", root / "human", root / "scene", D.BuildSettings(frame_codec="png"),
                             fake_conditions)
    return root, report


def test_build_round_trip_identical(built):
    root, report = built
    src = D.open_splits(root / "out")
    assert sorted(src) == ["human", "scene"] and len(src["human"]) == 3 and len(src["scene"]) == 2
    for i in range(3):
        ex = src["human"][i]
        vid = ex["video_id"].decode()
        ref = read_video(root / "human" / vid)
        t, h, w, _ = ref.shape
        assert (ex["num_frames"], ex["height"], ex["width"]) == (t, h, w) == (len(ex["frames"]), 48, 64)
        assert ex["fps"] == pytest.approx(8.0) and not ex["is_scene"]
        want = fake_conditions(ref)
        np.testing.assert_array_equal(np.stack([D.decode_image(b) for b in ex["frames"]]), ref)
        np.testing.assert_array_equal(np.stack([D.decode_image(b) for b in ex["pose"]]), want["pose"])
        np.testing.assert_array_equal(np.stack([D.decode_image(b, 6) for b in ex["face"]]), want["face"])
        assert (ex["detections"], ex["misses"]) == (t - 1, 1)
        assert json.loads(ex["meta_json"]) == want["meta"]
    sc = src["scene"][0]
    assert sc["is_scene"] and len(sc["pose"]) == len(sc["face"]) == 0 and len(sc["frames"]) == sc["num_frames"]
    assert "tensorflow" not in sys.modules


def test_corrupt_file_reported_and_skipped(built):
    root, report = built
    assert report.videos == {"human": 3, "scene": 2}
    assert [s["file"] for s in report.skipped] == [str(root / "human" / "broken.mp4")]
    assert "broken.mp4" in report.skipped[0]["reason"]
    assert report.frames == (12 + 13 + 14) + (12 + 13) and report.misses == 3
    assert D.load_report(root / "out") == report.to_dict()
    assert "skipped files: 1" in report.summary()


def test_jpeg_frames_close_and_smaller(tmp_path):
    make_folder(tmp_path / "h", n_videos=1, corrupt=False)
    D.build_dataset(tmp_path / "out", tmp_path / "h", settings=D.BuildSettings(max_frames=5, frame_stride=2),
                    conditions_fn=fake_conditions)
    ex = D.open_splits(tmp_path / "out", ("human",))["human"][0]
    ref = read_video(tmp_path / "h" / "v0.mp4", stride=2, max_frames=5)
    got = np.stack([D.decode_image(b) for b in ex["frames"]])
    assert got.shape == ref.shape == (5, 48, 64, 3) and ex["fps"] == pytest.approx(4.0)
    assert float(np.abs(got.astype(int) - ref).mean()) < 6  # q95 on a sharp synthetic pattern
    assert ex["frames"][0][:2] == b"\xff\xd8"  # JPEG
    np.testing.assert_array_equal(np.stack([D.decode_image(b) for b in ex["pose"]]), 255 - ref)  # PNG: exact


def test_segments(tmp_path):
    make_folder(tmp_path / "h", n_videos=1, corrupt=False, n_frames=12)
    report = D.build_dataset(tmp_path / "out", tmp_path / "h", settings=D.BuildSettings(segment_frames=5,
                             frame_codec="png"), conditions_fn=fake_conditions)
    src = D.open_splits(tmp_path / "out")["human"]
    exs = sorted((src[i] for i in range(len(src))), key=lambda e: e["segment"])
    assert report.videos["human"] == 1 and report.frames == 12
    assert [(e["segment"], e["start_frame"], e["num_frames"]) for e in exs] == [(0, 0, 4), (1, 4, 4), (2, 8, 4)]
    ref = read_video(tmp_path / "h" / "v0.mp4")
    np.testing.assert_array_equal(np.stack([D.decode_image(b) for e in exs for b in e["frames"]]), ref)
    np.testing.assert_array_equal(np.stack([D.decode_image(b, 6) for e in exs for b in e["face"]]),
                                  fake_conditions(ref)["face"])


def test_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(D.DatasetError, match="empty: no video files"):
        D.build_dataset(tmp_path / "o", tmp_path / "empty", conditions_fn=fake_conditions)
    with pytest.raises(D.DatasetError, match="video folder not found"):
        D.build_dataset(tmp_path / "o", tmp_path / "nope", conditions_fn=fake_conditions)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mp4").write_bytes(b"garbage")
    with pytest.raises(D.DatasetError, match=r"bad: none of the human videos could be used \(x.mp4"):
        D.build_dataset(tmp_path / "o", bad, conditions_fn=fake_conditions)
    make_folder(tmp_path / "h", n_videos=1, corrupt=False, n_frames=3)
    wrong = lambda fr: {**fake_conditions(fr), "face": fr}  # noqa: E731
    with pytest.raises(D.DatasetError, match=r"v0.mp4: conditions_fn field 'face' must be uint8 \(3, 48, 64, 6\)"):
        D.build_dataset(tmp_path / "o2", tmp_path / "h", conditions_fn=wrong)
    D.build_dataset(tmp_path / "o3", tmp_path / "h", conditions_fn=fake_conditions)
    with pytest.raises(D.DatasetError, match="already exists"):
        D.build_dataset(tmp_path / "o3", tmp_path / "h", conditions_fn=fake_conditions)
    D.build_dataset(tmp_path / "o3", tmp_path / "h", conditions_fn=fake_conditions, overwrite=True)
    with pytest.raises(D.DatasetError, match="no xdyna_videos dataset"):
        D.open_splits(tmp_path / "empty")


def test_six_channel_codec():
    img = np.random.default_rng(0).integers(0, 256, (5, 7, 6), dtype=np.uint8)
    np.testing.assert_array_equal(D.decode_image(D.encode_image(img, "png"), 6), img)
    with pytest.raises(D.DatasetError, match="not a decodable"):
        D.decode_image(b"nope", 3, "x")


def test_real_example_video(examples_dir, tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "driving_1.mp4").symlink_to(examples_dir / "driving_1.mp4")
    report = D.build_dataset(tmp_path / "out", folder, settings=D.BuildSettings(max_frames=8, size=(448, 256)),
                             conditions_fn=fake_conditions)
    assert report.videos["human"] == 1 and report.frames == 8 and not report.skipped
    ex = D.open_splits(tmp_path / "out")["human"][0]
    assert (ex["num_frames"], ex["height"], ex["width"]) == (8, 448, 256) and ex["fps"] == pytest.approx(8.0)
    frames = np.stack([D.decode_image(b) for b in ex["frames"]])
    np.testing.assert_array_equal(np.stack([D.decode_image(b) for b in ex["pose"]]),
                                  255 - np.stack([D.decode_image(b, 6)[..., :3] for b in ex["face"]]))
    assert frames.std() > 10  # real content, not a blank decode


def test_real_video_default_conditions(examples_dir, tmp_path):
    """The real pose / render / S-Face modules on 2 frames of an example video."""
    pytest.importorskip("mediapipe")
    folder = tmp_path / "real"
    folder.mkdir()
    (folder / "driving_2.mp4").symlink_to(examples_dir / "driving_2.mp4")
    report = D.build_dataset(tmp_path / "out", folder, settings=D.BuildSettings(max_frames=2))
    assert report.videos["human"] == 1 and not report.skipped and report.detections + report.misses == 2
    ex = D.open_splits(tmp_path / "out")["human"][0]
    pose = np.stack([D.decode_image(b) for b in ex["pose"]])
    face = np.stack([D.decode_image(b, 6) for b in ex["face"]])
    assert pose.shape == (2, 896, 512, 3) and face.shape == (2, 896, 512, 6)
    meta = json.loads(ex["meta_json"])
    assert meta["detections"] == ex["detections"] and meta["face"]["frames"] == 2
    if ex["detections"]:
        assert pose.any()
