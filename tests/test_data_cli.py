"""``python -m xdyna_jax.data`` in subprocesses: build (+ summary, errors), render / align / extract."""
from __future__ import annotations

import os
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


def cli(*args, code=0):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.data", *map(str, args)], cwd=ROOT, env=env,
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
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and "missing.npz: poses file not found" in r.stderr


def test_extract_real_frames(examples_dir, tmp_path):
    pytest.importorskip("mediapipe")
    r = cli("extract", examples_dir / "driving_1.mp4", tmp_path / "nope.mp4", "--out", tmp_path,
            "--max-frames", "2")
    assert "videos: 1" in r.stdout and "frames: 2" in r.stdout and "skipped files: 1" in r.stdout
    with np.load(tmp_path / "driving_1.npz") as z:
        assert z["body"].shape == (2, 18, 3) and int(z["height"]) == 896
