"""Bad-input tables of ``python -m xdyna_jax.porting`` and ``python -m xdyna_jax.data`` (``cli_table.py``),
and the shared error path itself (``xdyna_jax.cli``)."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_table import Case, case_ids, check
from xdyna_jax import cli

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- the shared module

def test_run_prints_one_line_for_expected_errors_and_keeps_bugs(capsys):
    def bad_input(argv):
        raise cli.UserError("x.npz: empty file\n  (details)")

    assert cli.run(bad_input, []) == 2
    assert capsys.readouterr().err == "error: x.npz: empty file; (details)\n"

    def missing(argv):
        open("/nonexistent/dir/file")

    assert cli.run(missing, []) == 2
    assert capsys.readouterr().err == "error: /nonexistent/dir/file: No such file or directory\n"

    def bug(argv):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        cli.run(bug, [])
    assert cli.run(lambda argv: None, []) == 0


def test_validators():
    import argparse

    assert cli.int_range(1)("3") == 3 and cli.float_range(0, lo_open=True)("0.5") == 0.5
    for parse, text in [(cli.int_range(1), "0"), (cli.int_range(1), "x"), (cli.int_range(0, 5), "6"),
                        (cli.float_range(0, lo_open=True), "0"), (cli.float_range(0), "nan"),
                        (cli.float_range(0), "inf"), (cli.even_int(), "3")]:
        with pytest.raises(argparse.ArgumentTypeError, match="expected an? "):
            parse(text)


def test_atomic_file_and_dir_leave_nothing_on_failure(tmp_path):
    target = tmp_path / "new" / "deeper" / "a.txt"
    with pytest.raises(RuntimeError, match="boom"), cli.atomic_file(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert not (tmp_path / "new").exists()  # the folders made for it are gone too
    with cli.atomic_file(target) as tmp:
        assert tmp.parent == target.parent and tmp.suffix == ".txt" and not target.exists()
        tmp.write_text("whole")
    assert target.read_text() == "whole" and sorted(os.listdir(target.parent)) == ["a.txt"]

    out = tmp_path / "d"
    with pytest.raises(RuntimeError), cli.atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
        raise RuntimeError
    assert sorted(os.listdir(tmp_path)) == ["new"]
    with cli.atomic_dir(out) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(cli.UserError, match="already exists"), cli.atomic_dir(out):
        pass
    with cli.atomic_dir(out, overwrite=True) as tmp:  # the old folder is replaced only when the new is whole
        assert (out / "x").is_file()
        (tmp / "y").write_text("2")
    assert sorted(os.listdir(out)) == ["y"] and sorted(os.listdir(tmp_path)) == ["d", "new"]


def test_check_output_path(tmp_path):
    (tmp_path / "f").write_text("")
    cli.check_output_path(tmp_path / "a" / "b" / "c.npz", suffixes=(".npz",))
    for kw, msg in [(dict(path=tmp_path / "f" / "x"), "is a file, not a directory"),
                    (dict(path=tmp_path / "f", kind="dir"), "exists and is not a directory"),
                    (dict(path=tmp_path, kind="file"), "is a directory"),
                    (dict(path=tmp_path / "f", overwrite=False), "already exists"),
                    (dict(path=tmp_path / "x.mp4", suffixes=(".npz",)), "ending in .npz")]:
        with pytest.raises(cli.UserError, match=msg):
            cli.check_output_path(**kw)


# ---------------------------------------------------------------- input files (recipes)

def _resampler_state(broken_shape=False):
    from official_weights import official_weights
    from xdyna_jax.models import ResamplerConfig
    from xdyna_jax.porting import official_entries

    sd = official_weights({e.key: e.shape for e in official_entries(ResamplerConfig.tiny())}, 0)
    if broken_shape:
        sd["latents"] = np.zeros((1, 5, 32), np.float32)
    return sd


def _safetensors(path, broken_shape=False):
    from xdyna_jax.porting import write_safetensors

    write_safetensors(_resampler_state(broken_shape), path)


def _torch(path, legacy=False, obj=None):
    import torch

    obj = obj if obj is not None else {k: torch.from_numpy(v) for k, v in _resampler_state().items()}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)


def _cut(make, keep=0.5):
    def recipe(path):
        make(path)
        data = path.read_bytes()
        path.write_bytes(data[:int(len(data) * keep)] if isinstance(keep, float) else data[:keep])
    return recipe


def _png(path):
    import cv2

    path.write_bytes(cv2.imencode(".png", np.full((8, 8, 3), 90, np.uint8))[1].tobytes())


class _NotATensor:
    pass


def _evil(path):
    with open(path, "wb") as f:
        pickle.dump({"x": _NotATensor()}, f, protocol=2)


def _converted(path):
    from xdyna_jax.models import ResamplerConfig
    from xdyna_jax.porting import load_resampler, save_converted

    _safetensors(path.parent / "for_conv.safetensors")
    params, cfg = load_resampler(path.parent / "for_conv.safetensors", ResamplerConfig.tiny())
    save_converted(path, params, cfg)


def _damaged_conv(path):
    _converted(path)
    meta = path / "params" / "_METADATA"
    meta.write_bytes(meta.read_bytes()[:40])


def _text(text):
    return lambda path: path.write_text(text)


def _mkdir(path):
    path.mkdir()


COMMON = {
    "empty.safetensors": _text(""), "empty.ckpt": _text(""), "empty.yaml": _text(""), "empty.npz": _text(""),
    "empty.mp4": _text(""), "empty.png": _text(""), "notes.txt": _text("hello\n"),
    "notes.mp4": _text("hello, not a video\n"), "notes.png": _text("hello, not an image\n"),
    "image.png": _png, "image.ckpt": _png, "image.safetensors": _png, "trunc.png": _cut(_png, 30),
    "afile": _text("in the way\n"), "emptydir": _mkdir,
    "fulldir": lambda p: (p.mkdir(), (p / "keep.txt").write_text("mine\n")),
}

PORTING_FILES = {
    **COMMON,
    "good.safetensors": _safetensors, "good.ckpt": _torch, "good.pth": lambda p: _torch(p, legacy=True),
    "shape.safetensors": lambda p: _safetensors(p, broken_shape=True),
    "trunc.safetensors": _cut(_safetensors, 0.9), "trunchead.safetensors": _cut(_safetensors, 20),
    "trunc.ckpt": _cut(_torch), "trunc.pth": _cut(lambda p: _torch(p, legacy=True)),
    "st.ckpt": _safetensors, "ckpt.safetensors": _torch, "notes.bin": _text("plain text\n"),
    "arrays.pth": lambda p: np.savez(open(p, "wb"), a=np.zeros(3)), "arrays.npz": lambda p: np.savez(p, a=1),
    "evil.ckpt": _evil, "list.ckpt": lambda p: _torch(p, obj=[1, 2]),
    "bad.yaml": _text("a: [1, 2\nb: {\n"), "list.yaml": _text("- 1\n- 2\n"), "bad.json": _text("{not json"),
    "list.json": _text("[1, 2]\n"), "notes.json": _text("hello"),
    "conv": _converted, "damaged_conv": _damaged_conv,
    "noconfig": lambda p: (p.mkdir(), (p / "params").mkdir()),
    "junkparams": lambda p: (p.mkdir(), (p / "params").mkdir(), (p / "config.yaml").write_text("{}\n")),
}

CONVERT = ("convert", "--kind", "resampler", "--preset", "tiny", "--out", "{out}")
CONV_GOOD = CONVERT + ("--checkpoint", "{good.safetensors}")
CN_GOOD = ("convert", "--kind", "controlnet", "--checkpoint", "{good.safetensors}", "--out", "{out}")


def _convert_rows():
    ck = lambda name: CONVERT + ("--checkpoint", "{%s}" % name)  # noqa: E731
    return [
        Case("convert-checkpoint-missing", ck("missing.safetensors"), "missing", "no such file or folder"),
        Case("convert-checkpoint-empty-st", ck("empty.safetensors"), "empty", "empty file, 0 bytes"),
        Case("convert-checkpoint-empty-ckpt", ck("empty.ckpt"), "empty", "empty file, 0 bytes"),
        Case("convert-checkpoint-dir", ck("emptydir"), "wrong-format", "is a directory (expected a checkpoint"),
        Case("convert-controlnet-dir", ("convert", "--kind", "controlnet", "--checkpoint", "{emptydir}", "--out",
                                        "{out}"), "wrong-format", "no diffusion_pytorch_model"),
        Case("convert-checkpoint-trunc-st", ck("trunc.safetensors"), "truncated", "damaged or truncated"),
        Case("convert-checkpoint-trunc-st-header", ck("trunchead.safetensors"), "truncated",
             "truncated safetensors file"),
        Case("convert-checkpoint-trunc-ckpt", ck("trunc.ckpt"), "truncated", "damaged or truncated",
             absent=("If you trust",)),
        Case("convert-checkpoint-trunc-legacy", ck("trunc.pth"), "truncated", "damaged or truncated"),
        Case("convert-checkpoint-png-as-ckpt", ck("image.ckpt"), "wrong-format",
             "not a torch checkpoint: it looks like a PNG image"),
        Case("convert-checkpoint-png-as-st", ck("image.safetensors"), "wrong-format", "it looks like a PNG image"),
        Case("convert-checkpoint-st-as-ckpt", ck("st.ckpt"), "wrong-format",
             "it looks like a safetensors file (give it a .safetensors name)"),
        Case("convert-checkpoint-ckpt-as-st", ck("ckpt.safetensors"), "wrong-format",
             "it looks like a torch checkpoint (zip format)"),
        Case("convert-checkpoint-text-as-bin", ck("notes.bin"), "wrong-format", "it looks like a text file"),
        Case("convert-checkpoint-npz-as-pth", ck("arrays.pth"), "wrong-format", "it looks like a numpy .npz"),
        Case("convert-checkpoint-npz", ck("arrays.npz"), "wrong-format", "unknown checkpoint format '.npz'"),
        Case("convert-checkpoint-objects", ck("evil.ckpt"), "wrong-format",
             "torch.load(weights_only=True) failed: the file holds Python objects", absent=("trust",)),
        Case("convert-checkpoint-list", ck("list.ckpt"), "wrong-format", "expected a dict of tensors, found list"),
        Case("convert-checkpoint-shape", ck("shape.safetensors"), "wrong-shape", "latents: expected shape"),
        Case("convert-kind-mismatch", ("convert", "--kind", "controlnet", "--preset", "tiny", "--checkpoint",
                                       "{good.safetensors}", "--out", "{out}"), "wrong-shape", "latents"),
        Case("convert-config-missing", CONV_GOOD[:3] + CONV_GOOD[5:] + ("--config", "{nope.yaml}"), "missing",
             "--config"),
        Case("convert-config-empty", CONV_GOOD[:3] + CONV_GOOD[5:] + ("--config", "{empty.yaml}"), "empty",
             "empty file"),
        Case("convert-config-bad-yaml", CONV_GOOD[:3] + CONV_GOOD[5:] + ("--config", "{bad.yaml}"), "wrong-format",
             "not valid YAML at line"),
        Case("convert-config-list-yaml", CONV_GOOD[:3] + CONV_GOOD[5:] + ("--config", "{list.yaml}"),
             "wrong-shape", "expected a mapping at the top level"),
        Case("convert-config-png", CONV_GOOD[:3] + CONV_GOOD[5:] + ("--config", "{image.png}"), "wrong-format",
             "cannot read config file"),
        Case("convert-config-json-for-resampler", CONV_GOOD[:3] + CONV_GOOD[5:] + ("--config", "{list.json}"),
             "wrong-format", "a resampler config cannot be read from a diffusers config.json"),
        Case("convert-config-bad-json", CN_GOOD + ("--config", "{bad.json}"), "wrong-format",
             "cannot read as JSON"),
        Case("convert-config-list-json", CN_GOOD + ("--config", "{list.json}"), "wrong-shape",
             "expected a JSON object"),
        Case("convert-xdyna-yaml-list", ("convert", "--kind", "unet", "--config", "{list.json}", "--xdyna-yaml",
                                         "{list.yaml}", "--checkpoint", "{good.safetensors}", "--out", "{out}"),
             "wrong-shape", "expected a mapping (x_dyna.yaml"),
        Case("convert-xdyna-yaml-without-json", CONV_GOOD[:3] + CONV_GOOD[5:] + ("--xdyna-yaml", "{list.yaml}"),
             "usage", "--xdyna-yaml goes with a diffusers config.json"),
        Case("convert-set-unknown", CONV_GOOD + ("--set", "nope=1"), "usage", "unknown key(s) ['nope']"),
        Case("convert-set-type", CONV_GOOD + ("--set", "depth=two"), "out-of-range", "expected an integer"),
        Case("convert-set-form", CONV_GOOD + ("--set", "depth"), "usage", "expected key=value"),
        Case("convert-seed-negative", CONV_GOOD + ("--seed", "-1"), "out-of-range",
             "argument --seed: expected an integer >= 0"),
        Case("convert-seed-text", CONV_GOOD + ("--seed", "x"), "out-of-range", "argument --seed"),
        Case("convert-kind-bogus", ("convert", "--kind", "gan", "--out", "{out}"), "usage", "invalid choice"),
        Case("convert-out-missing-arg", ("convert", "--kind", "resampler"), "usage", "required: --out"),
        Case("convert-out-is-file", CONV_GOOD[:5] + ("--checkpoint", "{good.safetensors}", "--out", "{afile}"),
             "unwritable", "exists and is not a directory"),
        Case("convert-out-under-file", CONV_GOOD[:5] + ("--checkpoint", "{good.safetensors}", "--out",
                                                          "{afile}/sub"), "unwritable", "is a file, not a directory"),
        Case("convert-out-exists", CONV_GOOD[:5] + ("--checkpoint", "{good.safetensors}", "--out", "{fulldir}"),
             "unwritable", "already exists (use --force"),
        Case("convert-nothing", CONVERT, "missing", "nothing to convert"),
        Case("convert-init-without-checkpoint", CONVERT + ("--init", "{good.ckpt}"), "usage", "--init is for"),
        Case("convert-sd15-with-checkpoint", ("convert", "--kind", "unet", "--preset", "tiny", "--sd15",
                                              "{good.safetensors}", "--checkpoint", "{good.ckpt}", "--out", "{out}"),
             "usage", "--sd15 takes no"),
    ]


def _export_rows():
    ex = lambda params, out="{out.safetensors}": ("export", "--kind", "resampler", "--params", params,  # noqa: E731
                                                  "--out", out)
    return [
        Case("export-params-missing", ex("{nope}"), "missing", "--params"),
        Case("export-params-file", ex("{good.safetensors}"), "wrong-format", "not a directory"),
        Case("export-params-no-config", ex("{noconfig}"), "wrong-format", "no config.yaml"),
        Case("export-params-not-orbax", ex("{junkparams}"), "wrong-format", "not an Orbax checkpoint"),
        Case("export-params-damaged", ex("{damaged_conv}"), "truncated", "damaged Orbax checkpoint"),
        Case("export-kind-mismatch", ("export", "--kind", "controlnet", "--params", "{conv}", "--out",
                                      "{out.safetensors}"), "wrong-shape", "unknown key(s)"),
        Case("export-out-suffix", ex("{conv}", "{out.npz}"), "usage", "ending in .safetensors"),
        Case("export-out-dir", ex("{conv}", "{emptydir}"), "unwritable", "ending in .safetensors"),
        Case("export-out-under-file", ex("{conv}", "{afile}/x.safetensors"), "unwritable", "is a file, not a"),
        Case("export-dtype", ex("{conv}") + ("--dtype", "int8"), "usage", "invalid choice"),
    ]


def _inspect_rows():
    return [
        Case("inspect-missing", ("inspect", "{nope.safetensors}"), "missing", "no such file"),
        Case("inspect-empty", ("inspect", "{empty.safetensors}"), "empty", "it looks like an empty file"),
        Case("inspect-truncated", ("inspect", "{trunc.ckpt}"), "truncated", "damaged or truncated"),
        Case("inspect-wrong-format", ("inspect", "{image.safetensors}"), "wrong-format", "looks like a PNG image"),
        Case("inspect-dir", ("inspect", "{emptydir}"), "wrong-format", "no diffusion_pytorch_model"),
        Case("inspect-list", ("inspect", "{list.ckpt}"), "wrong-shape", "holds a list, not a dict of tensors"),
        Case("inspect-objects", ("inspect", "{evil.ckpt}"), "wrong-format", "weights_only=True) failed"),
    ]


PORTING_TABLE = _convert_rows() + _export_rows() + _inspect_rows()


@pytest.mark.parametrize("case", PORTING_TABLE, ids=case_ids(PORTING_TABLE))
def test_porting_bad_inputs(case, tmp_path, capsys):
    from xdyna_jax.porting.__main__ import main

    check(main, case, tmp_path, PORTING_FILES, capsys)


def test_every_kind_of_bad_value_is_in_the_porting_table():
    assert {c.kind for c in PORTING_TABLE} >= {"missing", "empty", "truncated", "wrong-format", "wrong-shape",
                                               "out-of-range", "unwritable", "usage"}


def test_convert_into_an_empty_folder_and_replace_with_force(tmp_path, capsys):
    from xdyna_jax.porting import load_converted
    from xdyna_jax.porting.__main__ import main

    _safetensors(tmp_path / "r.safetensors")
    (tmp_path / "out").mkdir()
    argv = [*CONVERT[:5], "--checkpoint", str(tmp_path / "r.safetensors"), "--out", str(tmp_path / "out")]
    assert main(argv) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["config.yaml", "params"]
    assert main(argv) == 2 and "already exists (use --force" in capsys.readouterr().err
    assert main(argv + ["--force"]) == 0 and sorted(os.listdir(tmp_path)) == ["out", "r.safetensors"]
    params, _ = load_converted(tmp_path / "out", "resampler")
    assert params["latents"].shape == (1, 4, 32)


@pytest.mark.parametrize("module", ["xdyna_jax.porting", "xdyna_jax.data"])
def test_entry_points_use_the_error_path(module, tmp_path):
    """As a user runs them: one line, exit code 2, no traceback."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    args = ["inspect", tmp_path / "x.safetensors"] if module.endswith("porting") else \
        ["render", tmp_path / "x.npz", "--out", tmp_path / "o"]
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- python -m xdyna_jax.data

