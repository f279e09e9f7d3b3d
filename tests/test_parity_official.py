"""Parity with the OFFICIAL X-Dyna PyTorch networks (bytedance/X-Dyna @ 9a54f8e).

``tests/data/official/*.npz`` hold inputs and outputs of the official ``UNet3DConditionModel``,
``ControlNetModel`` and ``Resampler`` at tiny configs, produced by
``tools/official_parity/dump_official.py`` (see its README). Weights are not stored: both sides
generate them from the case's seed with ``tests/official_weights.py``. The reference is the
official code's output, never ours.
"""
import json
from pathlib import Path

import jax
import numpy as np
import pytest

from official_weights import official_weights
from xdyna_jax.models import (ControlNet, ControlNetConfig, Resampler, ResamplerConfig, UNet3D,
                              UNet3DConfig)
from xdyna_jax.porting import (controlnet_params_from_torch, official_entries, resampler_params_from_torch,
                               unet_params_from_torch)

DATA = Path(__file__).parent / "data" / "official"
TOL = 1e-4


def _case(name):
    z = np.load(DATA / f"{name}.npz")
    meta = json.loads(str(z["config_json"]))
    keys = json.loads(str(z["keys_json"]))
    return z, meta, official_weights(dict((k, tuple(s)) for k, s in keys), meta["seed"]), keys


def _cl(x):  # official (B, C, F, H, W) / (N, C, H, W) -> channels-last
    x = np.asarray(x)
    return np.moveaxis(x, 1, -1)


def _check_key_set(cfg, keys):
    ours = {e.key: e.shape for e in official_entries(cfg)}
    theirs = {k: tuple(s) for k, s in keys}
    assert ours == theirs, (sorted(set(ours) ^ set(theirs))[:20])


@pytest.mark.parametrize("name", ["unet_xdyna", "unet_xdyna_odd", "unet_variants", "unet_plain2d"])
def test_unet3d_matches_official(name):
    z, meta, weights, keys = _case(name)
    cfg = UNet3DConfig.from_diffusers(meta["config"], **meta["xdyna_kwargs"])
    _check_key_set(cfg, keys)
    params = unet_params_from_torch(weights, cfg)
    n_res = meta.get("num_down_residuals", 0)
    down = [_cl(z[f"down_{k}"]) for k in range(n_res)] if n_res else None
    mid = _cl(z["mid"]) if n_res else None
    out = jax.jit(UNet3D(cfg).apply)({"params": params}, _cl(z["sample"]), np.asarray(z["timestep"]),
                                     np.asarray(z["encoder_hidden_states"]), down, mid)
    want = _cl(z["out"])
    err = float(np.max(np.abs(np.asarray(out) - want)))
    print(f"{name}: max abs error {err:.2e} (mean |out| {np.abs(want).mean():.3f})")
    assert err <= TOL


@pytest.mark.parametrize("name", ["controlnet_pose", "controlnet_face"])
def test_controlnet_matches_official(name):
    z, meta, weights, keys = _case(name)
    cfg = ControlNetConfig.from_diffusers(meta["config"])
    _check_key_set(cfg, keys)
    params = controlnet_params_from_torch(weights, cfg)
    scale = float(z["conditioning_scale"]) if "conditioning_scale" in z.files else 1.0
    down, mid = jax.jit(ControlNet(cfg).apply)(
        {"params": params}, _cl(z["sample"]), np.asarray(z["timestep"]), np.asarray(z["encoder_hidden_states"]),
        _cl(z["controlnet_cond"]), scale)
    errs = [float(np.max(np.abs(np.asarray(d) - _cl(z[f"down_{k}"])))) for k, d in enumerate(down)]
    errs.append(float(np.max(np.abs(np.asarray(mid) - _cl(z["mid"])))))
    assert len(down) == 12
    print(f"{name}: max abs error {max(errs):.2e}")
    assert max(errs) <= TOL


def test_resampler_matches_official():
    z, meta, weights, keys = _case("resampler")
    cfg = ResamplerConfig(**meta["config"])
    _check_key_set(cfg, keys)
    params = resampler_params_from_torch(weights, cfg)
    out = Resampler(cfg).apply({"params": params}, np.asarray(z["x"]))
    err = float(np.max(np.abs(np.asarray(out) - z["out"])))
    print(f"resampler: max abs error {err:.2e}")
    assert err <= TOL
