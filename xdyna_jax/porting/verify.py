"""``python -m xdyna_jax.porting verify --bundle DIR --official-repo DIR``: parity of a bundle with the official code.

Every network of the bundle runs next to its official counterpart (bytedance/X-Dyna's ``UNet3DConditionModel``,
``ControlNetModel``, ``Resampler``; diffusers' ``AutoencoderKL`` and transformers' CLIP encoders, which the official
code uses) on the same seeded inputs in float32, plus the composed ``denoise`` against the official training-time
window forward (``ModelWrapper`` with ``cross_id=True``). Ours reads the bundle; the official side reads the user's
official files (those bundle.json records, or ``--official DIR``) the way the official scripts do, with the official
configs (each part's config.json, the checkout's ``configs/x_dyna.yaml``), so a wrong conversion or a wrong config
shows. The table gives, per network, the largest absolute difference, that difference relative to the largest
official output value, the tolerance (on the relative error) and whether it passed; exit code 1 when any network
is out of tolerance.

The official side runs in this interpreter (torch and diffusers of the ``test`` extra: the official code runs
under diffusers 0.42 with the import-time patches of ``official_runner``), or with ``--python PATH`` in another
interpreter (e.g. the oracle venv with diffusers 0.24 of tools/official_parity/README.md) as a subprocess.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping

import numpy as np

from xdyna_jax import cli

from . import official_runner
from .verify_ours import draw_inputs, our_outputs

DEFAULT_RTOL = 1e-3  # float32 both sides: 2e-7 to 3e-6 measured on tiny networks; room for full-size depth
ORDER = ("unet", "pose_controlnet", "face_controlnet", "resampler", "vae", "image_encoder", "text_encoder", "denoise")
INSTALL = ("install the test extra (pip install -e '.[test]': torch and diffusers), or give --python PATH, an "
           "interpreter that has them")


@dataclasses.dataclass
class Row:
    network: str
    max_abs: float = float("nan")
    max_rel: float = float("nan")
    tol: float = DEFAULT_RTOL
    note: str = ""
    skipped: bool = False

    @property
    def passed(self) -> bool:
        return self.skipped or (np.isfinite(self.max_rel) and self.max_rel <= self.tol and not self.note)


def plan(cfg, parts) -> tuple[list[str], dict[str, str]]:
    """(the checks to run, in order; {check: why it is skipped}) for a bundle holding ``parts``."""
    from .official_specs import official_unet_problem

    skipped, checks = {}, []
    unet_problem = official_unet_problem(cfg.unet) if "unet" in parts else None
    for check in ORDER:
        if check == "denoise":
            need = [p for p in ("unet", "pose_controlnet") if p not in parts]
            if need:
                skipped[check] = f"the bundle has no {' and '.join(need)}"
                continue
        elif check not in parts:
            if check != "face_controlnet":
                skipped[check] = "not in the bundle"
            continue
        if check in ("unet", "denoise") and unet_problem:
            skipped[check] = unet_problem
            continue
        checks.append(check)
    return checks, skipped


# --- the official side ------------------------------------------------------------------------------

def require_torch() -> None:
    """torch and diffusers importable here, else the one-line error saying which extra to install."""
    missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
    if missing:
        raise cli.UserError(f"verify runs the official PyTorch code, and {' and '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not importable here: {INSTALL}")


def official_in_process(repo, spec, inputs, log=print) -> tuple[dict, dict]:
    require_torch()
    try:
        off = official_runner.load_official(repo)
    except official_runner.OfficialImportError as e:
        raise cli.UserError(f"{e}; give --python PATH, an interpreter where the official code imports (e.g. the "
                            f"oracle venv of tools/official_parity/README.md)") from e
    try:
        return official_runner.run_checks(off, spec, inputs, log=log), official_runner.versions()
    except (ValueError, KeyError) as e:  # an official file the official loader refuses (strict key sets)
        raise cli.UserError(f"the official code cannot load the official files: {e}") from e


def official_subprocess(python, repo, spec, inputs, log=print) -> tuple[dict, dict]:
    exe = shutil.which(str(python))
    if exe is None:
        raise cli.UserError(f"--python {python}: no such interpreter (expected a python with torch and diffusers)")
    with tempfile.TemporaryDirectory(prefix="xdyna-verify-") as tmp:
        job = Path(tmp)
        (job / "spec.json").write_text(json.dumps(spec))
        np.savez(job / "inputs.npz", **inputs)
        t0 = time.perf_counter()
        proc = subprocess.run([exe, official_runner.__file__, "--xdyna-repo", str(repo), "--job", str(job)],
                              capture_output=True, text=True)
        err = [s for s in proc.stderr.splitlines() if s.strip()]
        if proc.returncode == 3:  # the runner's "cannot import the official code here"
            raise cli.UserError(f"--python {python}: {err[-1].removeprefix('error: ') if err else 'failed'}; "
                                f"it needs torch, diffusers, transformers, einops, pyyaml and safetensors")
        if proc.returncode != 0 or not (job / "outputs.npz").is_file():
            raise cli.UserError(f"--python {python}: the official run failed (exit {proc.returncode}): "
                                + " | ".join(err[-3:]))
        for s in err:
            if s.startswith("official "):
                log(s)
        log(f"official (subprocess): {time.perf_counter() - t0:.1f} s")
        outputs = dict(np.load(job / "outputs.npz"))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    return outputs, info["versions"]


# --- which official files -------------------------------------------------------------------------------

SOURCE_KEY = {"resampler": "ip_adapter"}  # a part's file under its convert_bundle keyword in bundle.json


def official_sources(bundle_path, meta: Mapping, official_dir=None) -> tuple[dict[str, str], str]:
    """{convert_bundle keyword or "<part>_config": path} of the official files, and where they come from:
    the official folder given with --official, else what ``bundle`` recorded in bundle.json."""
    from . import official

    if official_dir is not None:
        found = official.find_parts(official.folder_roots(official_dir), where=str(official_dir))
        return ({**{k: str(v) for k, v in found.files.items()},
                 **{f"{k}_config": str(v) for k, v in found.configs.items()}}, f"--official {official_dir}")
    return dict(meta.get("sources") or {}), f"{Path(bundle_path) / 'bundle.json'} (sources)"


def official_networks(cfg, parts, sources: Mapping[str, str], where: str) -> tuple[dict, dict[str, str]]:
    """({part: the runner's network spec}, {part: why it cannot be loaded}). A part's official config is its
    config.json when known (unet: beside the init file), else the bundle's config (said in ``config_from``)."""
    from .official_specs import network_spec

    nets, missing = {}, {}
    for part in parts:
        key = SOURCE_KEY.get(part, part)
        if key not in sources:
            missing[part] = f"no official file for it in {where} (give --official DIR)"
            continue
        files = {"checkpoint": sources[key]}
        if part == "unet" and sources.get("unet_init"):
            files["init"] = sources["unet_init"]
        for name, f in files.items():
            if not Path(f).exists():
                raise cli.UserError(f"{where}: {key if name == 'checkpoint' else 'unet_init'} = {f}: no such file "
                                    f"(the official file the bundle was converted from; give --official DIR)")
        spec = network_spec(part, getattr(cfg, part))
        config_file = sources.get(f"{part}_config")
        if config_file and Path(config_file).is_file():
            spec["config"] = json.loads(Path(config_file).read_text())
            if part == "unet":  # as from_pretrained_ip: SD's 2D block types become the 3D ones
                for k in ("down_block_types", "up_block_types"):
                    spec["config"][k] = [t.replace("2D", "3D") for t in spec["config"][k]]
        nets[part] = {**spec, "files": files, "config_from": config_file or "the bundle's config.yaml"}
    return nets, missing


# --- comparison -------------------------------------------------------------------------------------

def compare(checks, ours, theirs, skipped: Mapping[str, str], rtol: float = DEFAULT_RTOL) -> list[Row]:
    """One row per check (the worst of its outputs) plus one per skipped check."""
    rows = []
    for check in checks:
        row, names = Row(check, 0.0, 0.0, rtol), [k for k in theirs if k.startswith(check + "/")]
        if not names:
            row.note = "no official output"
        for k in names:
            a, b = ours.get(k), theirs[k]
            if a is None or a.shape != b.shape:
                row.note = f"{k}: ours {None if a is None else a.shape}, official {b.shape}"
                continue
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                row.note = f"{k}: non-finite values ({'official' if np.isfinite(a).all() else 'ours'})"
                continue
            err = float(np.max(np.abs(a - b))) if a.size else 0.0
            scale = float(np.max(np.abs(b))) if b.size else 0.0
            row.max_abs = max(row.max_abs, err)
            row.max_rel = max(row.max_rel, err / scale if scale > 0 else (0.0 if err == 0 else float("inf")))
        rows.append(row)
    rows += [Row(c, tol=rtol, note=f"skipped: {why}", skipped=True) for c, why in skipped.items()]
    return rows


def format_table(rows: list[Row]) -> str:
    lines = [f"{'network':<16} {'max abs error':>13} {'max rel error':>13} {'tolerance':>9}  pass"]
    for r in rows:
        ok = "-" if r.skipped else ("yes" if r.passed else "NO")
        nums = f"{'-':>13} {'-':>13}" if r.skipped else f"{r.max_abs:>13.2e} {r.max_rel:>13.2e}"
        lines.append(f"{r.network:<16} {nums} {r.tol:>9.0e}  {ok}" + (f"  ({r.note})" if r.note else ""))
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------

def _float32(cfg):
    """Every part computing in float32 (the official side runs float32 whatever the bundle stores)."""
    parts = {p: dataclasses.replace(c, dtype="float32", param_dtype="float32") for p, c in cfg.parts().items()}
    return dataclasses.replace(cfg, **parts)


def verify(bundle, official_repo, *, latent=(16, 16), frames=2, seed=0, rtol=DEFAULT_RTOL, python=None,
           official_dir=None, log=print) -> list[Row]:
    """Run every network of the bundle folder and its official counterpart with the user's official weights
    (``official_dir``, else the files bundle.json records); the table's rows."""
    import jax

    from .bundle import load_bundle, read_bundle_meta

    repo = Path(official_repo)
    if not (repo / "animatediff" / "models" / "unet.py").is_file():
        raise cli.UserError(f"--official-repo {repo}: not a bytedance/X-Dyna checkout (expected "
                            f"animatediff/models/unet.py there)")
    if python is None:  # before loading the bundle: say at once what to install
        require_torch()
    elif shutil.which(str(python)) is None:
        raise cli.UserError(f"--python {python}: no such interpreter (expected a python with torch and diffusers)")
    meta = read_bundle_meta(bundle)
    sources, where = official_sources(bundle, meta, official_dir)
    b = load_bundle(bundle)
    cfg = _float32(b.cfg)
    max_len = cfg.unet.motion_module_kwargs.temporal_position_encoding_max_len
    if "unet" in b.parts and cfg.unet.use_motion_module and 1 + frames > max_len:
        raise cli.UserError(f"--frames {frames}: the window (1 + {frames} frames) is longer than the motion "
                            f"module's position encoding (unet.motion_module_kwargs.temporal_position_encoding_"
                            f"max_len = {max_len})")
    nets, no_file = official_networks(cfg, b.parts, sources, where)
    checks, skipped = plan(cfg, tuple(p for p in b.parts if p in nets))
    skipped.update({p: why for p, why in no_file.items() if p in ORDER})
    if not checks:
        raise cli.UserError(f"--bundle {bundle}: nothing to verify "
                            f"({'; '.join(f'{k}: {v}' for k, v in skipped.items())})")
    inputs = draw_inputs(cfg, checks, latent, frames, seed)
    log(f"bundle {b.path}: {', '.join(b.parts)}; latent {latent[0]}x{latent[1]}, {frames} noisy frame(s), "
        f"seed {seed}, float32")
    used = sorted({p for c in checks for p in official_runner.CHECKS[c][0]} | ({"face_controlnet"} & set(checks)))
    log(f"official weights from {where}:")
    for part in used:
        n = nets[part]
        log(f"  {part:<16} {' over '.join(n['files'].values())}; config {n['config_from']}")
    params = jax.tree.map(lambda v: np.asarray(v, np.float32), b.params)
    ours = our_outputs(params, cfg, checks, inputs, log=log)
    del params
    spec = {"checks": checks, "networks": {p: nets[p] for p in used}}
    theirs, versions = (official_in_process(repo, spec, inputs, log=log) if python is None else
                        official_subprocess(python, repo, spec, inputs, log=log))
    log(f"official code: {repo.resolve()} under {versions.get('python')} (torch {versions.get('torch')}, "
        f"diffusers {versions.get('diffusers')}, transformers {versions.get('transformers')})")
    return compare(checks, ours, theirs, skipped, rtol)


def _verify_cmd(args) -> int:
    rows = verify(args.bundle, args.official_repo, latent=tuple(args.latent), frames=args.frames, seed=args.seed,
                  rtol=args.tol, python=args.python, official_dir=args.official)
    print(format_table(rows))
    bad = [r.network for r in rows if not r.passed]
    if bad:
        print(f"FAILED: {', '.join(bad)} out of tolerance (max relative error > {args.tol:g})")
        return 1
    ran = [r for r in rows if not r.skipped]
    print(f"all {len(ran)} network(s) within tolerance")
    return 0


def add_command(sub) -> None:
    """Register ``verify`` on the porting CLI's sub-parsers."""
    v = sub.add_parser("verify", help="run a bundle's networks and the official code on the same inputs; "
                                      "exit 1 when one is out of tolerance")
    v.add_argument("--bundle", required=True, help="bundle folder written by `bundle`")
    v.add_argument("--official-repo", required=True,
                   help="bytedance/X-Dyna checkout (animatediff/, configs/); its code is imported from there")
    v.add_argument("--official", metavar="DIR",
                   help="the official pretrained_weights/ folder to compare against (default: the files bundle.json "
                        "records, i.e. those the bundle was converted from)")
    v.add_argument("--latent", nargs=2, type=cli.int_range(1, 512), default=[16, 16], metavar=("H", "W"),
                   help="latent size of the inputs (default 16 16: the image side is 8x)")
    v.add_argument("--frames", type=cli.int_range(1, 64), default=2,
                   help="noisy frames of the window (the reference frame is added; default 2)")
    v.add_argument("--seed", type=cli.int_range(0, 2**32 - 1), default=0, help="input seed (default 0)")
    v.add_argument("--tol", type=cli.float_range(0.0, None, lo_open=True), default=DEFAULT_RTOL,
                   help=f"largest max relative error that passes (default {DEFAULT_RTOL:g})")
    v.add_argument("--python", help="run the official code with this interpreter in a subprocess (e.g. an oracle "
                                    "venv with diffusers 0.24) instead of in this one")
    v.set_defaults(func=_verify_cmd)
