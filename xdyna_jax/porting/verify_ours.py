"""Our side of ``porting verify``: the seeded inputs (official layouts) and our networks' outputs on them."""
from __future__ import annotations

import time
import zlib
from typing import Mapping

import numpy as np

from .official_runner import OFFICIAL_IP_TOKENS, OFFICIAL_TEXT_TOKENS


def draw_inputs(cfg, checks, latent: tuple[int, int], frames: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs ``{"<check>/<name>": array}`` in the official layouts; each check draws from its own stream,
    so the inputs of one network do not depend on which others the bundle has."""
    h, w = latent
    f, down = frames, cfg.vae.downscale
    H, W, D = h * down, w * down, cfg.unet.cross_attention_dim
    ip = OFFICIAL_IP_TOKENS if cfg.unet.unet_use_ipadapter else 0
    out = {}
    for check in checks:
        rng = np.random.default_rng([seed, zlib.crc32(check.encode())])
        n = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
        u = lambda lo, *s: rng.uniform(lo, 1.0, s).astype(np.float32)  # noqa: E731
        t = np.array(rng.integers(1, 1000), np.int64)
        if check == "unet":
            x = {"sample": n(1, 4, 1 + f, h, w), "timestep": t, "context": n(1, OFFICIAL_TEXT_TOKENS + ip, D)}
        elif check.endswith("controlnet"):
            c = getattr(cfg, check)
            x = {"sample": n(f, c.in_channels, h, w), "timestep": t, "text": n(f, OFFICIAL_TEXT_TOKENS, D),
                 "cond": u(0.0, f, c.conditioning_channels, H, W)}
        elif check == "resampler":
            x = {"x": n(1, cfg.image_encoder.num_positions, cfg.resampler.embedding_dim)}
        elif check == "vae":
            x = {"image": u(-1.0, 1, cfg.vae.in_channels, H, W), "latent": n(1, cfg.vae.latent_channels, h, w)}
        elif check == "image_encoder":
            s = cfg.image_encoder.image_size
            x = {"pixels": n(1, cfg.image_encoder.num_channels, s, s)}
        elif check == "text_encoder":
            x = {"ids": rng.integers(0, cfg.text_encoder.vocab_size, (1, cfg.text_encoder.max_position_embeddings))}
        else:  # denoise: a window of the clean reference + F noisy frames; conditions per noisy frame
            x = {"window": n(1, 4, 1 + f, h, w), "timestep": t, "text": n(1, OFFICIAL_TEXT_TOKENS, D),
                 "image_tokens": n(1, ip, D), "pose": u(0.0, f, cfg.pose_controlnet.conditioning_channels, H, W)}
            if "face_controlnet" in checks:
                x["face"] = u(0.0, f, cfg.face_controlnet.conditioning_channels, H, W)
        out.update({f"{check}/{k}": v for k, v in x.items()})
    return out


# --- our side ---------------------------------------------------------------------------------------

def _cl(a):
    """Official channels-first (N, C, ...) -> ours channels-last."""
    import jax.numpy as jnp

    return jnp.moveaxis(a, 1, -1)


def _cf(a):
    import jax.numpy as jnp

    return jnp.moveaxis(a, -1, 1)


def _ours_one(check: str, params, cfg, x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    from xdyna_jax.models import ControlNet, Resampler, UNet3D, xdyna
    from xdyna_jax.models.clip import CLIPTextModel, CLIPVisionModel
    from xdyna_jax.models.vae import AutoencoderKL

    p = {"params": params[check]} if check in params else None
    if check == "unet":
        return {"out": _cf(UNet3D(cfg.unet).apply(p, _cl(x["sample"]), x["timestep"], x["context"]))}
    if check.endswith("controlnet"):
        down, mid = ControlNet(getattr(cfg, check)).apply(p, _cl(x["sample"]), x["timestep"], x["text"],
                                                         _cl(x["cond"]), 1.0)
        return {**{f"down_{i}": _cf(d) for i, d in enumerate(down)}, "mid": _cf(mid)}
    if check == "resampler":
        return {"out": Resampler(cfg.resampler).apply(p, x["x"])}
    if check == "vae":
        vae = AutoencoderKL(cfg.vae)
        mean, logvar = vae.apply(p, _cl(x["image"]), method="encode")
        return {"mean": _cf(mean), "logvar": _cf(logvar), "decoded": _cf(vae.apply(p, _cl(x["latent"]),
                                                                                   method="decode"))}
    if check == "image_encoder":
        out = CLIPVisionModel(cfg.image_encoder).apply(p, _cl(x["pixels"]), output_hidden_states=True)
        res = {"penultimate": out.hidden_states[-2]}
        if out.image_embeds is not None:
            res["image_embeds"] = out.image_embeds
        return res
    if check == "text_encoder":
        return {"out": CLIPTextModel(cfg.text_encoder).apply(p, x["ids"]).last_hidden_state}
    b, f = x["window"].shape[0], x["window"].shape[2] - 1
    # (B*F, C, H, W) -> (B, F, H, W, C)
    per_clip = lambda c: _cl(c).reshape((b, f) + c.shape[2:] + c.shape[1:2])  # noqa: E731
    out = xdyna.denoise(params, _cl(x["window"]), x["timestep"], x["text"], x["image_tokens"], per_clip(x["pose"]),
                        per_clip(x["face"]) if "face" in x else None, cfg=cfg)
    return {"out": _cf(out)}


def our_outputs(params, cfg, checks, inputs, log=print) -> dict[str, np.ndarray]:
    """Our outputs ``{"<check>/<name>": array}`` (official layouts), float32 with the most precise matmuls."""
    import jax

    global _OURS_JIT
    if _OURS_JIT is None:  # one jitted function: a second verify in this process reuses its compiled programs
        _OURS_JIT = jax.jit(_ours_one, static_argnums=(0, 2))
    out = {}
    with jax.default_matmul_precision("highest"):
        for check in checks:
            x = {k.split("/", 1)[1]: v for k, v in inputs.items() if k.startswith(check + "/")}
            t0 = time.perf_counter()
            res = _OURS_JIT(check, {p: params[p] for p in _parts_of(check, params)}, cfg, x)
            out.update({f"{check}/{k}": np.asarray(v, np.float32) for k, v in res.items()})
            log(f"ours {check}: {time.perf_counter() - t0:.1f} s")
    return out


_OURS_JIT = None


def _parts_of(check: str, params) -> tuple[str, ...]:
    if check != "denoise":
        return (check,)
    return tuple(p for p in ("unet", "pose_controlnet", "face_controlnet") if p in params)
