"""The tiny world's held-out scores: self-reenactment of fresh test-split clips, sampled from pure noise.

  python -m xdyna_jax.world.score --weights DIR [--clips 16] [--seed 0] [--steps 25] [--out DIR]

Draws ``--clips`` held-out clips from ``--seed`` (figures training never drew, streams no training seed
shares): half on the still background, half on moving ones (water, flicker, clouds), taken in index order
from that seed's test stream. Each clip's reference is its first frame, its skeletons drive the frames after
it, and those frames are the ground truth. Five videos per clip:

* ``trained``: the weights, sampled at the official strength 1.0 with ``--steps`` DDIM steps
  (``configs/sample_tiny_world.yaml``);
* ``static``: the reference frame repeated; ``vae_reference``: its VAE round trip (encoder mean, decoder)
  repeated — what copying the reference through the autoencoder scores;
* ``random``: seeded random weights of the same networks; ``adapter_off``: the trained weights with the
  Dynamics-Adapter's residual switched off (every ``to_out_ff`` zeroed).

Scores, means over clips of per-frame means: ``psnr``, ``ssim``, ``lpips`` (AlexNet) over the whole frame;
``figure_iou``: IoU of the figure found in each generated frame (``probe.figure_mask``: pixels that differ
from the world's background plate) with the figure the world drew; ``figure_lpips``: LPIPS of the crop
around the union of the true and the reference figure masks, dilated by ``FIGURE_DILATE`` px, with the
generated pixels inside that region and the true ones outside it (so only the figure region differs).
Written to ``{out}/metrics.json`` (``{variant: {...}, "clips": N, "seed": S}``) and ``{out}/scores.md``.
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from xdyna_jax import cli
from xdyna_jax.eval.frames import frame_scores
from xdyna_jax.eval.lpips import lpips_scores

from .jobs import world_case
from .probe import figure_mask, iou

VARIANTS = ("trained", "static", "vae_reference", "random", "adapter_off")
METRICS = ("figure_iou", "figure_lpips", "lpips", "psnr", "ssim")
FIGURE_DILATE = 6
MIN_CROP = 48  # AlexNet's five layers need at least this many pixels a side
REPO = Path(__file__).resolve().parents[2]


def held_out_cases(n: int, seed: int, frames: int, height: int, width: int) -> list[dict]:
    """``n`` test clips of ``seed``: the first ``n // 2`` (rounded up) with the still background and the first
    ``n // 2`` with a moving one, in index order (``jobs.world_case`` dicts)."""
    still, moving, i = [], [], 0
    want_still, want_moving = n - n // 2, n // 2
    while len(still) < want_still or len(moving) < want_moving:
        c = world_case(i, frames, height, width, seed)
        (still if c["background"] == "still" else moving).append(c)
        i += 1
        if i > 50 * n + 100:
            raise RuntimeError(f"seed {seed}: too few still/moving clips in {i} draws")
    return still[:want_still] + moving[:want_moving]


def adapter_off(params):
    """The params with every ``to_out_ff`` (the Dynamics-Adapter's output projection) zeroed."""
    import jax

    def zero(path, x):
        return x * 0 if "to_out_ff" in jax.tree_util.keystr(path) else x

    return {**params, "unet": jax.tree_util.tree_map_with_path(zero, params["unet"])}


