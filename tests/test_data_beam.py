"""``build --beam``: the Apache Beam build writes the same dataset as the local build (the reference).

The local build (``datasets.build_dataset`` without a pipeline) is the independent reference: the same
keys and the same stored bytes and values, order aside, the same rejects, and the loader / the training
data source read the Beam-built folder unchanged.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# the `data` and `beam` extras (setup.cfg); the module is skipped without them
for _mod in ("tensorflow_datasets", "array_record", "av", "cv2", "apache_beam"):
    pytest.importorskip(_mod, reason=f"{_mod} is not installed (the `data` / `beam` extras)")

from cli_table import Case, case_ids, check  # noqa: E402
from data_fakes import make_folder, make_video, picky_conditions  # noqa: E402
from xdyna_jax.data import datasets as D  # noqa: E402
from xdyna_jax.data.beam import BeamPipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DS_FILES = ["build_report.json", "dataset_info.json", "features.json", "rejects.jsonl"]


def cli(*args, code=0):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.data", *map(str, args)], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == code, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def examples(out: Path) -> dict:
    """``{(split, video_id, segment): example}`` of a built dataset."""
    got = {}
    for split, src in D.open_splits(out).items():
        for i in range(len(src)):
            ex = src[i]
            got[split, ex["video_id"].decode(), int(ex["segment"])] = ex
    return got


def assert_same_dataset(beam_out: Path, local_out: Path) -> dict:
    got, want = examples(beam_out), examples(local_out)
    assert want and sorted(got) == sorted(want)
    for key, w in want.items():
        g = got[key]
        assert sorted(g) == sorted(w), key
        for field in w:
            if isinstance(w[field], np.ndarray) and w[field].dtype == object:  # encoded frames: same bytes
                assert list(g[field]) == list(w[field]), (key, field)
            else:
                np.testing.assert_array_equal(g[field], w[field], err_msg=f"{key} {field}")
    b, loc = D.dataset_dir(beam_out), D.dataset_dir(local_out)
    assert sorted(p.name for p in b.iterdir() if not p.name.startswith("xdyna_videos-")) == DS_FILES
    assert (b / "features.json").read_text() == (loc / "features.json").read_text()
    assert (b / "rejects.jsonl").read_text() == (loc / "rejects.jsonl").read_text()
    rb, rl = D.load_report(beam_out), D.load_report(local_out)
    assert {**rb, "dataset_dir": ""} == {**rl, "dataset_dir": ""}
    splits = lambda d: {s["name"]: sum(map(int, s["shardLengths"])) for s in  # noqa: E731
                        json.loads((d / "dataset_info.json").read_text())["splits"]}
    assert splits(b) == splits(loc)
    return want


# ---------------------------------------------------------------- the example data, real pose models

@pytest.fixture(scope="module")
def real(examples_dir, tmp_path_factory):
    """The example videos built locally (in this process) and with --beam on 2 worker processes."""
    pytest.importorskip("mediapipe")
    root = tmp_path_factory.mktemp("beam_real")
    (root / "human").mkdir()
    (root / "scene").mkdir()
    for name in ("driving_1.mp4", "driving_2.mp4"):
        (root / "human" / name).symlink_to(examples_dir / name)
    (root / "human" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real video" * 4)
    (root / "scene" / "driving_3.mp4").symlink_to(examples_dir / "driving_3.mp4")
    sets = {"max_frames": 3, "frame_stride": 4, "size": (448, 256), "segment_frames": 2}
    local = D.build_dataset(root / "local", root / "human", root / "scene", D.BuildSettings(**sets))
    r = cli("build", "--human", root / "human", "--scene", root / "scene", "--out", root / "beam",
            *[a for k, v in sets.items() for a in ("--set", f"{k}={list(v) if isinstance(v, tuple) else v}")],
            "--beam", "--beam-options", "--direct_num_workers=2 --direct_running_mode=multi_processing")
    return root, local, r


def test_beam_build_equals_the_local_build_on_the_example_videos(real):
    root, local, r = real
    want = assert_same_dataset(root / "beam", root / "local")
    # 2 human videos in 2 segments each (3 frames -> 2 + 1), 1 scene video in 2
    assert len(want) == 6 and local.videos == {"human": 2, "scene": 1} and local.detections > 0
    assert "2 worker(s), multi_processing" in r.stdout and "rejects 1" in r.stdout
    assert "videos: 3 (human 2, scene 1)" in r.stdout and "skipped files: 1" in r.stdout
    rejects = [json.loads(ln) for ln in (D.dataset_dir(root / "beam") / "rejects.jsonl").read_text().splitlines()]
    assert [Path(x["file"]).name for x in rejects] == ["broken.mp4"] and "cannot decode" in rejects[0]["reason"]


def test_loader_and_training_source_read_the_beam_dataset(real):
    from xdyna_jax.data.loader import LoaderConfig, VideoClipLoader
    from xdyna_jax.training import config as train_config
    from xdyna_jax.training.runtime import DatasetSource

    root, _, _ = real
    cfg = LoaderConfig(data_dir=str(root / "beam"), clip_length=2, batch_size=2, num_threads=2, shuffle=False,
                       num_epochs=1)
    batches = [list(VideoClipLoader(cfg)) for _ in range(1)][0]
    assert len(batches) == 3 and batches[0]["frames"].shape == (2, 3, 448, 256, 3)
    assert batches[0]["pose"].shape == (2, 2, 448, 256, 3) and batches[0]["face"].shape == (2, 2, 448, 256, 6)
    run = train_config.load(ROOT / "configs" / "train_tiny.yaml",
                            ["data.source=dataset", f"data.data_dir={root / 'beam'}", "train.batch_size=1",
                             "train.frames=2", "train.height=64", "train.width=64", "train.eval_batches=0"])
    source = DatasetSource(run, None)
    try:
        assert source.batch(0)["frames"].shape == (1, 3, 64, 64, 3)
    finally:
        source.close()


# ---------------------------------------------------------------- rejects, in this process

def test_failures_are_rejects_with_the_same_reasons_and_counters(tmp_path):
    make_folder(tmp_path / "human", n_videos=4, corrupt=True, n_frames=4)  # 4, 5, 6, 7 frames + broken.mp4
    report = D.build_dataset(tmp_path / "local", tmp_path / "human", settings=D.BuildSettings(frame_codec="png"),
                             conditions_fn=picky_conditions)
    pipeline = BeamPipeline()
    beam_report = D.build_dataset(tmp_path / "beam", tmp_path / "human", settings=D.BuildSettings(frame_codec="png"),
                                  conditions_fn=picky_conditions, pipeline=pipeline)
    assert_same_dataset(tmp_path / "beam", tmp_path / "local")
    assert beam_report.skipped == report.skipped and report.videos == {"human": 1, "scene": 0}
    reasons = {Path(s["file"]).name: s["reason"] for s in report.skipped}
    assert sorted(reasons) == ["broken.mp4", "v1.mp4", "v2.mp4", "v3.mp4"]
    assert "cannot decode" in reasons["broken.mp4"]
    assert reasons["v1.mp4"] == "no person found in any of its 5 frames"
    assert reasons["v2.mp4"] == "conditions failed: RuntimeError: pose model crashed on this video"
    assert "conditions_fn field 'face' must be uint8 (7, 48, 64, 6)" in reasons["v3.mp4"]
    assert pipeline.counters == {"videos": 1, "rejects": 4, "examples": 1, "frames": 4}
    lines = (D.dataset_dir(tmp_path / "beam") / "rejects.jsonl").read_text().splitlines()
    assert [json.loads(ln) for ln in lines] == report.skipped


def test_a_split_with_no_usable_video_fails_and_leaves_nothing(tmp_path):
    make_folder(tmp_path / "human", n_videos=1, corrupt=True, n_frames=5)  # v0: 5 frames: no person
    make_folder(tmp_path / "scene", n_videos=1, corrupt=False, n_frames=4)
    with pytest.raises(D.DatasetError, match=r"human: none of the human videos could be used \(broken.mp4: "
                                             r"cannot decode.*v0.mp4: no person found"):
        D.build_dataset(tmp_path / "out", tmp_path / "human", tmp_path / "scene", conditions_fn=picky_conditions,
                        pipeline=BeamPipeline())
    assert not (tmp_path / "out").exists()


def test_without_apache_beam_the_local_build_works_and_beam_is_one_error_line(tmp_path):
    """The `data` extra without `beam`: apache_beam made unimportable in a fresh interpreter."""
    make_folder(tmp_path / "human", n_videos=1, corrupt=False, n_frames=3)

    def build(*extra):
        argv = ["build", "--human", str(tmp_path / "human"), "--out", str(tmp_path / "out"),
                "--conditions", "data_fakes:fake_conditions", *extra]
        code = ("import sys; sys.modules['apache_beam'] = None\n"
                f"from xdyna_jax.data.__main__ import main; sys.exit(main({argv!r}))")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), JAX_PLATFORMS="cpu")
        return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300)

    r = build("--beam")
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: --beam: Apache Beam is not installed")
    assert "install the `beam` extra" in r.stderr and not (tmp_path / "out").exists()
    r = build()
    assert r.returncode == 0 and "videos: 1 (human 1, scene 0)" in r.stdout, r.stderr
    assert "Traceback" not in r.stderr


# ---------------------------------------------------------------- bad input, before any pipeline starts

def _human(path):
    path.mkdir()
    make_video(path / "v0.mp4", n_frames=3)


def _broken(path):
    path.mkdir()
    (path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real video" * 4)


FILES = {"human": _human, "broken_human": _broken, "emptydir": lambda p: p.mkdir(),
         "afile": lambda p: p.write_text("x")}


def _rows():
    bd = lambda *a, human="{human}", out="{out}": ("build", "--human", human, "--out", out,  # noqa: E731
                                                   "--conditions", "data_fakes:fake_conditions", "--beam", *a)
    opt = lambda flags: bd(f"--beam-options={flags}")  # noqa: E731
    return [
        Case("beam-human-missing", bd(human="{nope}"), "missing", "--human"),
        Case("beam-human-empty", bd(human="{emptydir}"), "empty", "no video files"),
        Case("beam-human-all-broken", bd(human="{broken_human}"), "truncated",
             "none of the human videos could be used (broken.mp4: cannot decode"),
        Case("beam-set-unknown", bd("--set", "colour=red"), "usage", "unknown key(s) ['colour']"),
        Case("beam-out-file", bd(out="{afile}"), "unwritable", "not a directory"),
        Case("beam-options-unknown", opt("--direct_num_wrkers=2"), "usage",
             "unknown option(s) ['--direct_num_wrkers=2']"),
        Case("beam-options-positional", opt("workers=2"), "usage", "unknown option(s) ['workers=2']"),
        # one flag as a separate value (argparse alone would take it for an option of its own)
        Case("beam-options-one-flag-apart", bd("--beam-options", "--direct_num_wrkers=2"), "usage",
             "unknown option(s) ['--direct_num_wrkers=2']"),
        Case("beam-options-bad-value-apart", bd("--beam-options", "--direct_num_workers=two"), "out-of-range",
             "argument --direct_num_workers: invalid int value: 'two'"),
        Case("beam-options-malformed", opt("--runner='Direct"), "wrong-format", "malformed (No closing quotation)"),
        Case("beam-options-bad-value", opt("--direct_num_workers=two"), "out-of-range",
             "argument --direct_num_workers: invalid int value: 'two'"),
        Case("beam-options-bad-mode", opt("--direct_running_mode=threads"), "out-of-range",
             "argument --direct_running_mode: invalid choice: 'threads'"),
        Case("beam-options-runner", opt("--runner=NoSuchRunner"), "out-of-range",
             "--runner=NoSuchRunner: Unexpected pipeline runner"),
        Case("beam-options-without-beam", ("build", "--human", "{human}", "--out", "{out}",
                                           "--beam-options=--direct_num_workers=2"), "usage", "only used with --beam"),
    ]


ROWS = _rows()


@pytest.mark.parametrize("case", ROWS, ids=case_ids(ROWS))
def test_beam_bad_inputs(case, tmp_path, capsys):
    from xdyna_jax.data.__main__ import main

    check(main, case, tmp_path, FILES, capsys)
