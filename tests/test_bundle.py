"""One bundle folder for the whole official checkpoint set: convert with one command, restore onto any
mesh, export back bit-exactly."""
from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from helpers import random_tree, tiny_models_config
from safetensors.numpy import load_file, save_file

from xdyna_jax.models import xdyna
from xdyna_jax.porting import PortingError
from xdyna_jax.porting.__main__ import main as porting_main
from xdyna_jax.porting.bundle import EXPORT_NAMES, load_bundle
from xdyna_jax.porting.convert import params_to_torch
from xdyna_jax.sharding import MeshConfig, make_mesh

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (fake) devices")
CFG = tiny_models_config()
ADAPTER_AND_MOTION = ("to_q_ff", "to_out_ff", "motion_modules")


def _official_set(tmp_path):
    """A tiny official checkpoint set (official key names and layouts) written as the files the
    official release ships: the X-Dyna UNet checkpoint (adapter + motion modules) over an init file
    without to_q_ff, both ControlNets, the Resampler, the VAE, the two CLIP encoders, a tokenizer."""
    params = random_tree(xdyna.param_shapes(CFG), seed=3)
    states = {part: params_to_torch(params[part], getattr(CFG, part)) for part in params}
    unet = states["unet"]
    ckpt = {k: v for k, v in unet.items() if any(s in k for s in ADAPTER_AND_MOTION) and not k.endswith(".pe")}
    other = np.random.default_rng(4)
    init = {k: (other.standard_normal(v.shape).astype(v.dtype) if k in ckpt else v)
            for k, v in unet.items() if ".to_q_ff." not in k}
    files = {}
    for name, state in [("unet", ckpt), ("unet_init", init)] + [(p, states[p]) for p in states if p != "unet"]:
        files[name] = tmp_path / f"{name}.safetensors"
        save_file(state, str(files[name]))
    tok = tmp_path / "tokenizer"
    tok.mkdir()
    (tok / "vocab.json").write_text(json.dumps({"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2}))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    return params, states, files, tok


def _bundle_args(files, tok, out):
    flag = {"unet": "--unet", "unet_init": "--unet-init", "pose_controlnet": "--pose-controlnet",
            "face_controlnet": "--face-controlnet", "resampler": "--ip-adapter", "vae": "--vae",
            "image_encoder": "--image-encoder", "text_encoder": "--text-encoder"}
    args = ["bundle", "--preset", "tiny", "--out", str(out), "--tokenizer", str(tok)]
    for name, path in files.items():
        args += [flag[name], str(path)]
    return args


@needs8
def test_official_set_to_bundle_to_mesh_and_back_bit_exact(tmp_path, capsys):
    params, states, files, tok = _official_set(tmp_path)
    out = tmp_path / "bundle"
    assert porting_main(_bundle_args(files, tok, out)) == 0
    assert "parts: face_controlnet, image_encoder, pose_controlnet, resampler, text_encoder, unet, vae" in \
        capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["bundle.json", "config.yaml", "params", "report.txt", "tokenizer"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]  # no temporary left

    # restore onto two different mesh shapes: same values, each with its own shardings
    for mesh_cfg in (MeshConfig(data=2, fsdp=4), MeshConfig(data=1, fsdp=8)):
        mesh = make_mesh(mesh_cfg)
        b = load_bundle(out, mesh)
        assert b.cfg == CFG and set(b.parts) == set(CFG.parts()) and b.tokenizer is not None
        want_sh = xdyna.param_shardings(CFG, mesh)
        for part in params:
            for got, want, sh in zip(jax.tree.leaves(b.params[part]), jax.tree.leaves(params[part]),
                                     jax.tree.leaves(want_sh[part])):
                assert got.sharding.is_equivalent_to(sh, got.ndim)
                np.testing.assert_array_equal(np.asarray(got), want)
        kernel = b.params["unet"]["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
        assert kernel.addressable_shards[0].data.size * mesh_cfg.fsdp == kernel.size

    # and back to the official names, bit for bit (the UNet = the init file overlaid by the checkpoint)
    exported = tmp_path / "exported"
    assert porting_main(["export-bundle", "--bundle", str(out), "--out", str(exported)]) == 0
    for part, state in states.items():
        got = load_file(str(exported / EXPORT_NAMES[part]))
        assert sorted(got) == sorted(state), part
        for k, v in state.items():
            assert got[k].dtype == v.dtype and np.array_equal(got[k], v), (part, k)


def test_bundle_parts_may_be_absent_and_errors_name_what_does_not_fit(tmp_path, capsys):
    params, states, files, tok = _official_set(tmp_path)
    out = tmp_path / "pose_only"
    pose_only = {k: v for k, v in files.items() if k not in ("face_controlnet", "vae")}
    assert porting_main(_bundle_args(pose_only, tok, out)) == 0
    b = load_bundle(out)
    assert "face_controlnet" not in b.parts and "vae" not in b.parts and b.cfg.face_controlnet is None
    with pytest.raises(PortingError, match="the bundle has no vae"):
        b.require("unet", "vae")

    # weights that do not fit the config: the param and both shapes are named
    with pytest.raises(PortingError, match=r"text_encoder/text_model/encoder/layers_0/mlp/fc1/kernel: the config "
                                           r"expects \(48, 64\), the bundle holds \(48, 96\)"):
        load_bundle(out, overrides=["text_encoder.intermediate_size=64"])
    with pytest.raises(PortingError, match="not a bundle folder"):
        load_bundle(tmp_path)
    meta = json.loads((out / "bundle.json").read_text())
    (out / "bundle.json").write_text(json.dumps(dict(meta, version=1)))  # an older layout is refused, not misread
    with pytest.raises(PortingError, match="bundle version 1, this code reads version 2"):
        load_bundle(out)
    (out / "bundle.json").write_text(json.dumps(meta))

    # a checkpoint that does not fit its part: the part's file and the key are named, nothing is written
    bad = tmp_path / "bad"
    capsys.readouterr()
    wrong = dict(files, pose_controlnet=files["vae"])
    assert porting_main(_bundle_args(wrong, tok, bad)) == 2
    err = capsys.readouterr().err
    assert "vae.safetensors" in err and "unknown key" in err
    assert not bad.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".bad")]
    # an existing bundle is not overwritten without --force
    assert porting_main(_bundle_args(pose_only, tok, out)) == 2
    assert "exists" in capsys.readouterr().err
