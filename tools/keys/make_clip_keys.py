"""Write ``tests/data/keys/clip_vision_keys.tsv`` and ``clip_text_keys.tsv``: the key and shape of every
tensor of transformers' ``CLIPVisionModelWithProjection`` at IP-Adapter's ``models/image_encoder``
config (OpenCLIP ViT-H/14) and of ``CLIPTextModel`` at SD1.5's ``text_encoder`` config (one
``key<TAB>shape`` line each, in state-dict order).

transformers 5's ``CLIPTextModel`` names its tensors without the ``text_model.`` prefix that
transformers 4 used and that SD1.5's ``text_encoder/model.safetensors`` holds; the list is written
with the prefix (the on-disk names, which transformers 5 also loads).

The models are built on the meta device, so nothing is allocated or downloaded. Re-run with

    .venv/bin/python tools/keys/make_clip_keys.py [--out-dir tests/data/keys]
"""
from __future__ import annotations

import argparse
from pathlib import Path

# h94/IP-Adapter models/image_encoder/config.json, less bookkeeping
IP_ADAPTER_IMAGE_ENCODER = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 16,
    "image_size": 224, "patch_size": 14, "num_channels": 3, "hidden_act": "gelu", "layer_norm_eps": 1e-5,
    "projection_dim": 1024,
}
# stable-diffusion-v1-5/text_encoder/config.json, less bookkeeping
SD15_TEXT_ENCODER = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default=str(Path(__file__).resolve().parents[2] / "tests/data/keys"))
    args = ap.parse_args(argv)
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        models = {"clip_vision_keys.tsv": CLIPVisionModelWithProjection(CLIPVisionConfig(**IP_ADAPTER_IMAGE_ENCODER)),
                  "clip_text_keys.tsv": CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER))}
    for name, model in models.items():
        prefix = "text_model." if name.startswith("clip_text") else ""
        keys = {k if k.startswith(prefix) else prefix + k: v for k, v in model.state_dict().items()}
        lines = [f"{k}\t{tuple(v.shape)}" for k, v in keys.items()]
        out = Path(args.out_dir) / name
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out} ({len(lines)} tensors)")


if __name__ == "__main__":
    main()
