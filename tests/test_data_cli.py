"""``python -m xdyna_jax.data`` in subprocesses: build (+ summary, errors), render / align / extract."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# the `data` extra (setup.cfg); the module is skipped without it
for _mod in ("tensorflow_datasets", "array_record", "av", "cv2"):
    pytest.importorskip(_mod)

from data_fakes import make_folder  # noqa: E402
from xdyna_jax.data import datasets as D  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cli(*args, code=0, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.data", *map(str, args)], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == code, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r


def test_build_summary_and_errors(tmp_path):
    make_folder(tmp_path / "human", n_videos=2, corrupt=True, n_frames=4)
    make_folder(tmp_path / "scene", n_videos=1, corrupt=False, n_frames=4)
    r = cli("build", "--human", tmp_path / "human", "--scene", tmp_path / "scene", "--out", tmp_path / "out",
            "--conditions", "data_fakes:fake_conditions", "--set", "frame_codec=png", "--set", "max_frames=3")
    assert "videos: 3 (human 2, scene 1)" in r.stdout and "frames: 9" in r.stdout
    assert "detections: 4" in r.stdout and "misses: 2" in r.stdout
    assert "skipped files: 1" in r.stdout and "broken.mp4" in r.stdout
    assert "[build human 2/3]" in r.stderr
    src = D.open_splits(tmp_path / "out")
    assert len(src["human"]) == 2 and src["human"][0]["frames"][0][:4] == b"\x89PNG"
    # errors: one line, exit code 2
    (tmp_path / "empty").mkdir()
    for args, msg in [(("--human", tmp_path / "empty"), "no video files"),
                      (("--human", tmp_path / "human"), "already exists"),
                      (("--human", tmp_path / "human", "--set", "frame_codec=gif"), "frame_codec"),
                      (("--human", tmp_path / "human", "--conditions", "nope:f"), "cannot import")]:
        r = cli("build", "--out", tmp_path / "out", *args, code=2)
        assert r.stderr.startswith("error: ") and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1


def fake_poses_npz(path: Path, t=3, h=48, w=64):
    rng = np.random.default_rng(0)
    body = np.concatenate([rng.uniform([8, 8], [w - 8, h - 8], (t, 18, 2)), np.ones((t, 18, 1))], -1)
    hands = np.zeros((t, 2, 21, 3))
    hands[..., :2] = np.nan
    face = np.zeros((t, 468, 3))
    face[..., :2] = np.nan
    np.savez(path, body=body.astype(np.float32), hands=hands.astype(np.float32), face=face.astype(np.float32),
             height=h, width=w)
    return path


def test_render_and_align(tmp_path):
    pytest.importorskip("xdyna_jax.data.render")
    pytest.importorskip("xdyna_jax.data.align")
    npz = fake_poses_npz(tmp_path / "drv.npz")
    r = cli("render", npz, "--out", tmp_path / "vid")
    assert "videos: 1" in r.stdout and "frames: 3" in r.stdout and (tmp_path / "vid" / "drv.mp4").is_file()
    r = cli("align", "--driving", npz, "--reference", fake_poses_npz(tmp_path / "ref.npz", t=1),
            "--out", tmp_path / "al.npz", "--fit-frames", "1", "--render", tmp_path / "al.mp4")
    assert "frames: 3" in r.stdout and (tmp_path / "al.npz").is_file() and (tmp_path / "al.mp4").is_file()
    r = cli("render", tmp_path / "missing.npz", "--out", tmp_path / "vid", code=2)
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.npz: no such file (expected a poses .npz" in r.stderr


def test_extract_real_frames(examples_dir, tmp_path):
    pytest.importorskip("mediapipe")
    r = cli("extract", examples_dir / "driving_1.mp4", tmp_path / "nope.mp4", "--out", tmp_path,
            "--max-frames", "2")
    assert "inputs: 1" in r.stdout and "frames: 2" in r.stdout and "skipped files: 1" in r.stdout
    with np.load(tmp_path / "driving_1.npz") as z:
        assert z["body"].shape == (2, 18, 3) and int(z["height"]) == 896


def readme_data_commands() -> list[str]:
    """The ``python -m xdyna_jax.data`` lines of the README's block on the examples (continuations joined)."""
    text = (ROOT / "README.md").read_text().split("<!-- data commands on the examples -->", 1)[1]
    block = text.split("```bash", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    return [ln.split("#")[0].strip() for ln in block.splitlines() if ln.startswith("python -m xdyna_jax.data")]


def test_readme_data_commands_score_what_the_library_does(examples_dir, tmp_path):
    """The README's data commands, as written (plus --max-frames 3), against the same steps in the library."""
    pytest.importorskip("mediapipe")
    from xdyna_jax.data.align import align_poses
    from xdyna_jax.data.pose import extract_poses
    from xdyna_jax.data.render import render_poses
    from xdyna_jax.eval.score import mask_iou
    from xdyna_jax.data.video import read_video

    cmds = readme_data_commands()
    assert [shlex.split(c)[3] for c in cmds] == ["extract", "score", "align", "score", "render"]
    scores, stdout = [], []
    for cmd in cmds:
        args = shlex.split(cmd.replace("$EX", str(examples_dir)))[3:]
        if args[0] in ("extract", "score"):
            args += ["--max-frames", "3"]
        out = cli(*args, cwd=tmp_path).stdout
        stdout.append(out)
        if args[0] == "score":
            scores.append(float(re.search(r"iou: ([0-9.]+)", out).group(1)))
    assert "static (stride 24 >= 3: frames far apart)" in stdout[0] and "static (an image)" in stdout[0]
    assert "variant: global only, driving neck" in stdout[2]
    assert (tmp_path / "skeletons" / "driving_1.mp4").is_file() and (tmp_path / "aligned_1.mp4").is_file()

    frames = read_video(examples_dir / "driving_1.mp4", stride=24, max_frames=3)
    authors = read_video(examples_dir / "pose_1.mp4", stride=24, max_frames=3)
    import cv2
    ref_img = cv2.imread(str(examples_dir / "reference_1.png"))[..., ::-1]
    driving, reference = extract_poses(frames, static=True), extract_poses(ref_img, static=True)
    aligned = align_poses(driving, reference, fit_frames=1, anchor="driving", bones=False)
    library = [float(np.mean([mask_iou(a, b) for a, b in zip(render_poses(p), authors)]))
               for p in (driving, aligned)]
    assert np.allclose(scores, library, atol=0.02), (scores, library)


def test_render_size_resizes_the_skeleton(tmp_path):
    """``render --size`` scales the keypoints with the canvas (it used to crop / pad the canvas only)."""
    from xdyna_jax.data.__main__ import main
    from xdyna_jax.data.files import load_poses
    from xdyna_jax.data.video import read_video

    npz = fake_poses_npz(tmp_path / "p.npz", h=48, w=64)
    assert main(["render", str(npz), "--out", str(tmp_path / "v"), "--size", "96", "128"]) == 0
    big = read_video(tmp_path / "v" / "p.mp4")
    assert big.shape[1:3] == (96, 128)
    ys, xs = np.nonzero(big[0].max(-1) > 40)
    body = load_poses(npz).body[0, :14]  # the drawn joints (no eyes, ears)
    assert xs.max() > 1.8 * np.nanmax(body[:, 0]) - 12 and ys.max() > 1.8 * np.nanmax(body[:, 1]) - 12
