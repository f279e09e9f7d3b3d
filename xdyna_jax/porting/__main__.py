"""``python -m xdyna_jax.porting convert|export|inspect``.

  convert --kind unet --init animatediff_v15_v1_ipplus.pth --checkpoint unet-checkpoint-epoch-5.ckpt --out DIR
  convert --kind unet --sd15 unet/diffusion_pytorch_model.safetensors [--seed 0] --out DIR
  convert --kind unet|controlnet|resampler|vae --checkpoint FILE_OR_DIFFUSERS_DIR --out DIR
  convert --kind clip_vision|clip_text --checkpoint FILE_OR_TRANSFORMERS_DIR --out DIR
  export  --kind unet --params DIR --out unet.safetensors [--dtype float16]
  inspect FILE_OR_DIFFUSERS_DIR
  bundle --out DIR --unet ... --pose-controlnet ... (the whole official set; see bundle_cli.py)
  export-bundle --bundle DIR --out OUT_DIR
  verify --bundle DIR --official-repo X-Dyna/ [--latent H W] [--frames F] [--seed S] [--python PATH] (verify.py)

``convert`` writes DIR/params (an Orbax checkpoint of the param tree), DIR/config.yaml (the model
config, ``xdyna_jax.config`` format) and, for a composed UNet, DIR/report.txt. The model config
comes from ``--config`` (our YAML, or a diffusers ``config.json`` plus ``--xdyna-yaml`` for the
UNet's ``unet_additional_kwargs``), else a preset (``--preset sd15`` by default; a ControlNet
folder's own config.json or its conditioning channels are used when no config is given).
``--set key=value`` overrides any config field (``--set param_dtype=bfloat16``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from xdyna_jax import cli
from xdyna_jax import config as config_lib

from .io import PortingError, find_diffusers_weights, read_raw, read_state_dict, to_numpy, write_safetensors
from .store import KINDS, config_class, restore_params, save_converted

DTYPES = ("float32", "float16", "bfloat16")




def load_model_config(kind: str, path: str | None, xdyna_yaml: str | None = None,
                      preset: str = "sd15", overrides=()) -> Any:
    """The model config of ``kind`` from our YAML, a diffusers config.json (+ x_dyna.yaml), or a preset."""
    cls = config_class(kind)
    if path is not None and Path(path).suffix == ".json":
        from_json = getattr(cls, "from_diffusers", None) or getattr(cls, "from_hf", None)  # CLIP: transformers
        if from_json is None:
            raise PortingError(f"{path}: a {kind} config cannot be read from a diffusers config.json")
        extra: Mapping[str, Any] = {}
        if xdyna_yaml is not None:
            try:
                extra = yaml.safe_load(Path(xdyna_yaml).read_text()) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
                raise PortingError(f"--xdyna-yaml {xdyna_yaml}: cannot read as YAML ({cli.one_line(e)}); "
                                   f"it looks like {cli.sniff(xdyna_yaml)}") from e
            # x_dyna.yaml keeps the UNet kwargs under unet_additional_kwargs; a bare mapping also works
            extra = extra.get("unet_additional_kwargs", extra) if isinstance(extra, dict) else extra
            if not isinstance(extra, dict):
                raise PortingError(f"--xdyna-yaml {xdyna_yaml}: expected a mapping (x_dyna.yaml with "
                                   f"unet_additional_kwargs), found {type(extra).__name__}")
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise PortingError(f"--config {path}: cannot read as JSON ({cli.one_line(e)}); "
                               f"it looks like {cli.sniff(path)}") from e
        if not isinstance(data, dict):
            raise PortingError(f"--config {path}: expected a JSON object (a diffusers config.json), "
                               f"found {type(data).__name__}")
        try:
            cfg = from_json(data, **extra)
        except (ValueError, TypeError, KeyError) as e:
            raise PortingError(f"--config {path}: {e}") from e
        return config_lib.load(cls, None, overrides, defaults=cfg) if overrides else cfg
    if xdyna_yaml is not None:
        raise PortingError("--xdyna-yaml goes with a diffusers config.json given to --config")
    if path is not None and preset != "sd15":
        raise PortingError("give either --config or --preset")
    if path is not None:
        return config_lib.load(cls, path, overrides)
    return config_lib.load(cls, None, overrides, defaults=getattr(cls, preset)())


def _check_sources(args, *options: str) -> None:
    """Every given input exists (a file, or a folder where one is accepted) before any work starts."""
    for opt in options:
        value = getattr(args, opt.lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        path = Path(value)
        if not path.exists():
            raise PortingError(f"{opt} {path}: no such file or folder")
        if path.is_file() and path.stat().st_size == 0:
            raise PortingError(f"{opt} {path}: empty file, 0 bytes")


def _convert(args) -> None:
    from . import loaders
    from .convert import params_from_torch

    _check_sources(args, "--checkpoint", "--init", "--sd15", "--config", "--xdyna-yaml")
    out = Path(args.out).absolute()
    empty = out.is_dir() and not any(out.iterdir())  # a folder made for it beforehand is fine
    cli.check_output_path(out, kind="dir", overwrite=args.force or empty, hint=" (use --force to overwrite)")

    # a ControlNet, VAE or CLIP without any config given takes its folder's config.json (ControlNet: or its weights)
    given = args.config is not None or args.set or args.preset is not None
    cfg = load_model_config(args.kind, args.config, args.xdyna_yaml, args.preset or "sd15", args.set) \
        if (given or args.kind not in ("controlnet", "vae", "clip_vision", "clip_text")) else None
    report = None
    if args.kind == "unet" and args.sd15:
        if args.checkpoint or args.init:
            raise PortingError("--sd15 takes no --checkpoint or --init")
        import jax

        state = read_state_dict(args.sd15)
        params, init_report = loaders.unet_params_from_sd15(state, cfg, jax.random.key(args.seed))
        n_copied = sum(v.startswith("copy") for v in init_report.values())
        report = "\n".join([f"{len(init_report)} params not in SD1.5: {n_copied} copied, "
                             f"{len(init_report) - n_copied} initialised (seed {args.seed})"]
                            + [f"  {k}: {v}" for k, v in sorted(init_report.items())])
    elif args.init:
        if args.kind != "unet" or not args.checkpoint:
            raise PortingError("--init is for --kind unet, together with --checkpoint")
        params, unet_report = loaders.load_xdyna_unet(args.checkpoint, args.init, cfg)
        report = str(unet_report)
    elif not args.checkpoint:
        raise PortingError("nothing to convert: give --checkpoint (or --init/--sd15 for the UNet)")
    elif args.kind == "controlnet":
        params, cfg = loaders.load_controlnet(args.checkpoint, cfg)
    elif args.kind == "resampler":
        params, cfg = loaders.load_resampler(args.checkpoint, cfg)
    elif args.kind == "vae":
        params, cfg = loaders.load_vae(args.checkpoint, cfg)
    elif args.kind in ("clip_vision", "clip_text"):
        params, cfg = getattr(loaders, f"load_{args.kind}")(args.checkpoint, cfg)
    else:
        params = params_from_torch(read_state_dict(args.checkpoint), cfg, where=args.checkpoint)
    save_converted(out, params, cfg, report, force=args.force or empty)
    if report is not None:
        print(report.splitlines()[0])
    n = sum(int(np.prod(v.shape)) for v in _leaves(params))
    print(f"wrote {out} ({len(_leaves(params))} params, {n:,} values)")


def _leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def _export(args) -> None:
    from .convert import params_to_torch

    _check_sources(args, "--params", "--config", "--xdyna-yaml")
    src = Path(args.params)
    if not src.is_dir():
        raise PortingError(f"--params {src}: not a directory (expected a folder written by `convert`)")
    if args.config is None and not (src / "config.yaml").is_file():
        raise PortingError(f"--params {src}: no config.yaml (expected a folder written by `convert`, "
                           f"or give --config)")
    cli.check_output_path(args.out, kind="file", suffixes=(".safetensors",))
    cfg_path = args.config or src / "config.yaml"
    cfg = load_model_config(args.kind, str(cfg_path), args.xdyna_yaml, overrides=args.set)
    params = restore_params(src / "params" if (src / "params").is_dir() else src)
    dtype = None
    if args.dtype is not None:
        import jax.numpy as jnp

        dtype = np.dtype(getattr(jnp, args.dtype))
    state = params_to_torch(params, cfg, dtype=dtype)
    write_safetensors(state, args.out, metadata={"format": "pt", "source": "xdyna_jax"})
    print(f"wrote {args.out} ({len(state)} tensors)")


def _inspect(args) -> None:
    path = Path(args.file)
    if path.is_dir():
        hf = [path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).is_file()]
        path = hf[0] if hf else find_diffusers_weights(path)
    raw = read_raw(path)
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise PortingError(f"{path}: holds a {type(raw).__name__}, not a dict of tensors")
    rows = []

    def walk(d: Mapping, prefix: str):
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, f"{prefix}{k}/")
            else:
                try:
                    a = to_numpy(v)
                except TypeError:
                    rows.append((f"{prefix}{k}", "-", type(v).__name__))
                    continue
                rows.append((f"{prefix}{k}", str(tuple(a.shape)), str(a.dtype)))

    walk(raw, "")
    for k, s, d in rows:
        print(f"{k}\t{s}\t{d}")
    print(f"# {len(rows)} entries in {path}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(prog="python -m xdyna_jax.porting", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    def config_args(sp):
        sp.add_argument("--kind", choices=KINDS, required=True)
        sp.add_argument("--config", help="our model-config YAML, or a diffusers config.json")
        sp.add_argument("--xdyna-yaml", help="x_dyna.yaml (unet_additional_kwargs) to go with a config.json")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")

    c = sub.add_parser("convert", help="official checkpoint(s) -> Orbax params + config.yaml")
    config_args(c)
    c.add_argument("--preset", choices=("sd15", "tiny"),
                   help="config when --config is not given (default sd15; a ControlNet, VAE or CLIP folder "
                        "reads its own)")
    c.add_argument("--checkpoint", help="state dict file (or a diffusers folder for a ControlNet or VAE, "
                                        "a transformers folder for clip_vision / clip_text)")
    c.add_argument("--init", help="UNet init file (animatediff_v15_v1_ipplus.pth) to overlay --checkpoint on")
    c.add_argument("--sd15", help="plain SD1.5 UNet weights: start a fresh X-Dyna UNet from them")
    c.add_argument("--seed", type=cli.int_range(0, 2**32 - 1), default=0, help="init seed of the new layers with --sd15")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--force", action="store_true", help="overwrite an existing output")
    c.set_defaults(func=_convert)

    e = sub.add_parser("export", help="Orbax params -> official-named .safetensors")
    config_args(e)
    e.add_argument("--params", required=True, help="directory written by convert (or an Orbax params dir)")
    e.add_argument("--out", required=True, help="output .safetensors file")
    e.add_argument("--dtype", choices=DTYPES, help="cast every tensor (default: keep the param dtypes)")
    e.set_defaults(func=_export)

    i = sub.add_parser("inspect", help="list the keys, shapes and dtypes of a checkpoint")
    i.add_argument("file")
    i.set_defaults(func=_inspect)

    from .bundle_cli import add_commands  # bundle, export-bundle: every network in one folder

    add_commands(sub, DTYPES)
    from .verify import add_command  # verify: a bundle against the official PyTorch code

    add_command(sub)
    return p


def _run(argv) -> int | None:
    args = build_parser().parse_args(argv)
    return args.func(args)  # verify returns 1 when a network is out of tolerance


def main(argv=None) -> int:
    """Exit code 0, or 2 with one ``error: ...`` line for bad input (``xdyna_jax.cli.run``)."""
    return cli.run(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
