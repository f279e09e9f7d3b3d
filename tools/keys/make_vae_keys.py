"""Write ``tests/data/keys/vae_keys.tsv``: the key and shape of every tensor of diffusers'
``AutoencoderKL`` at the SD1.5 ``vae/config.json`` (one ``key<TAB>shape`` line each, in state-dict order).

The model is built on the meta device, so nothing is allocated or downloaded. Re-run with

    .venv/bin/python tools/keys/make_vae_keys.py [--out tests/data/keys/vae_keys.tsv]
"""
from __future__ import annotations

import argparse
from pathlib import Path

# stable-diffusion-v1-5/vae/config.json, less bookkeeping
SD15_VAE_CONFIG = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 512,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu", "scaling_factor": 0.18215,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "tests/data/keys/vae_keys.tsv"))
    args = ap.parse_args(argv)
    import torch
    from diffusers import AutoencoderKL

    with torch.device("meta"):
        vae = AutoencoderKL(**SD15_VAE_CONFIG)
    lines = [f"{k}\t{tuple(v.shape)}" for k, v in vae.state_dict().items()]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({len(lines)} tensors)")


if __name__ == "__main__":
    main()