def _poses(path, t=3, h=48, w=64, conf=1.0, **replace):
    rng = np.random.default_rng(0)
    body = np.concatenate([rng.uniform([8, 8], [w - 8, h - 8], (t, 18, 2)), np.full((t, 18, 1), conf)], -1)
    hands, face = np.zeros((t, 2, 21, 3)), np.zeros((t, 468, 3))
    hands[..., :2], face[..., :2] = np.nan, np.nan
    arrays = dict(body=body.astype(np.float32), hands=hands.astype(np.float32), face=face.astype(np.float32),
                  height=h, width=w)
    arrays.update(replace)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _video(path, n_frames=4, height=48, width=64):
    from data_fakes import make_video

    make_video(path, n_frames=n_frames, height=height, width=width)


def _folder(videos=0, broken=0):
    def recipe(path):
        path.mkdir()
        for i in range(videos):
            _video(path / f"v{i}.mp4", n_frames=3)
        for i in range(broken):
            (path / f"broken{i}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a real video" * 4)
    return recipe


def failing_conditions(frames):
    """A conditions_fn that fails on every video (``--conditions test_cli_errors:failing_conditions``)."""
    raise RuntimeError("pose model crashed")


DATA_FILES = {
    **COMMON,
    "good.mp4": _video, "sub/good.mp4": _video, "big.mp4": lambda p: _video(p, height=64, width=96),
    "trunc.mp4": _cut(_video, 0.5),
    "good.npz": _poses, "sub/good.npz": _poses, "ref.npz": lambda p: _poses(p, t=1),
    "trunc.npz": _cut(_poses, 0.5), "video.npz": lambda p: (_video(p.with_suffix(".mp4")), p.with_suffix(".mp4").rename(p)), "notes.npz": _text("hello\n"),
    "nokeys.npz": lambda p: _poses(p, face=None, width=None),
    "shape.npz": lambda p: _poses(p, body=np.zeros((3, 17, 3), np.float32)),
    "objects.npz": lambda p: _poses(p, body=np.array([{"a": 1}] * 3, dtype=object)),
    "height0.npz": lambda p: _poses(p, height=0), "odd.npz": lambda p: _poses(p, w=63),
    "nanconf.npz": lambda p: _poses(p, conf=np.nan), "nobody.npz": lambda p: _poses(p, conf=0.0),
    "human": _folder(videos=1), "broken_human": _folder(broken=2),
    "prebuilt": lambda p: (p / "xdyna_videos" / "1.0.0").mkdir(parents=True),
    "bad.yaml": _text("a: [1, 2\n"), "list.yaml": _text("- 1\n"),
}


