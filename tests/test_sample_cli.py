"""sample.py: the README's main command, end to end at a tiny size, and its bad-input table."""
from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np
import pytest
from cli_table import Case, case_ids, check
from helpers import MICRO_NETS, REPO_ROOT, random_tree, tiny_models_config

from xdyna_jax import cli
from xdyna_jax.models import xdyna

_spec = importlib.util.spec_from_file_location("sample_script", REPO_ROOT / "sample.py")
sample = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sample)

SMALL = ["sample.frames=4", "sample.stride=1", "sample.steps=2", "sample.height=64", "sample.width=48"]


def run(argv):
    return cli.run(sample.main, argv)


def _video(path, frames=4, h=64, w=32, seed=0):
    from xdyna_jax.data.video import write_video

    rng = np.random.default_rng(seed)
    write_video(path, rng.integers(0, 255, (frames, h, w, 3), dtype=np.uint8), fps=8)


def _image(path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 255, (80, 40, 3), dtype=np.uint8)).save(path)


def _bundle(path, face=True):
    from xdyna_jax.porting.bundle import save_bundle

    # the micro networks (one-level UNet and ControlNets): the CLI end to end, not the networks, is the subject here
    micro = {k: v for k, v in MICRO_NETS.items() if face or not k.startswith("face_controlnet.")}
    cfg = tiny_models_config(**micro) if face else tiny_models_config(face_controlnet="null", **micro)
    save_bundle(path, random_tree(xdyna.param_shapes(cfg), seed=5), cfg, "random test weights")


def _no_frames(path):
    """An mp4 with an audio track and no video frames."""
    import av

    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("aac", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        f.sample_rate = 8000
        for packet in list(s.encode(f)) + list(s.encode(None)):
            c.mux(packet)


RECIPES = {
    "ref.png": _image, "pose.mp4": _video, "pose3.mp4": lambda p: _video(p, frames=3),
    "driving5.mp4": lambda p: _video(p, frames=5, seed=2),
    "text.png": lambda p: p.write_text("not an image"), "empty.mp4": lambda p: p.write_bytes(b""),
    "garbage.mp4": lambda p: p.write_bytes(np.random.default_rng(3).bytes(4096)), "noframes.mp4": _no_frames,
    "jobs.json": lambda p: p.write_text(json.dumps([{"image_path": "nowhere.png", "target_no_head_poses": "x.mp4"}])),
    "jobs_bad.json": lambda p: p.write_text('[{"image_path": "a.png", "pose_video": "b.mp4"}]'),
    "afile": lambda p: p.write_text("in the way"),
}
W = ["--weights", "@POSE_ONLY_BUNDLE@", "--no-progress"]  # bundles made once per session
ROWS = [
    Case("reference-missing", ["--reference", "{nope.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W, *SMALL],
         "missing", "no such file"),
    Case("reference-not-an-image", ["--reference", "{text.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W, *SMALL],
         "wrong-format", "cannot read the reference image"),
    Case("pose-missing", ["--reference", "{ref.png}", "--pose", "{nope.mp4}", "--out", "{out}", *W, *SMALL],
         "missing", "no such file"),
    Case("pose-empty", ["--reference", "{ref.png}", "--pose", "{empty.mp4}", "--out", "{out}", *W, *SMALL],
         "empty", "empty file"),
    Case("pose-not-a-video", ["--reference", "{ref.png}", "--pose", "{garbage.mp4}", "--out", "{out}", *W, *SMALL],
         "truncated", "cannot decode video"),
    Case("pose-no-frames", ["--reference", "{ref.png}", "--pose", "{noframes.mp4}", "--out", "{out}", *W, *SMALL],
         "wrong-shape", "no video stream"),
    Case("pose-and-face-lengths", ["--reference", "{ref.png}", "--pose", "{pose3.mp4}", "--driving", "{driving5.mp4}",
                                   "--out", "{out}", "--weights", "@BUNDLE@", "--no-progress", *SMALL[:1],
                                   "sample.frames=5", *SMALL[1:]],
         "wrong-shape", "must have the same length"),
    Case("height-not-multiple-of-8", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W,
                                      *SMALL, "sample.height=60"],
         "out-of-range", "multiples of 8"),
    Case("width-too-small", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W, *SMALL,
                              "sample.width=32"], "out-of-range", "at least 40 pixels"),
    Case("steps-zero", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W, *SMALL,
                        "sample.steps=0"], "out-of-range", "sample.steps=0"),
    Case("strength-keeps-no-step", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W,
                                    *SMALL, "sample.strength=0.4"], "out-of-range", "sample.strength=0.4"),
    Case("weights-do-not-fit", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W, *SMALL,
                                "models.text_encoder.intermediate_size=64"],
         "wrong-shape", "the config expects (48, 64), the bundle holds (48, 96)"),
    Case("weights-not-a-bundle", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{out}",
                                  "--weights", "{afile}", *SMALL], "wrong-format", "not a bundle folder"),
    Case("unknown-config-key", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{out}", *W, *SMALL,
                                "sample.bogus=1"], "usage", "unknown key(s) ['bogus']"),
    Case("override-not-key-value", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "sample.steps"],
         "usage", "expected a key=value"),
    Case("out-under-a-file", ["--reference", "{ref.png}", "--pose", "{pose.mp4}", "--out", "{afile}/videos", *W,
                              *SMALL], "unwritable", "is a file"),
    Case("reference-without-motion", ["--reference", "{ref.png}", "--out", "{out}"], "usage", "needs --pose"),
    Case("jobs-with-missing-files", ["--jobs", "{jobs.json}", "--out", "{out}", *W, *SMALL], "missing",
         "no such file"),
    Case("jobs-unknown-key", ["--jobs", "{jobs_bad.json}", "--out", "{out}", *W, *SMALL], "wrong-format",
         "unknown key(s) ['pose_video']"),
    Case("config-missing", ["--config", "{nope.yaml}", "--out", "{out}"], "missing", "cannot read"),
    Case("weights-and-random-weights", ["--weights", "{afile}", "--random-weights", "--out", "{out}"], "usage",
         "not both"),
]


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    _bundle(root / "full", face=True)
    _bundle(root / "pose_only", face=False)
    return {"@BUNDLE@": str(root / "full"), "@POSE_ONLY_BUNDLE@": str(root / "pose_only")}


