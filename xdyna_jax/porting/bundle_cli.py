"""``python -m xdyna_jax.porting bundle|export-bundle``: the official checkpoint set <-> one bundle folder.

  bundle --out DIR [--config configs/sd15.yaml | --preset sd15|tiny] [--set unet.dtype=bfloat16]
         --unet unet-checkpoint-epoch-5.ckpt --unet-init animatediff_v15_v1_ipplus.pth
         --pose-controlnet controlnet-checkpoint-epoch-5.ckpt --face-controlnet controlnet-face-checkpoint-epoch-2.ckpt
         --ip-adapter ip-adapter-plus_sd15.bin --image-encoder IP-Adapter/models/image_encoder
         --vae stable-diffusion-v1-5/vae --text-encoder stable-diffusion-v1-5/text_encoder
         --tokenizer stable-diffusion-v1-5/tokenizer
  export-bundle --bundle DIR --out OUT_DIR [--dtype float16]

Every checkpoint is optional: a part not given is absent from the bundle (``load_bundle`` says which
parts it found). Without ``--face-controlnet`` the bundle is pose-only X-Dyna.
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
    cfg = models_config(args.config, args.preset, args.set)
    files = {k: getattr(args, k) for k in _FILES if getattr(args, k) is not None}
    params, cfg, report = convert_bundle(cfg, **files)
    save_bundle(out, params, cfg, report, tokenizer=args.tokenizer, force=args.force,
                sources={k: str(Path(v).absolute()) for k, v in files.items()})
    print(report)
    print(f"wrote {out} (parts: {', '.join(sorted(params))})")


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
    b.add_argument("--config", help="ModelsConfig YAML (configs/sd15.yaml)")
    b.add_argument("--preset", choices=tuple(PRESETS), help="configs/<preset>.yaml (default sd15)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. unet.param_dtype=bfloat16")
    b.add_argument("--unet", help="X-Dyna UNet checkpoint (unet-checkpoint-epoch-5.ckpt), or a full UNet state dict")
    b.add_argument("--unet-init", help="UNet init file (animatediff_v15_v1_ipplus.pth) that --unet is overlaid on")
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