def _extract_rows():
    ex = lambda *inputs: ("extract", *inputs, "--out", "{out}")  # noqa: E731
    return [
        Case("extract-input-missing", ex("{nope.mp4}"), "missing",
             "nope.mp4: no such file (expected a video)"),
        Case("extract-input-empty", ex("{empty.mp4}"), "empty", "empty file, 0 bytes"),
        Case("extract-input-text", ex("{notes.mp4}"), "wrong-format", "not a video, it looks like a text file"),
        Case("extract-input-truncated", ex("{trunc.mp4}"), "truncated", "damaged or truncated video"),
        Case("extract-image-text", ex("{notes.png}"), "wrong-format", "not an image, it looks like a text file"),
        Case("extract-image-truncated", ex("{trunc.png}"), "truncated", "damaged or truncated image"),
        Case("extract-image-empty", ex("{empty.png}"), "empty", "empty file, 0 bytes"),
        Case("extract-mixed", ex("{good.mp4}", "{notes.mp4}"), "mixed", "skipped files: 1", code=0,
             leaves=("out/good.npz",)),
        Case("extract-duplicate-stems", ex("{good.mp4}", "{sub/good.mp4}"), "usage", "would both write"),
        Case("extract-stride-0", ex("{good.mp4}") + ("--stride", "0"), "out-of-range",
             "argument --stride: expected an integer >= 1, got '0'"),
        Case("extract-max-frames-0", ex("{good.mp4}") + ("--max-frames", "0"), "out-of-range",
             "argument --max-frames: expected an integer >= 1"),
        Case("extract-max-frames-text", ex("{good.mp4}") + ("--max-frames", "all"), "out-of-range",
             "argument --max-frames"),
        Case("extract-smooth-negative", ex("{good.mp4}") + ("--smooth", "-2"), "out-of-range",
             "argument --smooth: expected an integer >= 0"),
        Case("extract-static-and-track", ex("{good.mp4}") + ("--static", "--track"), "usage", "not allowed with"),
        Case("extract-out-file", ("extract", "{good.mp4}", "--out", "{afile}"), "unwritable",
             "exists and is not a directory"),
        Case("extract-out-under-file", ("extract", "{good.mp4}", "--out", "{afile}/x"), "unwritable",
             "is a file, not a directory"),
    ]