@pytest.mark.parametrize("case", ROWS, ids=case_ids(ROWS))
def test_bad_input(case, tmp_path, capsys, bundles):
    case = dataclasses.replace(case, argv=[bundles.get(a, a) for a in case.argv])
    check(run, case, tmp_path, RECIPES, capsys)


def _read(path):
    from xdyna_jax.data.video import read_video

    return read_video(path)


def test_pose_job_writes_complete_videos_and_grid(tmp_path, capsys, bundles):
    (tmp_path / "in").mkdir()
    _image(tmp_path / "in" / "ref.png")
    _video(tmp_path / "in" / "pose.mp4", frames=6)
    out = tmp_path / "out"
    code = run(["--reference", str(tmp_path / "in" / "ref.png"), "--pose", str(tmp_path / "in" / "pose.mp4"),
                "--weights", bundles["@POSE_ONLY_BUNDLE@"], "--out", str(out), "--grid", "--no-progress", *SMALL])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    video = _read(out / "ref_pose.mp4")
    assert video.shape == (4, 64, 48, 3)  # sample.frames of the 6, at sample.height x sample.width
    grid = _read(out / "ref_pose_grid.mp4")
    assert grid.shape == (4, 64, 3 * 48, 3)  # reference | skeleton | result
    assert "ref_pose: 4 frames 64x48" in printed.out
    assert sorted(p.name for p in out.iterdir()) == ["ref_pose.mp4", "ref_pose_grid.mp4"]


def test_driving_job_extracts_aligns_renders_and_builds_sface(examples_dir, tmp_path, capsys, bundles):
    pytest.importorskip("mediapipe")
    out = tmp_path / "out"
    code = run(["--reference", str(examples_dir / "reference_1.png"), "--driving", str(examples_dir / "driving_1.mp4"),
                "--align", "--weights", bundles["@BUNDLE@"], "--out", str(out), "--grid", "--no-progress",
                "sample.frames=2", "sample.stride=1", "sample.steps=1", "sample.height=128", "sample.width=64"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "extracted poses from 2 driving frames" in printed.out
    assert "retargeted" in printed.out and "S-Face condition" in printed.out
    assert _read(out / "reference_1_driving_1.mp4").shape == (2, 128, 64, 3)
    # reference | driving | face global | face local | skeleton | result
    assert _read(out / "reference_1_driving_1_grid.mp4").shape == (2, 128, 6 * 64, 3)


def test_embedded_default_without_examples_generates_its_inputs(tmp_path):
    from xdyna_jax.sampling import jobs, run as sample_run

    (job,) = sample_run.default_inputs(None, tmp_path, height=128, width=64, frames=16)
    jobs.check_files([job])
    x = jobs.read_job(job, frames=16, stride=2, height=128, width=64, face=False)
    assert x.pose.shape == (8, 128, 64, 3) and x.reference.shape == (128, 64, 3)
    assert x.pose.any() and -1 <= x.reference.min() < x.reference.max() <= 1  # a drawn figure, not blank


def test_embedded_default_animates_a_held_out_clip_with_the_trained_weights(examples_dir, tmp_path, capsys):
    """No arguments (here fewer frames and steps): the tiny world's committed weights (pose-only X-Dyna) on a
    held-out clip with its own skeleton, and on the real example (out of domain)."""
    if not (sample.TINY_WORLD / "config.yaml").is_file():
        pytest.skip(f"{sample.TINY_WORLD} is not in the repository yet (docs/TINY_WORLD.md: not shipped until it "
                    f"beats the static baseline)")
    out = tmp_path / "out"
    code = run(["--out", str(out), "--no-progress", "sample.frames=4", "sample.steps=2"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "tiny world's trained weights" in printed.out and "out of the tiny world's domain" in printed.out
    assert _read(out / "world_test_000.mp4").shape == (4, 128, 128, 3)
    # reference | ground truth | skeleton | result
    assert _read(out / "world_test_000_grid.mp4").shape == (4, 128, 4 * 128, 3)
    # reference | skeleton | result
    assert _read(out / "example_1_out_of_domain_grid.mp4").shape == (4, 128, 3 * 128, 3)