def vae_round_trip(params, models, image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 through the VAE: encoder mean, decoder."""
    import jax.numpy as jnp

    from xdyna_jax.models.vae import AutoencoderKL

    vae = AutoencoderKL(models.vae)
    x = jnp.asarray(image[None], jnp.float32) / 127.5 - 1.0
    mean, _ = vae.apply({"params": params["vae"]}, x, method="encode")
    y = vae.apply({"params": params["vae"]}, mean, method="decode")
    return np.asarray(jnp.clip((y[0] + 1.0) * 127.5, 0, 255).round().astype(jnp.uint8))


def figure_lpips(video: np.ndarray, case: dict) -> float:
    """LPIPS of the figure region (module doc), mean over frames."""
    import cv2

    kernel = np.ones((2 * FIGURE_DILATE + 1,) * 2, np.uint8)
    region = np.stack([cv2.dilate((m | case["ref_mask"]).astype(np.uint8), kernel) > 0 for m in case["masks"]])
    truth = case["truth"]
    composite = np.where(region[..., None], video, truth)
    ys, xs = np.nonzero(region.any(0))
    h, w = region.shape[1:]
    y0, y1 = _span(ys.min(), ys.max() + 1, h)
    x0, x1 = _span(xs.min(), xs.max() + 1, w)
    return float(np.mean(lpips_scores(composite[:, y0:y1, x0:x1], truth[:, y0:y1, x0:x1])[0]))


def _span(lo: int, hi: int, size: int) -> tuple[int, int]:
    """A window of at least MIN_CROP (at most ``size``) pixels centred on [lo, hi), kept inside [0, size)."""
    want = min(max(hi - lo, MIN_CROP), size)
    start = min(max(0, (lo + hi) // 2 - want // 2), size - want)
    return int(start), int(start + want)


def clip_scores(video: np.ndarray, case: dict) -> dict:
    f = frame_scores(video, case["truth"])
    return {"figure_iou": iou(figure_mask(video, case["plates"]), case["masks"]),
            "figure_lpips": figure_lpips(video, case),
            "lpips": float(np.mean(lpips_scores(video, case["truth"])[0])),
            "psnr": float(np.mean(f["psnr"])), "ssim": float(np.mean(f["ssim"]))}


def generate(cfg, params, cases) -> list[np.ndarray]:
    """The sampled videos of ``cases`` in order (``sampling.run.sample_inputs``)."""
    from xdyna_jax.sampling.run import sample_inputs

    jobs = [c["job"] for c in cases]
    inputs = [c["inputs"] for c in cases]
    if cfg.models.face_controlnet is None:
        inputs = [dataclasses.replace(x, face=None) for x in inputs]
    out = [None] * len(jobs)
    for batch, videos, _ in sample_inputs(cfg, params, jobs, inputs):
        for k, i in enumerate(batch):
            out[i] = videos[k]
    return out


def videos_of(name: str, cfg, trained, cases, random_seed: int = 1) -> list[np.ndarray]:
    import jax

    from xdyna_jax.models import xdyna

    if name == "static":
        return [np.repeat(c["inputs"].reference_rgb[None], len(c["truth"]), 0) for c in cases]
    if name == "vae_reference":
        return [np.repeat(vae_round_trip(trained, cfg.models, c["inputs"].reference_rgb)[None], len(c["truth"]), 0)
                for c in cases]
    params = {"trained": lambda: trained, "adapter_off": lambda: adapter_off(trained),
              "random": lambda: xdyna.init_params(cfg.models, jax.random.key(random_seed))}[name]()
    return generate(cfg, params, cases)


def evaluate(cfg, trained, cases, variants=VARIANTS, log=print) -> dict:
    """{variant: {metric: mean over clips, "per_clip": {...}, "videos": [...]}} for ``cases``."""
    results = {}
    for name in variants:
        videos = videos_of(name, cfg, trained, cases)
        per = [clip_scores(v, c) for v, c in zip(videos, cases)]
        results[name] = {k: float(np.mean([p[k] for p in per])) for k in METRICS}
        results[name]["per_clip"] = {k: [p[k] for p in per] for k in METRICS}
        results[name]["videos"] = videos
        log(f"[world-score] {name}: " + ", ".join(f"{k} {results[name][k]:.4f}" for k in METRICS))
    return results


def targets(results: dict) -> dict[str, bool]:
    """The issue's targets, each a bool (``None`` where a variant is missing)."""
    def get(v, k):
        return results.get(v, {}).get(k)

    tr, st, vr = (results.get(v) for v in ("trained", "static", "vae_reference"))
    out = {}
    if tr and st:
        out["figure_iou >= static + 0.15"] = tr["figure_iou"] >= st["figure_iou"] + 0.15
        out["figure_lpips < static"] = tr["figure_lpips"] < st["figure_lpips"]
    if tr and vr:
        out["lpips <= vae_reference"] = tr["lpips"] <= vr["lpips"]
    if tr and get("adapter_off", "figure_lpips") is not None:
        out["adapter_off worse on figure_lpips"] = get("adapter_off", "figure_lpips") > tr["figure_lpips"]
    if tr and "random" in results:
        r = results["random"]
        out["random worse on everything"] = (r["figure_iou"] < tr["figure_iou"] and r["psnr"] < tr["psnr"]
                                             and r["ssim"] < tr["ssim"] and r["lpips"] > tr["lpips"]
                                             and r["figure_lpips"] > tr["figure_lpips"])
    return out


def markdown(results: dict, clips: int, seed: int, cfg) -> str:
    s = cfg.sample
    rows = [f"{clips} held-out clips of seed {seed} (half still, half moving backgrounds), {s.frames} frames at "
            f"{s.height}x{s.width}, {s.steps} DDIM steps ({s.timestep_spacing}) at strength {s.strength}, guidance "
            f"{s.guidance_scale} (rescale {s.guidance_rescale}).", "",
            "| video | figure IoU ↑ | figure LPIPS ↓ | LPIPS ↓ | PSNR ↑ | SSIM ↑ |", "|---|---:|---:|---:|---:|---:|"]
    for v in VARIANTS:
        if v in results:
            r = results[v]
            rows.append(f"| {v} | {r['figure_iou']:.3f} | {r['figure_lpips']:.4f} | {r['lpips']:.4f} | "
                        f"{r['psnr']:.2f} | {r['ssim']:.4f} |")
    rows += ["", "Targets: " + "; ".join(f"{k}: {'met' if ok else 'not met'}" for k, ok in targets(results).items())]
    return "\n".join(rows) + "\n"


def main(argv=None) -> int:
    from xdyna_jax.porting import PortingError
    from xdyna_jax.porting.bundle import load_weights
    from xdyna_jax.sampling import run

    p = cli.ArgumentParser(prog="python -m xdyna_jax.world.score", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(REPO / "weights" / "tiny_world"), help="exported tiny-world weights")
    p.add_argument("--clips", type=cli.int_range(1), default=16, help="held-out clips (half still, half moving)")
    p.add_argument("--seed", type=cli.int_range(0), default=0, help="the held-out draw's seed")
    p.add_argument("--steps", type=cli.int_range(1), default=25, help="DDIM steps (strength 1.0)")
    p.add_argument("--out", default="runs/tiny_world/scores", help="metrics.json, scores.md and videos go here")
    p.add_argument("--config", default=str(REPO / "configs" / "sample_tiny_world.yaml"))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--videos", type=cli.int_range(0), default=2, help="side-by-side mp4s of the first N clips")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="sample config overrides (sample.guidance_scale=2)")
    args = p.parse_args(argv)
    weights = Path(args.weights)
    if not (weights / "config.yaml").is_file():
        raise cli.UserError(f"--weights {args.weights}: not an exported tiny-world folder (config.yaml expected; "
                            f"`make tiny-world` writes one)")
    # 4 clips per compiled batch: fewer, fuller calls than the embedded default's one job (overridable)
    cfg = run.load_run_config(args.config, [f"sample.steps={args.steps}", "sample.strength=1.0", "sample.batch_size=4",
                                            *args.overrides])
    run.check_config(cfg)
    out = cli.check_output_path(args.out, kind="dir", option="--out")
    try:
        params, models = load_weights(weights)
    except (PortingError, ValueError, OSError) as e:
        raise cli.UserError(f"--weights {args.weights}: cannot load the tiny-world weights ({e})") from e
    cfg = dataclasses.replace(cfg, models=models)
    s = cfg.sample
    cases = held_out_cases(args.clips, args.seed, s.frames, s.height, s.width)
    results = evaluate(cfg, params, cases, args.variants)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {v: {k: r[k] for k in METRICS} for v, r in results.items()}
    metrics.update(clips=args.clips, seed=args.seed, steps=args.steps,
                   targets={k: bool(v) for k, v in targets(results).items()})
    table = markdown(results, args.clips, args.seed, cfg)
    for name, text in (("metrics.json", json.dumps(metrics, indent=1) + "\n"), ("scores.md", table)):
        with cli.atomic_file(out / name) as tmp:
            tmp.write_text(text)
    from xdyna_jax.data.video import write_video

    for i, c in enumerate(cases[:args.videos]):  # reference | skeleton | truth | each variant
        panels = [np.repeat(c["inputs"].reference_rgb[None], len(c["truth"]), 0), c["inputs"].pose, c["truth"]]
        panels += [results[v]["videos"][i] for v in args.variants]
        write_video(out / f"{c['job'].name}_compare.mp4", np.concatenate(panels, axis=2), fps=cfg.fps)
    print(table)
    print(f"[world-score] -> {out / 'metrics.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