def _render_rows():
    rd = lambda *inputs: ("render", *inputs, "--out", "{out}")  # noqa: E731
    return [
        Case("render-input-missing", rd("{nope.npz}"), "missing", "no such file (expected a poses .npz"),
        Case("render-input-empty", rd("{empty.npz}"), "empty", "empty file, 0 bytes"),
        Case("render-input-truncated", rd("{trunc.npz}"), "truncated", "damaged or truncated zip"),
        Case("render-input-video", rd("{video.npz}"), "wrong-format", "not a poses .npz, it looks like an MP4"),
        Case("render-input-text", rd("{notes.npz}"), "wrong-format", "it looks like a text file"),
        Case("render-input-keys", rd("{nokeys.npz}"), "wrong-shape", "poses .npz without face, width"),
        Case("render-input-shape", rd("{shape.npz}"), "wrong-shape", "body has shape (3, 17, 3), expected (T, 18, 3)"),
        Case("render-input-objects", rd("{objects.npz}"), "wrong-format", "non-numeric arrays"),
        Case("render-input-height", rd("{height0.npz}"), "out-of-range", "height must be a positive integer"),
        Case("render-input-odd-size", rd("{odd.npz}"), "wrong-shape", "odd side (H.264 needs even sides; give --size"),
        Case("render-input-nan-conf", rd("{nanconf.npz}"), "out-of-range", "confidences (last column) must be finite"),
        Case("render-mixed", rd("{good.npz}", "{notes.npz}"), "mixed", "skipped files: 1", code=0,
             leaves=("out/good.mp4",)),
        Case("render-duplicate-stems", rd("{good.npz}", "{sub/good.npz}"), "usage", "would both write"),
        Case("render-fps-0", rd("{good.npz}") + ("--fps", "0"), "out-of-range",
             "argument --fps: expected a finite number > 0 and <= 1000"),
        Case("render-fps-nan", rd("{good.npz}") + ("--fps", "nan"), "out-of-range", "argument --fps"),
        Case("render-fps-inf", rd("{good.npz}") + ("--fps", "inf"), "out-of-range", "argument --fps"),
        Case("render-size-odd", rd("{good.npz}") + ("--size", "47", "64"), "out-of-range", "even integer"),
        Case("render-size-0", rd("{good.npz}") + ("--size", "0", "64"), "out-of-range", "argument --size"),
        Case("render-size-one-value", rd("{good.npz}") + ("--size", "48"), "usage", "expected 2 arguments"),
        Case("render-out-file", ("render", "{good.npz}", "--out", "{afile}"), "unwritable", "not a directory"),
        Case("render-out-under-file", ("render", "{good.npz}", "--out", "{afile}/v"), "unwritable",
             "is a file, not a directory"),
    ]


