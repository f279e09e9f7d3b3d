"""Converting without holding a network twice (benchmarks/porting_memory.py measures it at full size): the
consuming conversion gives the same params as the plain one and frees its inputs; the UNet init file is read
memory-mapped; bundles written before (Orbax OCDBT layout) still load."""
from __future__ import annotations

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml
from helpers import random_tree, tiny_models_config

from xdyna_jax import config as config_lib
from xdyna_jax.models import xdyna
from xdyna_jax.porting.bundle import FORMAT, VERSION, load_bundle, save_bundle
from xdyna_jax.porting.convert import params_from_torch, params_to_torch
from xdyna_jax.porting.loaders import compose_xdyna_unet, load_xdyna_unet

CFG = tiny_models_config()


def _same(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_consuming_conversion_equals_the_plain_one_and_empties_its_input():
    params = random_tree(xdyna.param_shapes(CFG), seed=2)
    state = params_to_torch(params["pose_controlnet"], CFG.pose_controlnet)
    plain = params_from_torch(dict(state), CFG.pose_controlnet)
    given = dict(state)
    _same(params_from_torch(given, CFG.pose_controlnet, consume=True), plain)
    assert given == {}
    _same(plain, params["pose_controlnet"])


def test_unet_from_a_mapped_init_file_equals_the_in_memory_composition(tmp_path):
    import torch

    unet = {k: v for k, v in params_to_torch(random_tree(xdyna.param_shapes(CFG), seed=3)["unet"], CFG.unet).items()
            if not k.endswith(".pe")}
    ckpt = {k: v for k, v in unet.items() if "motion_modules" in k or "to_out_ff" in k}
    init = {k: v + 1.0 for k, v in unet.items() if ".to_q_ff." not in k}  # differs where the checkpoint overrides
    want, want_report = compose_xdyna_unet(dict(ckpt), dict(init), CFG.unet)
    torch.save({"state_dict": {f"module.{k}": torch.from_numpy(v) for k, v in ckpt.items()}}, tmp_path / "u.ckpt")
    torch.save({k: torch.from_numpy(v) for k, v in init.items()}, tmp_path / "init.pth")
    got, report = load_xdyna_unet(tmp_path / "u.ckpt", tmp_path / "init.pth", CFG.unet)
    _same(got, want)
    assert str(report) == str(want_report) and report.copied_to_q_ff and report.init_only


def test_bundles_written_in_the_ocdbt_layout_still_load(tmp_path):
    params = random_tree(xdyna.param_shapes(CFG), seed=4)
    params = {"resampler": params["resampler"], "vae": params["vae"]}
    old = tmp_path / "old"
    with ocp.StandardCheckpointer() as ckptr:  # how save_bundle wrote params/ before it streamed
        ckptr.save(old / "params", params)
    (old / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(CFG), sort_keys=False))
    (old / "bundle.json").write_text(json.dumps({"format": FORMAT, "version": VERSION, "parts": sorted(params)}))
    _same(load_bundle(old).params, params)
    given = jax.tree.map(np.copy, params)
    save_bundle(tmp_path / "new", given, CFG, consume=True)
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(given))  # replaced in place
    _same(load_bundle(tmp_path / "new").params, params)
