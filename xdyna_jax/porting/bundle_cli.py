"""``python -m xdyna_jax.porting bundle|export-bundle``: the official checkpoint set <-> one bundle folder.

  bundle --out DIR [--config configs/sd15.yaml | --preset sd15|tiny] [--set unet.dtype=bfloat16]
         --unet unet-checkpoint-epoch-5.ckpt --unet-init animatediff_v15_v1_ipplus.pth
         --pose-controlnet controlnet-checkpoint-epoch-5.ckpt --face-controlnet controlnet-face-checkpoint-epoch-2.ckpt
         --ip-adapter ip-adapter-plus_sd15.bin --image-encoder IP-Adapter/models/image_encoder
         --vae stable-diffusion-v1-5/vae --text-encoder stable-diffusion-v1-5/text_encoder
         --tokenizer stable-diffusion-v1-5/tokenizer
  bundle --out DIR --official pretrained_weights/ [--xdyna-yaml configs/x_dyna.yaml] [--preset|--config] [--set ...]
  bundle --out DIR --hub [--revision REV | --revision OWNER/NAME=REV ...] [--offline] [--xdyna-yaml ...]
  export-bundle --bundle DIR --out OUT_DIR [--dtype float16]

Every checkpoint is optional: a part not given is absent from the bundle (``load_bundle`` says which
parts it found). Without ``--face-controlnet`` the bundle is pose-only X-Dyna.
``--official`` finds every part of the official folder (``official.py``) and takes the model config from the
folder's own configs (``official_config.py``); ``--hub`` downloads that set first (``hub.py``). Part flags
still replace single parts. A part flag may name a checkpoint's folder when it holds one checkpoint.
"""
from __future__ import annotations

from pathlib import Path

from xdyna_jax import config as config_lib

from .io import PortingError

PRESETS = {"sd15": "sd15.yaml", "tiny": "tiny.yaml"}
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
_FILES = ("unet", "unet_init", "pose_controlnet", "face_controlnet", "ip_adapter", "vae", "image_encoder",
          "text_encoder")


def models_config(config: str | None, preset: str | None, overrides=()):
    """The ``ModelsConfig`` from a YAML file, or a preset (``configs/<preset>.yaml``)."""
    from xdyna_jax.models import ModelsConfig

    if config is not None and preset is not None:
        raise PortingError("give either --config or --preset")
    path = Path(config) if config is not None else CONFIG_DIR / PRESETS[preset or "sd15"]
    return config_lib.load(ModelsConfig, path, overrides)