def _align_rows():
    al = lambda drv="{good.npz}", ref="{ref.npz}", out="{out.npz}": ("align", "--driving", drv,  # noqa: E731
                                                                      "--reference", ref, "--out", out)
    return [
        Case("align-driving-missing", al(drv="{nope.npz}"), "missing", "--driving"),
        Case("align-reference-empty", al(ref="{empty.npz}"), "empty", "--reference"),
        Case("align-reference-truncated", al(ref="{trunc.npz}"), "truncated", "damaged or truncated zip"),
        Case("align-reference-image-text", al(ref="{notes.png}"), "wrong-format", "not an image"),
        Case("align-reference-video-as-npz", al(ref="{video.npz}"), "wrong-format", "it looks like an MP4"),
        Case("align-reference-no-body", al(ref="{nobody.npz}"), "wrong-shape", "--reference"),
        Case("align-driving-no-body", al(drv="{nobody.npz}"), "wrong-shape", "no body found in any frame"),
        Case("align-fit-frames-0", al() + ("--fit-frames", "0"), "out-of-range", "argument --fit-frames"),
        Case("align-anchor", al() + ("--anchor", "middle"), "usage", "invalid choice"),
        Case("align-out-suffix", al(out="{out.mp4}"), "usage", "ending in .npz"),
        Case("align-out-dir", al(out="{emptydir}"), "unwritable", "ending in .npz"),
        Case("align-out-under-file", al(out="{afile}/a.npz"), "unwritable", "is a file, not a directory"),
        Case("align-render-suffix", al() + ("--render", "{out.avi}"), "usage", "--render"),
        Case("align-render-under-file", al() + ("--render", "{afile}/a.mp4"), "unwritable",
             "is a file, not a directory"),
        Case("align-fps", al() + ("--render", "{out.mp4}", "--fps", "-1"), "out-of-range", "argument --fps"),
    ]


