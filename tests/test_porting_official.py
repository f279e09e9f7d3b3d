"""The official pretrained_weights/ folder (and its Hugging Face Hub copy) in one argument: every part found,
the folder's own configs the truth, missing files and disagreeing settings named."""
from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import yaml
from helpers import CONFIGS
from safetensors.numpy import load_file
from test_bundle import CFG, _bundle_args, _official_set

from xdyna_jax import config as config_lib
from xdyna_jax.porting import PortingError, official
from xdyna_jax.porting.__main__ import main as porting_main
from xdyna_jax.porting.bundle import load_bundle
from xdyna_jax.porting.official_config import models_config

SD, IP = official.SD, official.IP_ADAPTER
HEADS = ["--set", f"resampler.heads={CFG.resampler.heads}", "--set", f"resampler.dim_head={CFG.resampler.dim_head}"]


def _json(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _torch(state, path, wrap=False):
    """A torch pickle as the official release writes it (training checkpoints: state_dict + module. prefix)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in t.items()}} if wrap else t, path)


def _unet_json(u):  # SD1.5's unet/config.json, at CFG's sizes
    return {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0", "act_fn": "silu",
            "attention_head_dim": list(u.attention_head_dim), "block_out_channels": list(u.block_out_channels),
            "center_input_sample": False, "cross_attention_dim": u.cross_attention_dim,
            "down_block_types": [t.replace("3D", "2D") for t in u.down_block_types], "downsample_padding": 1,
            "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": u.layers_per_block,
            "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": u.norm_num_groups, "out_channels": 4,
            "sample_size": 64, "up_block_types": [t.replace("3D", "2D") for t in u.up_block_types]}


def _xdyna_yaml(u):  # configs/x_dyna.yaml as published, at CFG's motion-module head count
    m = u.motion_module_kwargs
    return {"unet_additional_kwargs": {
        "unet_use_cross_frame_attention": "mixed_cross", "unet_use_temporal_attention": False,
        "use_motion_module": True, "unet_use_ipadapter": True, "use_reference_image_cfg": False, "cfg_ratio": 0.0,
        "motion_module_resolutions": [1, 2, 4, 8], "motion_module_mid_block": False,
        "motion_module_decoder_only": False, "motion_module_type": "Vanilla",
        "motion_module_kwargs": {"num_attention_heads": m.num_attention_heads, "num_transformer_block": 1,
                                 "attention_block_types": ["Temporal_Self", "Temporal_Self"],
                                 "temporal_position_encoding": True, "temporal_position_encoding_max_len": 24,
                                 "temporal_attention_dim_div": 1, "zero_initialize": True, "cross_id": True}},
        "noise_scheduler_kwargs": {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                                   "beta_schedule": "linear", "steps_offset": 1, "clip_sample": False}}


def _controlnet_json(c):
    return {"_class_name": "ControlNetModel", "act_fn": "silu", "attention_head_dim": list(c.attention_head_dim),
            "block_out_channels": list(c.block_out_channels), "conditioning_channels": c.conditioning_channels,
            "conditioning_embedding_out_channels": list(c.conditioning_embedding_out_channels),
            "cross_attention_dim": c.cross_attention_dim, "down_block_types": list(c.down_block_types),
            "layers_per_block": c.layers_per_block, "norm_num_groups": c.norm_num_groups, "upcast_attention": False}


def _vae_json(v):
    n = len(v.block_out_channels)
    return {"_class_name": "AutoencoderKL", "act_fn": "silu", "in_channels": 3, "out_channels": 3,
            "latent_channels": v.latent_channels, "block_out_channels": list(v.block_out_channels),
            "layers_per_block": v.layers_per_block, "norm_num_groups": v.norm_num_groups, "sample_size": 512,
            "down_block_types": ["DownEncoderBlock2D"] * n, "up_block_types": ["UpDecoderBlock2D"] * n,
            "scaling_factor": v.scaling_factor}


def _clip_json(c, arch, model_type, keys):
    return {"architectures": [arch], "model_type": model_type, "layer_norm_eps": c.layer_norm_eps,
            "hidden_act": c.hidden_act, **{k: getattr(c, k) for k in keys}}


def _official_folder(tmp_path):
    """The tiny official set of test_bundle, laid out as bytedance/X-Dyna's README (official file formats and
    names, each part's config.json, x_dyna.yaml in the repository's configs/ beside pretrained_weights/)."""
    params, states, files, tok = _official_set(tmp_path)
    root = tmp_path / "X-Dyna"
    pw = root / "pretrained_weights"
    for folder in ("unet", "controlnet", "controlnet_face"):  # the official repository's placeholders
        (pw / folder).mkdir(parents=True)
        (pw / folder / f"Put {folder} here.txt").write_text("")
    _torch(load_file(str(files["unet"])), pw / "unet/unet-checkpoint-epoch-5.ckpt", wrap=True)
    _torch(load_file(str(files["unet_init"])), pw / SD / "unet/animatediff_v15_v1_ipplus.pth")
    _json(pw / SD / "unet/config.json", _unet_json(CFG.unet))
    _torch(states["pose_controlnet"], pw / "controlnet/controlnet-checkpoint-epoch-5.ckpt", wrap=True)
    _json(pw / official.POSE_INIT / "config.json", _controlnet_json(CFG.pose_controlnet))
    _torch(states["face_controlnet"], pw / "controlnet_face/controlnet-face-checkpoint-epoch-2.ckpt", wrap=True)
    _json(pw / official.FACE_INIT / "config.json", _controlnet_json(CFG.face_controlnet))
    import torch

    bin_ = pw / IP / "models/ip-adapter-plus_sd15.bin"
    (pw / IP / "models/image_encoder").mkdir(parents=True)
    torch.save({"image_proj": {k: torch.from_numpy(v) for k, v in states["resampler"].items()},
                "ip_adapter": {"1.to_k_ip.weight": torch.zeros(2, 2)}}, bin_)
    enc = pw / IP / "models/image_encoder"
    shutil.copy(files["image_encoder"], enc / "model.safetensors")
    _json(enc / "config.json", _clip_json(CFG.image_encoder, "CLIPVisionModelWithProjection", "clip_vision_model",
                                          ("hidden_size", "intermediate_size", "num_hidden_layers",
                                           "num_attention_heads", "image_size", "patch_size", "projection_dim")))
    (pw / SD / "vae").mkdir(parents=True)
    shutil.copy(files["vae"], pw / SD / "vae/diffusion_pytorch_model.safetensors")
    _json(pw / SD / "vae/config.json", _vae_json(CFG.vae))
    (pw / SD / "text_encoder").mkdir(parents=True)
    shutil.copy(files["text_encoder"], pw / SD / "text_encoder/model.safetensors")
    _json(pw / SD / "text_encoder/config.json", dict(
        _clip_json(CFG.text_encoder, "CLIPTextModel", "clip_text_model",
                   ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "max_position_embeddings", "eos_token_id")), projection_dim=768))
    shutil.copytree(tok, pw / SD / "tokenizer")
    (root / "configs").mkdir()
    (root / "configs/x_dyna.yaml").write_text(yaml.safe_dump(_xdyna_yaml(CFG.unet)))
    return params, files, tok, pw


def _same_params(out, want):
    b = load_bundle(out)
    assert b.cfg == CFG and sorted(b.parts) == sorted(want)
    for part in want:
        for got, exp in zip(jax.tree.leaves(b.params[part]), jax.tree.leaves(want[part]), strict=True):
            np.testing.assert_array_equal(np.asarray(got), exp)
    return b


def test_official_folder_alone_gives_the_explicit_flags_bundle(tmp_path, capsys):
    params, files, tok, pw = _official_folder(tmp_path)
    # explicit flags, the checkpoints as folders the way the official scripts pass them (./pretrained_weights/unet/)
    explicit = dict(files, unet=pw / "unet", unet_init=pw / SD / "unet", pose_controlnet=pw / "controlnet")
    assert porting_main(_bundle_args(explicit, tok, tmp_path / "explicit")) == 0
    capsys.readouterr()
    # the folder alone (+ the Resampler's heads / head width: only their product is in the folder)
    assert porting_main(["bundle", "--official", str(pw), "--out", str(tmp_path / "official"), *HEADS]) == 0
    out = capsys.readouterr().out
    yaml_path = tmp_path / "X-Dyna/configs/x_dyna.yaml"
    for key, path in (("unet", pw / "unet/unet-checkpoint-epoch-5.ckpt"),
                      ("unet_init", pw / SD / "unet/animatediff_v15_v1_ipplus.pth"),
                      ("face_controlnet", pw / "controlnet_face/controlnet-face-checkpoint-epoch-2.ckpt"),
                      ("image_encoder", pw / IP / "models/image_encoder"), ("tokenizer", pw / SD / "tokenizer")):
        assert f"  {key:<24} {path}\n" in out, key
    unet_line = next(ln for ln in out.splitlines() if ln.startswith("  unet ") and "config.json" in ln)
    assert str(pw / SD / "unet/config.json") in unet_line and str(yaml_path) in unet_line
    assert f"x_dyna.yaml: {yaml_path}\n" in out
    assert ("resampler.heads x dim_head = 4 x 8: from --set resampler.heads=4 (the folder tells only their "
            "product, 32)") in out
    report = (tmp_path / "official/report.txt").read_text()
    assert "the folder tells only their product" in report and "pose_controlnet_config" in report
    a = _same_params(tmp_path / "explicit", params)
    b = _same_params(tmp_path / "official", params)
    assert (tmp_path / "explicit/config.yaml").read_text() == (tmp_path / "official/config.yaml").read_text()
    assert json.loads((tmp_path / "official/bundle.json").read_text())["sources"]["unet"] == \
        str(pw / "unet/unet-checkpoint-epoch-5.ckpt")
    assert a.tokenizer is not None and b.tokenizer is not None


def test_parts_found_as_the_scripts_pass_them_and_missing_ones_named(tmp_path, capsys):
    _, files, tok, pw = _official_folder(tmp_path)
    roots = official.folder_roots(pw)
    # another epoch's name: the one checkpoint of unet/ (the .txt placeholder is no checkpoint)
    (pw / "unet/unet-checkpoint-epoch-5.ckpt").rename(pw / "unet/unet-checkpoint-epoch-6.ckpt")
    parts = official.find_parts(roots)
    assert parts.files["unet"] == pw / "unet/unet-checkpoint-epoch-6.ckpt"
    assert official.given_file("unet", pw / "unet") == pw / "unet/unet-checkpoint-epoch-6.ckpt"
    # a part flag replaces its part; the folder's file need not be there
    shutil.move(pw / "controlnet", tmp_path / "pose")
    parts = official.find_parts(roots, {"pose_controlnet": str(tmp_path / "pose")})
    assert parts.files["pose_controlnet"] == tmp_path / "pose/controlnet-checkpoint-epoch-5.ckpt"
    assert "(given with --pose-controlnet)" in "\n".join(parts.lines)
    shutil.move(tmp_path / "pose", pw / "controlnet")
    # the README's name wins; without it, two checkpoints in one folder are named, both
    shutil.copy(pw / "controlnet/controlnet-checkpoint-epoch-5.ckpt", pw / "controlnet/old.ckpt")
    assert official.find_parts(roots).files["pose_controlnet"].name == "controlnet-checkpoint-epoch-5.ckpt"
    (pw / "controlnet/controlnet-checkpoint-epoch-5.ckpt").rename(pw / "controlnet/controlnet-checkpoint-epoch-4.ckpt")
    with pytest.raises(PortingError, match=r"controlnet/: 2 checkpoint files \(controlnet-checkpoint-epoch-4.ckpt, "
                                           r"old.ckpt\), expected one"):
        official.find_parts(roots)
    with pytest.raises(PortingError, match="--pose-controlnet .*2 checkpoint files"):
        official.given_file("pose_controlnet", pw / "controlnet")
    (pw / "controlnet/old.ckpt").unlink()
    # without the S-Face checkpoint: pose-only, its init config not needed
    shutil.move(pw / "controlnet_face", tmp_path / "face")
    parts = official.find_parts(roots)
    assert "face_controlnet" not in parts.files and "face_controlnet" not in parts.configs
    assert "none: no checkpoint in controlnet_face/ (pose-only X-Dyna)" in "\n".join(parts.lines)
    shutil.move(tmp_path / "face", pw / "controlnet_face")

    # several parts missing: one error line naming every file where it was expected; nothing written
    (pw / "unet/unet-checkpoint-epoch-6.ckpt").unlink()
    (pw / SD / "vae/diffusion_pytorch_model.safetensors").unlink()
    (pw / SD / "tokenizer/merges.txt").unlink()
    (pw / official.FACE_INIT / "config.json").unlink()  # needed: the S-Face checkpoint is there
    capsys.readouterr()
    assert porting_main(["bundle", "--official", str(pw), "--out", str(tmp_path / "b"), *HEADS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: 4 required file(s) missing from the official set")
    for want in (f"unet: {pw / 'unet/unet-checkpoint-epoch-5.ckpt'} (or the one checkpoint in {pw / 'unet'}/)",
                 f"vae: {pw / SD / 'vae'}/ with config.json and diffusion_pytorch_model.safetensors or "
                 f"diffusion_pytorch_model.bin",
                 f"tokenizer: {pw / SD / 'tokenizer'}/ with vocab.json and merges.txt",
                 f"face_controlnet_config: {pw / official.FACE_INIT / 'config.json'}"):
        assert want in err, want
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b.*"))
    assert porting_main(["bundle", "--official", str(tmp_path / "nowhere"), "--out", str(tmp_path / "b")]) == 2
    assert "no such folder (expected the official pretrained_weights/)" in capsys.readouterr().err


def test_configs_that_disagree_with_the_folder_are_refused(tmp_path, capsys):
    _, files, tok, pw = _official_folder(tmp_path)
    yaml_path = tmp_path / "X-Dyna/configs/x_dyna.yaml"
    base = lambda args: porting_main(["bundle", "--official", str(pw), "--out", str(tmp_path / "b"), *args])
    # fields that change no weight shape too: head counts, epsilons, activations; every one named, both values
    assert base(["--set", "unet.attention_head_dim=[4,4,4,4]", "--set", "unet.norm_eps=1e-6",
                 "--set", "unet.motion_module_kwargs.num_attention_heads=4",
                 "--set", "image_encoder.hidden_act=quick_gelu", *HEADS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the official set's configs disagree with the given config on 4 field(s)")
    for want in (f"unet.attention_head_dim: --set unet.attention_head_dim=[4,4,4,4] says [4, 4, 4, 4], the folder "
                 f"says [2, 2, 2, 2] ({pw / SD / 'unet/config.json'})",
                 "unet.norm_eps: --set unet.norm_eps=1e-6 says 1e-06, the folder says 1e-05",
                 "unet.motion_module_kwargs.num_attention_heads: --set unet.motion_module_kwargs.num_attention_heads=4 "
                 f"says 4, the folder says 2 ({yaml_path})",
                 "image_encoder.hidden_act: --set image_encoder.hidden_act=quick_gelu says 'quick_gelu', the folder "
                 "says 'gelu'"):
        assert want in err, want
    # a --config whose text encoder has another head count (the weights' shapes would not tell)
    bad = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    bad["text_encoder"]["num_attention_heads"] = 2
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    assert base(["--config", str(tmp_path / "bad.yaml")]) == 2
    assert (f"text_encoder.num_attention_heads: --config {tmp_path / 'bad.yaml'} says 2, the folder says 4 "
            f"({pw / SD / 'text_encoder/config.json'})") in capsys.readouterr().err
    # the split of the Resampler's attention width: the preset's, and when it cannot be, said so
    assert base([]) == 2
    assert ("resampler.heads x resampler.dim_head: preset sd15 says 12 x 64 = 768, but "
            f"{pw / IP / 'models/ip-adapter-plus_sd15.bin'} has an attention width of 32") in capsys.readouterr().err
    assert not (tmp_path / "b").exists()

    # the agreeing preset: the folder's config, the split from the preset
    base_cfg = config_lib.load(type(CFG), CONFIGS / "tiny.yaml")
    parts = official.find_parts(official.folder_roots(pw))
    cfg, lines = models_config(parts, base_cfg, "--preset tiny", (), yaml_path, "tiny")
    assert cfg == CFG and "  resampler.heads x dim_head = 4 x 8: from --preset tiny" in "\n".join(lines)
    # compute settings are ours, never the folder's
    sets = ["unet.dtype=bfloat16", "vae.decode_chunk=4", "text_encoder.attention_backend=cudnn"]
    cfg, _ = models_config(parts, config_lib.load(type(CFG), CONFIGS / "tiny.yaml", sets), "--preset tiny", sets,
                           yaml_path, "tiny")
    assert (cfg.unet.dtype, cfg.vae.decode_chunk, cfg.text_encoder.attention_backend) == ("bfloat16", 4, "cudnn")
    # no x_dyna.yaml anywhere: the UNet's X-Dyna settings come from the preset, and the report says so
    yaml_path.unlink()
    path, note = official.find_xdyna_yaml(None, [pw, pw.parent])
    assert path is None and note == f"x_dyna.yaml: not found (looked at {pw / 'configs/x_dyna.yaml'}, {yaml_path})"
    cfg, lines = models_config(parts, base_cfg, "--preset tiny", (), None, "tiny")
    assert cfg == CFG and "unet's X-Dyna settings (unet_use_cross_frame_attention" in "\n".join(lines)
    assert "from --preset tiny, as no x_dyna.yaml was found" in "\n".join(lines)


def _hub_cache(pw, cache):
    """The three repositories in the hub cache layout (models--owner--name/snapshots/<commit>, refs/main), each
    holding what bytedance/X-Dyna's README puts at its mount."""
    from xdyna_jax.porting import hub

    for i, src in enumerate(hub.SOURCES):
        repo = cache / ("models--" + src.repo.replace("/", "--"))
        commit = f"{i + 1:040x}"
        snap = repo / "snapshots" / commit
        for pattern in src.patterns:
            rel = f"{src.mount}/{pattern}" if src.mount else pattern
            for f in pw.glob(rel):
                dst = snap / f.relative_to(pw / src.mount)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(f, dst)
        (repo / "refs").mkdir(parents=True)
        (repo / "refs/main").write_text(commit)


