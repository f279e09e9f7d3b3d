"""``porting verify``: a bundle's networks against the OFFICIAL PyTorch X-Dyna (bytedance/X-Dyna) reading the
official files the bundle was converted from, run by the command itself on the same seeded inputs. The reference
is the official code's output on the official files, never ours.

The official source is imported from a checkout: ``$XDYNA_OFFICIAL_REPO`` (animatediff/, configs/), else the
commit of tools/official_parity/README.md extracted from the bare mirror at ``/work/.mirror/bytedance+X-Dyna``.
Without either (a clean CI clone), or without torch/diffusers, the tests that run it skip with the reason.
The official set is tiny (configs/tiny.yaml) with random non-zero values, so that zero-initialised layers cannot
hide a difference.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import random_tree, tiny_models_config
from safetensors.numpy import save_file
from test_porting_official import _clip_json, _controlnet_json, _json, _torch, _unet_json, _vae_json

from xdyna_jax.models import xdyna
from xdyna_jax.porting.__main__ import main as porting_main
from xdyna_jax.porting.bundle import load_bundle, save_bundle
from xdyna_jax.porting.convert import params_to_torch
from xdyna_jax.porting.official import FACE_INIT, IP_ADAPTER as IP, POSE_INIT, SD
from xdyna_jax.porting.official_runner import OFFICIAL_COMMIT

MIRROR = Path("/work/.mirror/bytedance+X-Dyna/repo")
SMALL = ["--latent", "8", "8", "--frames", "1"]
# 16 IP tokens: the official IPAdapterAttention takes exactly 77 + 16; 8 motion heads: the checkout's x_dyna.yaml.
# Four levels, as SD1.5: the official from_pretrained_ip hard-codes the four block types.
OVERRIDES = {"unet.num_ip_tokens": 16, "resampler.num_queries": 16, "unet.motion_module_kwargs.num_attention_heads": 8}
CFG = tiny_models_config(**OVERRIDES)
ADAPTER_AND_MOTION = ("to_q_ff", "to_out_ff", "motion_modules")  # what the X-Dyna UNet checkpoint holds
VISION_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
               "patch_size", "projection_dim")
TEXT_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
             "max_position_embeddings", "eos_token_id")


@pytest.fixture(scope="module")
def official_repo(tmp_path_factory) -> Path:
    pytest.importorskip("torch", reason="verify runs the official PyTorch code (the test extra)")
    pytest.importorskip("diffusers", reason="verify runs the official PyTorch code (the test extra)")
    given = os.environ.get("XDYNA_OFFICIAL_REPO")
    if given:
        if not (Path(given) / "animatediff" / "models" / "unet.py").is_file():
            pytest.skip(f"XDYNA_OFFICIAL_REPO={given} is no X-Dyna checkout (no animatediff/models/unet.py)")
        return Path(given)
    if not MIRROR.is_dir() or shutil.which("git") is None:
        pytest.skip(f"official X-Dyna source not found: set XDYNA_OFFICIAL_REPO to a bytedance/X-Dyna checkout "
                    f"(commit {OFFICIAL_COMMIT[:7]}), or provide the mirror {MIRROR}")
    proc = subprocess.run(["git", "--git-dir", str(MIRROR), "archive", OFFICIAL_COMMIT, "animatediff", "configs"],
                          capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"{MIRROR}: cannot archive commit {OFFICIAL_COMMIT[:7]} ({proc.stderr.decode()[-200:]})")
    dest = tmp_path_factory.mktemp("xdyna_official")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def _official_folder(root: Path, params, official_repo: Path) -> Path:
    """The tiny set written as the official release lays it out (official formats, names and configs; the
    checkout's own configs/x_dyna.yaml beside pretrained_weights/). The UNet checkpoint holds the Dynamics-Adapter
    and motion modules over an init file whose values for those keys differ, as the release's files."""
    import torch

    states = {part: params_to_torch(params[part], getattr(CFG, part)) for part in params}
    pw = root / "pretrained_weights"
    unet = {k: v for k, v in states["unet"].items() if not k.endswith(".pe")}
    ckpt = {k: v for k, v in unet.items() if any(s in k for s in ADAPTER_AND_MOTION)}
    other = np.random.default_rng(4)
    init = {k: (other.standard_normal(v.shape).astype(v.dtype) if k in ckpt else v)
            for k, v in unet.items() if ".to_q_ff." not in k}
    _torch(ckpt, pw / "unet/unet-checkpoint-epoch-5.ckpt", wrap=True)
    _torch(init, pw / SD / "unet/animatediff_v15_v1_ipplus.pth")
    _json(pw / SD / "unet/config.json", _unet_json(CFG.unet))
    for part, name, init_dir in (("pose_controlnet", "controlnet/controlnet-checkpoint-epoch-5.ckpt", POSE_INIT),
                                 ("face_controlnet", "controlnet_face/controlnet-face-checkpoint-epoch-2.ckpt",
                                  FACE_INIT)):
        _torch(states[part], pw / name, wrap=True)
        _json(pw / init_dir / "config.json", _controlnet_json(getattr(CFG, part)))
    (pw / IP / "models").mkdir(parents=True)
    torch.save({"image_proj": {k: torch.from_numpy(v) for k, v in states["resampler"].items()}},
               pw / IP / "models/ip-adapter-plus_sd15.bin")
    for part, folder, name, cfg_json in (
            ("image_encoder", IP + "/models/image_encoder", "model.safetensors",
             _clip_json(CFG.image_encoder, "CLIPVisionModelWithProjection", "clip_vision_model", VISION_KEYS)),
            ("vae", SD + "/vae", "diffusion_pytorch_model.safetensors", _vae_json(CFG.vae)),
            ("text_encoder", SD + "/text_encoder", "model.safetensors",
             dict(_clip_json(CFG.text_encoder, "CLIPTextModel", "clip_text_model", TEXT_KEYS), projection_dim=768))):
        (pw / folder).mkdir(parents=True, exist_ok=True)
        save_file(states[part], str(pw / folder / name))
        _json(pw / folder / "config.json", cfg_json)
    (pw / SD / "tokenizer").mkdir()
    (pw / SD / "tokenizer/vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1}))
    (pw / SD / "tokenizer/merges.txt").write_text("#version: 0.2\n")
    (root / "configs").mkdir()
    shutil.copy(official_repo / "configs" / "x_dyna.yaml", root / "configs" / "x_dyna.yaml")
    return pw


@pytest.fixture(scope="module")
def official_bundle(official_repo, tmp_path_factory) -> Path:
    """A bundle converted by `porting bundle --official` from the tiny official folder."""
    root = tmp_path_factory.mktemp("release")
    pw = _official_folder(root, random_tree(xdyna.param_shapes(CFG), seed=5), official_repo)
    sets = [a for k, v in OVERRIDES.items() for a in ("--set", f"{k}={v}")]
    assert porting_main(["bundle", "--official", str(pw), "--out", str(root / "bundle"), "--preset", "tiny",
                         *sets]) == 0
    return root / "bundle"


def _rows(out: str) -> dict[str, list[str]]:
    """The table's rows: network -> [max abs, max rel, tolerance, pass, ...]."""
    lines = out[out.index("network "):].splitlines()[1:]
    return {s.split()[0]: s.split()[1:] for s in lines if s and not s.startswith(("FAILED", "all "))}


def _verify(bundle, official_repo, *extra):
    return porting_main(["verify", "--bundle", str(bundle), "--official-repo", str(official_repo), *SMALL, *extra])


def test_a_faithful_bundle_passes(official_repo, official_bundle, capsys):
    code = _verify(official_bundle, official_repo)
    out = capsys.readouterr().out
    assert code == 0, out
    rows = _rows(out)
    assert set(rows) == {"unet", "pose_controlnet", "face_controlnet", "resampler", "vae", "image_encoder",
                         "text_encoder", "denoise"}, out
    for net, (max_abs, max_rel, tol, ok) in rows.items():
        assert ok == "yes" and float(max_rel) <= 1e-4, (net, out)
    assert "all 8 network(s) within tolerance" in out
    assert "unet-checkpoint-epoch-5.ckpt over " in out and "animatediff_v15_v1_ipplus.pth" in out


def test_one_perturbed_tensor_fails_naming_its_network(official_repo, official_bundle, tmp_path, capsys):
    """The bundle's pose ControlNet differs from the official file in one tensor: its row and the composed
    denoise fail, exit 1; the other networks still pass. The official side runs in a subprocess (--python)."""
    b = load_bundle(official_bundle)
    bad = jax.tree.map(np.array, b.params)
    kernel = bad["pose_controlnet"]["conv_in"]["kernel"]  # every residual changes, so the composed denoise does
    kernel += 0.05 * np.random.default_rng(0).standard_normal(kernel.shape).astype(np.float32)
    sources = json.loads((official_bundle / "bundle.json").read_text())["sources"]
    save_bundle(tmp_path / "bad", bad, b.cfg, sources=sources)
    code = _verify(tmp_path / "bad", official_repo, "--python", sys.executable)
    out = capsys.readouterr().out
    assert code == 1, out
    rows = _rows(out)
    assert rows["pose_controlnet"][3] == "NO" and rows["denoise"][3] == "NO", out
    assert all(rows[n][3] == "yes" for n in rows if n not in ("pose_controlnet", "denoise")), out
    assert "FAILED: pose_controlnet, denoise out of tolerance" in out
    assert "official (subprocess)" in out


def _fake_checkout(tmp_path) -> Path:
    (tmp_path / "x" / "animatediff" / "models").mkdir(parents=True)
    (tmp_path / "x" / "animatediff" / "models" / "unet.py").write_text("")
    return tmp_path / "x"


def test_without_torch_says_which_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec("torch") is None: as if not installed
    code = porting_main(["verify", "--bundle", str(tmp_path), "--official-repo", str(_fake_checkout(tmp_path))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert "torch is not importable" in err[0] and "pip install -e '.[test]'" in err[0] and "--python" in err[0]


@pytest.mark.parametrize("args, expect", [
    (["--official-repo", "{tmp}/nowhere"], "--official-repo {tmp}/nowhere: not a bytedance/X-Dyna checkout"),
    (["--official-repo", "{fake}", "--python", "{tmp}/no-python"], "--python {tmp}/no-python: no such interpreter"),
    (["--official-repo", "{fake}", "--frames", "0"], "--frames"),
    (["--official-repo", "{fake}", "--latent", "8"], "--latent"),
    (["--official-repo", "{fake}", "--python", sys.executable], "not a bundle folder (no bundle.json"),
], ids=["not-a-checkout", "no-interpreter", "frames-out-of-range", "latent-one-value", "not-a-bundle"])
def test_bad_input_is_one_error_line(tmp_path, capsys, args, expect):
    fake = _fake_checkout(tmp_path)
    fill = lambda s: s.format(tmp=tmp_path, fake=fake)  # noqa: E731
    code = porting_main(["verify", "--bundle", str(tmp_path), *map(fill, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and fill(expect) in err[0], err


def test_a_moved_official_file_and_a_long_window_are_refused(tmp_path, capsys):
    params = random_tree(xdyna.param_shapes(CFG), seed=1)
    gone = tmp_path / "unet.ckpt"
    save_bundle(tmp_path / "bundle", {"unet": params["unet"]}, CFG, sources={"unet": str(gone)})
    fake = str(_fake_checkout(tmp_path))
    python = ["--python", sys.executable]  # no torch needed in this process to get this far
    code = porting_main(["verify", "--bundle", str(tmp_path / "bundle"), "--official-repo", fake, *python])
    err = capsys.readouterr().err
    assert code == 2 and f"bundle.json (sources): unet = {gone}: no such file" in err and "--official DIR" in err, err
    gone.write_bytes(b"x")
    code = porting_main(["verify", "--bundle", str(tmp_path / "bundle"), "--official-repo", fake, *python,
                         "--frames", "24"])
    err = capsys.readouterr().err
    assert code == 2 and "--frames 24: the window (1 + 24 frames) is longer than the motion module's position " \
                          "encoding" in err and "max_len = 24" in err, err