def _bundle(args) -> None:
    from .bundle import convert_bundle, save_bundle

    out = Path(args.out).absolute()
    if out.exists() and not args.force:
        raise PortingError(f"{out} exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise PortingError(f"{out.parent}: no such directory for the bundle")
    base = models_config(args.config, args.preset, args.set)
    files = {k: getattr(args, k) for k in _FILES if getattr(args, k) is not None}
    head, tokenizer, configs = [], args.tokenizer, {}
    if args.official is not None or args.hub:
        cfg, files, tokenizer, head, configs = _official_inputs(args, base, files)
        print("\n".join(head), flush=True)
    elif args.revision or args.offline or args.xdyna_yaml:
        raise PortingError("--revision, --offline and --xdyna-yaml go with --official or --hub")
    else:
        from .official import given_file

        cfg, files = base, {k: given_file(k, v) for k, v in files.items()}
    params, cfg, report = convert_bundle(cfg, **files)
    save_bundle(out, params, cfg, "\n".join(head + [report]), tokenizer=tokenizer, force=args.force, consume=True,
                sources={**{k: str(Path(v).absolute()) for k, v in files.items()},
                         # the official configs too: `verify` builds the official networks from them
                         **{f"{k}_config": str(Path(v).absolute()) for k, v in configs.items()}})
    print(report)  # the head (what was found, the configs) was printed before converting
    print(f"wrote {out} (parts: {', '.join(sorted(params))})")


def _official_inputs(args, base, files):
    """(config, convert_bundle files, tokenizer, report head, {part: config.json}) of the official folder or the
    hub's copy."""
    from . import hub, official, official_config

    if args.official and args.hub:
        raise PortingError(f"--official {args.official} and --hub: give the folder or the hub, not both")
    if not args.official and not args.hub:
        raise PortingError("--official needs the official pretrained_weights/ folder (or add --hub to download it)")
    if args.hub:
        roots, head = hub.download(hub.parse_revisions(args.revision), args.offline)
        where, search = "the Hugging Face Hub", []
    else:
        if args.revision or args.offline:
            raise PortingError("--revision and --offline go with --hub")
        roots, head = official.folder_roots(args.official), []
        where, search = str(roots.mounts[0][1]), [roots.mounts[0][1], roots.mounts[0][1].parent]
    yaml_path, yaml_note = official.find_xdyna_yaml(args.xdyna_yaml, search)
    parts = official.find_parts(roots, files, args.tokenizer, where)
    stated = f"--config {args.config}" if args.config else (f"--preset {args.preset}" if args.preset else None)
    cfg, cfg_lines = official_config.models_config(parts, base, stated, args.set, yaml_path, args.preset or "sd15")
    return cfg, parts.files, parts.tokenizer, head + parts.lines + [yaml_note] + cfg_lines, parts.configs


def _export_bundle(args) -> None:
    import numpy as np

    from .bundle import export_bundle, load_bundle

    bundle = load_bundle(args.bundle)
    dtype = None
    if args.dtype is not None:
        import jax.numpy as jnp

        dtype = np.dtype(getattr(jnp, args.dtype))
    for f in export_bundle(bundle, args.out, dtype=dtype):
        print(f"wrote {f}")


def add_commands(sub, dtypes) -> None:
    """Register ``bundle`` and ``export-bundle`` on the porting CLI's sub-parsers."""
    b = sub.add_parser("bundle", help="the official checkpoint set -> one bundle folder (all networks)")
    b.add_argument("--out", required=True, help="output bundle folder")
    b.add_argument("--official", nargs="?", const="", metavar="DIR",
                   help="the official pretrained_weights/ folder, laid out as bytedance/X-Dyna's README: every part "
                        "and its config from there (part flags still replace single parts)")
    b.add_argument("--hub", action="store_true",
                   help="download the official set from the Hugging Face Hub into its cache (Boese0601/X-Dyna, "
                        "stable-diffusion-v1-5/stable-diffusion-v1-5, h94/IP-Adapter; only the files needed)")
    b.add_argument("--revision", action="append", default=[], metavar="REV|REPO=REV",
                   help="with --hub: a revision of Boese0601/X-Dyna, or REPO=REV for another source (default main)")
    b.add_argument("--offline", action="store_true",
                   help="with --hub: use the hub cache only (as HF_HUB_OFFLINE=1)")
    b.add_argument("--xdyna-yaml", help="with --official/--hub: the official configs/x_dyna.yaml (default: "
                                        "DIR/configs/ or DIR/../configs/; else the preset's X-Dyna settings)")
    b.add_argument("--config", help="ModelsConfig YAML (configs/sd15.yaml)")
    b.add_argument("--preset", choices=tuple(PRESETS), help="configs/<preset>.yaml (default sd15)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. unet.param_dtype=bfloat16")
    b.add_argument("--unet", help="X-Dyna UNet checkpoint (unet-checkpoint-epoch-5.ckpt, or its folder), or a full "
                                  "UNet state dict")
    b.add_argument("--unet-init", help="UNet init file (animatediff_v15_v1_ipplus.pth, or SD1.5's unet/ holding it) "
                                       "that --unet is overlaid on")
    b.add_argument("--pose-controlnet", help="pose ControlNet .ckpt or diffusers folder")
    b.add_argument("--face-controlnet", help="S-Face ControlNet .ckpt or diffusers folder")
    b.add_argument("--ip-adapter", help="ip-adapter-plus_sd15.bin (its image_proj: the Resampler)")
    b.add_argument("--vae", help="SD1.5 vae/ folder or weights file")
    b.add_argument("--image-encoder", help="IP-Adapter models/image_encoder folder or weights file")
    b.add_argument("--text-encoder", help="SD1.5 text_encoder/ folder or weights file")
    b.add_argument("--tokenizer", help="SD1.5 tokenizer/ folder (vocab.json, merges.txt), copied into the bundle")
    b.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    b.set_defaults(func=_bundle)

    e = sub.add_parser("export-bundle", help="a bundle folder -> one official-named .safetensors per part")
    e.add_argument("--bundle", required=True, help="bundle folder written by `bundle`")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--dtype", choices=dtypes, help="cast every tensor (default: keep the param dtypes)")
    e.set_defaults(func=_export_bundle)
