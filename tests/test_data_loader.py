"""loader.py: host sharding, seeded determinism, clip rule, threaded prefetch, save/restore."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

# the `data` extra (setup.cfg); the module is skipped without it
for _mod in ("tensorflow_datasets", "array_record", "av", "cv2"):
    pytest.importorskip(_mod)

from data_fakes import fake_conditions, make_folder  # noqa: E402
from xdyna_jax import config as config_lib  # noqa: E402
from xdyna_jax.data import datasets as D  # noqa: E402
from xdyna_jax.data.loader import LoaderConfig, VideoClipLoader, clip_indices  # noqa: E402
from xdyna_jax.data.video import read_video  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ld")
    make_folder(root / "human", n_videos=4, corrupt=False, n_frames=9)
    make_folder(root / "scene", n_videos=1, corrupt=False, n_frames=9)
    D.build_dataset(root / "out", root / "human", root / "scene", D.BuildSettings(frame_codec="png"),
                    fake_conditions)
    return root


def cfg(root, **kw):
    return LoaderConfig(data_dir=str(root / "out"), clip_length=4, stride=2, batch_size=2, num_threads=2, **kw)


def assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_batch_contents_match_source(data):
    with VideoClipLoader(cfg(data, reference="outside_clip"), 0, 1) as ld:
        assert len(ld) == 5 and ld.steps_per_epoch == 2
        batch = next(ld)
        assert batch["frames"].shape == (2, 5, 48, 64, 3) and batch["frames"].dtype == np.uint8
        assert batch["pose"].shape == (2, 4, 48, 64, 3) and batch["face"].shape == (2, 4, 48, 64, 6)
        assert batch["is_scene"].dtype == np.bool_
        for b, g in enumerate(ld.batch_indices(0, 0)):
            split, i = ld._index[g]
            ex = ld._sources[split][i]
            video = read_video(data / split / ex["video_id"].decode())
            ref, clip = clip_indices(len(video), 4, 2, np.random.default_rng([0, 0, int(g)]), "outside_clip")
            assert ref not in range(clip[0], clip[-1] + 1) and list(np.diff(clip)) == [2, 2, 2]
            np.testing.assert_array_equal(batch["frames"][b], video[[ref, *clip]])
            assert batch["is_scene"][b] == (split == "scene")
            if split == "human":
                np.testing.assert_array_equal(batch["pose"][b], fake_conditions(video[clip])["pose"])
                np.testing.assert_array_equal(batch["face"][b], fake_conditions(video[clip])["face"])
            else:
                assert not batch["pose"][b].any() and not batch["face"][b].any()


def test_clip_rule_short_videos():
    rng = np.random.default_rng(0)
    ref, clip = clip_indices(10, 4, 5, rng)  # span 16 > 10: stride falls to 3
    assert list(np.diff(clip)) == [3, 3, 3] and 0 <= ref < 10
    ref, clip = clip_indices(3, 5, 1, rng)  # shorter than the clip: last frame repeats
    assert list(clip) == [0, 1, 2, 2, 2]
    ref, clip = clip_indices(4, 4, 1, rng, "outside_clip")  # clip covers all: any frame
    assert 0 <= ref < 4


def test_host_sharding_disjoint_and_covering(data):
    hosts = [VideoClipLoader(cfg(data), p, 2) for p in range(2)]
    for epoch in range(2):
        parts = [set(h.epoch_order(epoch).tolist()) for h in hosts]
        assert not parts[0] & parts[1] and parts[0] | parts[1] == set(range(5))
    assert hosts[0].steps_per_epoch == hosts[1].steps_per_epoch == 1
    assert not np.array_equal(hosts[0].epoch_order(0), hosts[0].epoch_order(1)) or \
        not np.array_equal(hosts[1].epoch_order(0), hosts[1].epoch_order(1))
    for h in hosts:
        h.close()


def test_seed_determinism(data):
    def first(seed, n=3):
        with VideoClipLoader(cfg(data, seed=seed), 0, 1) as ld:
            return [next(ld) for _ in range(n)]
    a, b, c = first(1), first(1), first(2)
    for x, y in zip(a, b):
        assert_batches_equal(x, y)
    assert any(not np.array_equal(x["frames"], y["frames"]) for x, y in zip(a, c))


def test_save_restore_reproduces_next_batches(data):
    with VideoClipLoader(cfg(data, seed=3), 0, 1) as ld:
        for _ in range(3):  # into epoch 1
            next(ld)
        state = json.loads(json.dumps(ld.state()))
        assert state == {"epoch": 1, "step": 1, "seed": 3}
        want = [next(ld) for _ in range(3)]
    with VideoClipLoader(cfg(data, seed=99), 0, 1, state=state) as ld2:  # the state's seed wins
        for w in want:
            assert_batches_equal(next(ld2), w)
        ld2.restore(state)  # restoring mid-iteration restarts from the saved position
        assert_batches_equal(next(ld2), want[0])
        with pytest.raises(ValueError, match="missing key"):
            ld2.restore({"epoch": 0})


def test_num_epochs_and_config_load(data, tmp_path):
    path = tmp_path / "loader.yaml"
    path.write_text(f"data_dir: {data / 'out'}\nclip_length: 3\nbatch_size: 5\nsplits: [human, scene]\n")
    c = config_lib.load(LoaderConfig, path, ["num_epochs=2", "size=[24, 32]"])
    assert c.size == (24, 32) and c.splits == ("human", "scene")
    with VideoClipLoader(c, 0, 1) as ld:
        batches = list(ld)
    assert len(batches) == 2 and batches[0]["frames"].shape == (5, 4, 24, 32, 3)
    assert batches[0]["face"].shape == (5, 3, 24, 32, 6) and batches[0]["is_scene"].sum() == 1
    with pytest.raises(D.DatasetError, match="too few"):
        VideoClipLoader(cfg(data), 0, 8)


def test_mixed_sizes_need_resize(tmp_path):
    from data_fakes import make_video
    make_video(tmp_path / "h" / "a.mp4", n_frames=4)
    make_video(tmp_path / "h" / "b.mp4", n_frames=4, height=32, width=48)
    D.build_dataset(tmp_path / "out", tmp_path / "h", conditions_fn=fake_conditions)
    c = LoaderConfig(data_dir=str(tmp_path / "out"), clip_length=2, batch_size=2, num_threads=1)
    with VideoClipLoader(c, 0, 1) as ld, pytest.raises(D.DatasetError, match="different sizes.*LoaderConfig.size"):
        next(ld)
    with VideoClipLoader(dataclasses.replace(c, size=(32, 48)), 0, 1) as ld:
        assert next(ld)["face"].shape == (2, 2, 32, 48, 6)
