"""Run the official PyTorch X-Dyna next to ours, at the same config and weights, from a benchmark.

Our configs become diffusers-style configs, our params become official-named tensors (the porting
module's ``*_params_to_torch``) in one npz, and ``official_xdyna.py`` runs in the oracle venv
(torch + diffusers 0.24, tools/official_parity/README.md) as a subprocess. The configs come from
``xdyna_jax.porting.official_specs`` and the official code is loaded by ``xdyna_jax.porting.official_runner``, as
``porting verify`` does. The official source is
read from the path given on the command line and never copied here. Without that path or the
oracle python the benchmarks print our figures only.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from xdyna_jax.porting import (clip_text_params_to_torch, controlnet_params_to_torch, unet_params_to_torch,
                               vae_params_to_torch)
# our configs as the official code builds them: shared with `python -m xdyna_jax.porting verify`
from xdyna_jax.porting.official_runner import OFFICIAL_IP_TOKENS  # noqa: F401
from xdyna_jax.porting.official_specs import (controlnet_spec, text_encoder_spec, unet_spec,  # noqa: F401
                                              vae_spec)

RUNNER = Path(__file__).with_name("official_xdyna.py")


_TO_TORCH = {"unet": unet_params_to_torch, "pose_controlnet": controlnet_params_to_torch,
             "face_controlnet": controlnet_params_to_torch, "vae": vae_params_to_torch,
             "text_encoder": clip_text_params_to_torch}


def official_weights(params: dict, cfgs: dict, extra: dict | None = None) -> dict:
    """``{"part/official key": float32 array}`` for each part in ``cfgs`` (+ ``inputs/...`` arrays)."""
    out = {}
    for part, cfg in cfgs.items():
        for k, v in _TO_TORCH[part](params[part], cfg, np.float32).items():
            out[f"{part}/{k}"] = v
    for k, v in (extra or {}).items():
        out[f"inputs/{k}"] = np.asarray(v, np.float32)
    return out


def run_official(spec: dict, weights: dict, *, xdyna_repo: str | None, python: str | None,
                 timeout: float = 3600) -> dict | None:
    """Run ``official_xdyna.py`` on ``spec``; its JSON result, or None (with the reason on stderr)
    when the official code or the oracle python is missing or the run fails."""
    if not xdyna_repo or not python:
        return None
    if not (Path(xdyna_repo) / "animatediff" / "pipelines" / "pipeline_xdyna.py").is_file() or \
            not Path(python).exists():
        print(f"official run skipped: {xdyna_repo} is no X-Dyna checkout or {python} is missing", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "weights.npz", **weights)
        (Path(tmp) / "spec.json").write_text(json.dumps({**spec, "weights": str(Path(tmp) / "weights.npz")}))
        proc = subprocess.run([python, str(RUNNER), "--xdyna-repo", str(xdyna_repo), "--spec",
                               str(Path(tmp) / "spec.json")], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(f"official run failed ({proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])
