#!/usr/bin/env python3
"""Time the OFFICIAL PyTorch X-Dyna (bytedance/X-Dyna) on the CPU: the UNet3D forward, or a whole
``XDynaPipeline`` call. The other half of ``official_bridge.py``, which writes the spec and weights
and runs this file with the oracle venv's python (tools/official_parity/README.md):

    /work/oracle_venv/bin/python benchmarks/official_xdyna.py --xdyna-repo /tmp/xdyna --spec spec.json

The official code is imported from ``--xdyna-repo`` only, with the import-time patches of
``xdyna_jax/porting/official_runner.py`` (exact attention instead of xformers, no torchvision)
plus a ``GaussianBlur`` for the pipeline's blurred init. The spec (JSON) holds diffusers-style
configs, the path of an npz of official-named weights and the shapes; see ``official_bridge.py``.
Prints one JSON line: {"compile_s": 0, "times": [...], "versions": {...}, ...}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
# before official_runner's torchvision stub: transformers looks torchvision up by import spec, which a stub lacks
import transformers  # noqa: F401

# by its path: the oracle venv has no JAX, so the xdyna_jax package (which imports it) is not imported
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "xdyna_jax" / "porting"))
from official_runner import deep_update, load_official, shipped_unet_kwargs, versions  # noqa: E402


class GaussianBlur:
    """torchvision's ``GaussianBlur`` as the pipeline calls it (odd kernel, fixed sigma, reflect padding)."""

    def __init__(self, kernel_size, sigma):
        self.k = kernel_size[0]
        self.sigma = float(sigma[0])

    def __call__(self, x):
        half = (self.k - 1) * 0.5
        t = torch.linspace(-half, half, self.k, dtype=torch.float32)
        g = torch.exp(-0.5 * (t / self.sigma) ** 2)
        g = (g / g.sum()).to(x.dtype)
        c = x.shape[1]
        pad = self.k // 2
        y = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = torch.nn.functional.conv2d(y, g.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        return torch.nn.functional.conv2d(y, g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


class EmptyPromptTokenizer:
    """Stands in for ``CLIPTokenizer`` (no vocabulary files offline): every prompt gets the given ids."""

    def __init__(self, ids):
        self.ids = torch.tensor(ids, dtype=torch.long)
        self.model_max_length = len(ids)

    def __call__(self, prompts, **_):
        n = len(prompts) if isinstance(prompts, list) else 1
        ids = self.ids[None].repeat(n, 1)
        return types.SimpleNamespace(input_ids=ids, attention_mask=torch.ones_like(ids))

    def batch_decode(self, ids):
        return ["" for _ in ids]


def _load(model, weights: dict, prefix: str):
    own = {k[len(prefix) + 1:]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()
           if k.startswith(prefix + "/")}
    missing, unexpected = model.load_state_dict(own, strict=False)
    bad = [k for k in missing if not k.endswith(".pe") and "position_ids" not in k]
    if bad or unexpected:
        raise SystemExit(f"{prefix}: weights do not fit: missing {bad[:5]}, unexpected {list(unexpected)[:5]}")
    return model.eval()


def _count(module, name: str, stats: dict):
    """Calls and seconds spent in ``module`` (forward hooks): where the pipeline's time goes."""
    def pre(*_):
        stats.setdefault(name, [0, 0.0])[0] += 1
        stats[name][1] -= time.perf_counter()

    def post(*_):
        stats[name][1] += time.perf_counter()

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post)


def build_unet(off, spec, weights):
    xkw = deep_update(shipped_unet_kwargs(off.repo), spec["unet"]["kwargs"])
    return _load(off.UNet3DConditionModel.from_config(spec["unet"]["config"], **xkw), weights, "unet")


def time_unet(off, spec, weights):
    """The UNet3D forward on a (B, C, F, h, w) window (no ControlNet residuals, as unet_bench.py)."""
    unet = build_unet(off, spec, weights)
    rng = np.random.default_rng(1)
    b, f, h, w = spec["batch"], spec["frames"], spec["height"], spec["width"]
    x = torch.from_numpy(rng.standard_normal((b, 4, f, h, w)).astype(np.float32))
    ctx = torch.from_numpy(rng.standard_normal((b, spec["tokens"], spec["unet"]["config"]["cross_attention_dim"]))
                           .astype(np.float32))
    t = torch.tensor(500)
    times = []
    with torch.no_grad():
        for _ in range(spec["iters"] + 1):  # the first call warms the allocator; not counted
            t0 = time.perf_counter()
            unet(x, t, encoder_hidden_states=ctx)
            times.append(time.perf_counter() - t0)
    return {"times": times[1:]}


def time_pipeline(off, spec, weights):
    """One ``XDynaPipeline.__call__`` as ``inference_xdyna.py`` makes it (blurred reference init,
    closed-loop windows, CFG, pose + S-Face ControlNets, frame-by-frame VAE decode)."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    # the pipeline imports torchvision.transforms.GaussianBlur (official_runner's stub is gone after loading)
    sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    sys.modules["torchvision.transforms"] = types.SimpleNamespace(GaussianBlur=GaussianBlur)
    from animatediff.pipelines.pipeline_xdyna import XDynaPipeline
    from PIL import Image

    unet = build_unet(off, spec, weights)
    pose_cn = _load(off.ControlNetModel.from_config(spec["pose_controlnet"]), weights, "pose_controlnet")
    face_cn = None
    if spec.get("face_controlnet"):
        face_cn = _load(off.ControlNetModel.from_config(spec["face_controlnet"]), weights, "face_controlnet")
    vae = _load(AutoencoderKL.from_config(spec["vae"]), weights, "vae")
    text = _load(CLIPTextModel(CLIPTextConfig(**spec["text_encoder"])), weights, "text_encoder")
    sched = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                          steps_offset=1, clip_sample=False)
    pipe = XDynaPipeline(vae=vae, text_encoder=text, tokenizer=EmptyPromptTokenizer(spec["prompt_ids"]), unet=unet,
                         controlnet=pose_cn, controlnet_face=face_cn, scheduler=sched)
    pipe.set_progress_bar_config(disable=True)
    stats = {}
    for name, m in (("unet", unet), ("pose_controlnet", pose_cn), ("face_controlnet", face_cn), ("vae_decode", vae)):
        if m is not None:
            _count(m.decoder if name == "vae_decode" else m, name, stats)
    n, hh, ww = spec["frames"], spec["height"], spec["width"]
    rng = np.random.default_rng(2)
    frames = lambda: [Image.fromarray(rng.integers(0, 256, (hh, ww, 3), np.uint8)) for _ in range(n)]  # noqa: E731
    pose, face_local, face_global = frames(), frames(), frames()
    tok = torch.from_numpy(weights["inputs/image_tokens"])
    uncond = torch.from_numpy(weights["inputs/uncond_image_tokens"])
    ref = torch.from_numpy(weights["inputs/ref_latent"])  # (1, 4, 1, h, w), as inference_xdyna.py passes it
    times = []
    for _ in range(spec["iters"]):
        gen = torch.Generator().manual_seed(40)
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe(prompt="", generator=gen, latents=ref.clone(), video_length=n, height=hh, width=ww,
                 num_inference_steps=spec["steps"], guidance_scale=spec["guidance_scale"], noise_mode="iid",
                 negative_prompt="", repeat_latents=True, gaussian_blur=True, strength=1.0,
                 cond_image_embeds=tok, un_cond_image_embeds=uncond, controlnet_condition=pose,
                 sface_global_condition=face_global if face_cn is not None else None,
                 sface_local_condition=face_local if face_cn is not None else None,
                 use_controlnet=True, cross_id=True)
        times.append(time.perf_counter() - t0)
    return {"times": times, "calls_and_seconds": stats}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--xdyna-repo", required=True, help="bytedance/X-Dyna checkout (animatediff/, configs/)")
    ap.add_argument("--spec", required=True)
    args = ap.parse_args(argv)
    spec = json.loads(Path(args.spec).read_text())
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    off = load_official(args.xdyna_repo)
    weights = dict(np.load(spec["weights"]))
    run = {"unet": time_unet, "pipeline": time_pipeline}[spec["what"]]
    out = run(off, spec, weights)
    out.update(versions=versions(), threads=torch.get_num_threads())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