def test_hub_cache_offline(tmp_path, monkeypatch, capsys):
    params, files, tok, pw = _official_folder(tmp_path)
    cache = tmp_path / "hf/hub"
    _hub_cache(pw, cache)
    # the init file is in the X-Dyna snapshot only (SD1.5's repository has none): found there
    assert not list((cache / "models--stable-diffusion-v1-5--stable-diffusion-v1-5").rglob("*.pth"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no test touches the network
    yaml_path = tmp_path / "X-Dyna/configs/x_dyna.yaml"
    args = ["bundle", "--hub", "--xdyna-yaml", str(yaml_path), *HEADS]
    assert porting_main([*args, "--out", str(tmp_path / "hub")]) == 0
    out = capsys.readouterr().out
    assert f"hub cache: {cache} (offline)" in out and "Boese0601/X-Dyna@main:" in out
    _same_params(tmp_path / "hub", params)

    # a file the snapshots lack: named at every place it could be, with the repository it comes from
    init = next(cache.glob("models--Boese0601--X-Dyna/snapshots/*/" + SD + "/unet/animatediff_v15_v1_ipplus.pth"))
    init.unlink()
    assert porting_main([*args, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "1 required file(s) missing from the official set (the Hugging Face Hub)" in err
    assert "unet/animatediff_v15_v1_ipplus.pth (from stable-diffusion-v1-5/stable-diffusion-v1-5@main), or " in err
    assert f"{init} (from Boese0601/X-Dyna@main)" in err
    # a revision that is not in the cache, and a repository that is not: named, in one error
    shutil.rmtree(cache / "models--h94--IP-Adapter")
    assert porting_main([*args, "--revision", "v2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Boese0601/X-Dyna: revision 'v2' not in the Hugging Face cache" in err and "refs ['main']" in err
    assert f"h94/IP-Adapter: not in the Hugging Face cache (expected {cache / 'models--h94--IP-Adapter'})" in err
    assert porting_main([*args, "--revision", "nobody/else=v1", "--out", str(tmp_path / "b")]) == 2
    assert "--revision nobody/else=v1: expected REV (for Boese0601/X-Dyna) or REPO=REV" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