def _score_rows():
    return [
        Case("score-skeleton-missing", ("score", "{nope.npz}", "--against", "{good.mp4}"), "missing", "no such file"),
        Case("score-against-missing", ("score", "{good.npz}", "--against", "{nope.mp4}"), "missing",
             "nope.mp4: no such file (expected a video)"),
        Case("score-against-text", ("score", "{good.npz}", "--against", "{notes.mp4}"), "wrong-format",
             "not a video"),
        Case("score-against-size", ("score", "{good.npz}", "--against", "{big.mp4}"), "wrong-shape",
             "expected the same size"),
        Case("score-stride-0", ("score", "{good.npz}", "--against", "{good.mp4}", "--stride", "0"), "out-of-range",
             "argument --stride"),
    ]


def _build_rows():
    bd = lambda *a, human="{human}": ("build", "--human", human, "--out", "{out}",  # noqa: E731
                                      "--conditions", "data_fakes:fake_conditions", *a)
    return [
        Case("build-human-missing", bd(human="{nope}"), "missing", "--human"),
        Case("build-human-empty", bd(human="{emptydir}"), "empty", "no video files"),
        Case("build-human-all-broken", bd(human="{broken_human}"), "truncated",
             "none of the human videos could be used"),
        Case("build-no-folders", ("build", "--out", "{out}"), "usage", "give --human, --scene or both"),
        Case("build-out-file", ("build", "--human", "{human}", "--out", "{afile}"), "unwritable", "not a directory"),
        Case("build-out-under-file", ("build", "--human", "{human}", "--out", "{afile}/ds"), "unwritable",
             "is a file, not a directory"),
        Case("build-exists", ("build", "--human", "{human}", "--out", "{prebuilt}"), "unwritable", "already exists"),
        Case("build-config-missing", bd("--config", "{nope.yaml}"), "missing", "cannot read config file"),
        Case("build-config-bad-yaml", bd("--config", "{bad.yaml}"), "wrong-format", "not valid YAML at line"),
        Case("build-config-list", bd("--config", "{list.yaml}"), "wrong-shape", "expected a mapping"),
        Case("build-set-codec", bd("--set", "frame_codec=gif"), "out-of-range", "frame_codec"),
        Case("build-set-max-frames", bd("--set", "max_frames=0"), "out-of-range", "max_frames must be >= 1"),
        Case("build-set-unknown", bd("--set", "colour=red"), "usage", "unknown key(s) ['colour']"),
        Case("build-conditions-import", bd("--conditions", "nope:f"), "missing", "cannot import"),
        Case("build-conditions-form", bd("--conditions", "nope"), "usage", "expected MODULE:FUNCTION"),
        Case("build-conditions-fail", bd("--conditions", "test_cli_errors:failing_conditions"), "mixed",
             "none of the human videos could be used"),
        Case("build-encode-batch-0", bd("--encode-batch", "0"), "out-of-range", "argument --encode-batch"),
        Case("build-vae-missing", bd("--vae", "{nope}"), "missing", "--vae"),
        Case("build-vae-empty-dir", bd("--vae", "{emptydir}"), "wrong-format", "no diffusion_pytorch_model"),
        Case("build-image-encoder-png", bd("--image-encoder", "{image.png}"), "wrong-format", "unknown checkpoint"),
    ]


DATA_TABLE = _extract_rows() + _render_rows() + _align_rows() + _score_rows() + _build_rows()
NEEDS_MEDIAPIPE = {"extract-mixed"}


@pytest.mark.parametrize("case", DATA_TABLE, ids=case_ids(DATA_TABLE))
def test_data_bad_inputs(case, tmp_path, capsys):
    for mod in ("av", "cv2", "tensorflow_datasets", "array_record") + (("mediapipe",) if case.id in NEEDS_MEDIAPIPE
                                                                     else ()):
        pytest.importorskip(mod)
    from xdyna_jax.data.__main__ import main

    check(main, case, tmp_path, DATA_FILES, capsys)


def test_every_kind_of_bad_value_is_in_the_data_table():
    assert {c.kind for c in DATA_TABLE} == set(__import__("cli_table").KINDS)
