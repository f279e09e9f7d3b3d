"""The X-Dyna sampler: frames/s, compile time and compiled memory, and the official pipeline's frames/s.

Sections (``--sections``, default all three):
  speed    tiny networks (configs/tiny.yaml, 16 IP tokens as the official UNet needs), run on this
           device: compile s and run s of one program = the whole denoising loop + VAE decode, per
           dtype and with/without the ControlNet-once shortcut. With ``--official-repo`` (a
           bytedance/X-Dyna checkout) and the oracle venv's python, the official ``XDynaPipeline``
           runs in the same run at the same config, weights and step count, and ours / theirs is printed.
  compile  tiny networks: compile time of the same program at several video lengths.
  memory   full-size networks (configs/sd15.yaml), compiled only (abstract inputs, nothing full-size
           allocated): XLA's memory analysis of the program per dtype, with/without the shortcut.
           Arguments are every resident param (UNet, pose and S-Face ControlNets, VAE decoder)
           and the inputs; temporaries are XLA's peak of the rest. Each program compiles in a child process
           under ``common.cpu_as_chip_flags`` (memory scheduler; bf16 activations kept in bf16), and the figures
           are read from XLA's buffer assignment (``common.compile_in_child``). ``--attention``: the UNet's and
           ControlNets' backend (``blockwise`` by default, the same program on every backend; ``xla`` is the
           CPU's tiled path).
Examples:
  python benchmarks/sample_bench.py --sections speed --official-repo /tmp/xdyna
  python benchmarks/sample_bench.py --sections memory compile
"""
from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from xdyna_jax import config
from xdyna_jax.models import ModelsConfig, xdyna
from xdyna_jax.models.vae import AutoencoderKL
from xdyna_jax.sampling import pipeline
from xdyna_jax.sampling.ddim import make_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import official_bridge  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NETS = ("unet", "pose_controlnet", "face_controlnet", "vae")
GiB = common.GiB


def models(preset: str, dtype: str) -> ModelsConfig:
    over = [f"{n}.{k}={dtype}" for n in NETS for k in ("dtype", "param_dtype")]
    if preset == "tiny":  # the official IP-Adapter attention takes exactly 16 image tokens
        over += ["unet.num_ip_tokens=16", "resampler.num_queries=16"]
    return config.load(ModelsConfig, ROOT / "configs" / f"{preset}.yaml", over)


def _sample_and_decode(nets, vae_params, sched, guidance, cscale, *batch, models, cn_once):
    """The sampler as one program: the denoising loop (``pipeline._denoise_loop``), then the VAE decode."""
    latents = pipeline._denoise_loop(nets, sched, guidance, cscale, *batch, models=models, size=16, overlap=4,
                                     do_cfg=True, cn_once=cn_once)
    return AutoencoderKL(models.vae).apply({"params": vae_params}, latents, method="decode_video_from_latents")


def program(cfg: ModelsConfig, cn_once: bool):
    return jax.jit(functools.partial(_sample_and_decode, models=cfg, cn_once=cn_once))


def inputs(cfg: ModelsConfig, frames: int, h: int, w: int, steps: int, abstract: bool):
    """(ref, text, uncond text, tokens, uncond tokens, pose, face, draws) of one job; abstract: ShapeDtypeStructs."""
    d, n_ip, hh, ww = cfg.unet.cross_attention_dim, cfg.unet.num_ip_tokens, 8 * h, 8 * w
    shapes = [((1, h, w, 4), jnp.float32), ((1, 77, d), jnp.float32), ((1, 77, d), jnp.float32),
              ((1, n_ip, d), jnp.float32), ((1, n_ip, d), jnp.float32), ((1, frames, hh, ww, 3), jnp.float32),
              ((1, frames, hh, ww, 6), jnp.float32)]
    draws = pipeline.Draws(mask=((1, frames, h, w, 4), jnp.bool_), noise=((1, frames, h, w, 4), jnp.float32),
                           offsets=((1, steps), jnp.int32))
    if abstract:
        sds = lambda s: jax.ShapeDtypeStruct(*s)  # noqa: E731
        return [sds(s) for s in shapes] + [pipeline.Draws(*(sds(s) for s in draws))]
    rng = np.random.default_rng(0)
    arrays = [jnp.asarray(rng.standard_normal(s), t) for s, t in shapes[:5]]
    arrays += [jnp.asarray(rng.uniform(0, 1, s), t) for s, t in shapes[5:]]
    return arrays + [pipeline.make_draws(pipeline.job_keys([40]), frames=frames, latent_shape=(h, w, 4), steps=steps)]


def split_params(params):
    return {k: params[k] for k in NETS[:3]}, params["vae"]


def abstract_params(cfg: ModelsConfig):
    shapes = xdyna.param_shapes(cfg)
    return {k: jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), shapes[k]) for k in NETS}


def compile_program(cfg, params, batch, steps, cn_once):
    nets, vae = split_params(params)
    t0 = time.perf_counter()
    compiled = program(cfg, cn_once).lower(nets, vae, make_schedule(steps), jnp.float32(7.5), jnp.float32(1.0),
                                           *batch).compile()
    return compiled, time.perf_counter() - t0


# --- sections ---------------------------------------------------------------------------------------

def speed(args):
    h, w = args.latent
    print(f"\n## speed: tiny networks, 1 job, {args.frames} frames, {8 * h}x{8 * w} px ({h}x{w} latent), "
          f"{args.steps} steps, CFG 7.5, pose + S-Face ControlNets, VAE decode included")
    rows, fp32_params = [], None
    for dtype in args.dtypes:
        cfg = models("tiny", dtype)
        params = xdyna.init_params(cfg, jax.random.key(0), parts=NETS + ("text_encoder",))
        fp32_params = fp32_params or params
        batch = inputs(cfg, args.frames, h, w, args.steps, abstract=False)
        batch[1] = batch[2] = xdyna.text_states(params, xdyna.empty_prompt_ids(cfg, 1), cfg=cfg)
        for cn_once in (True, False):
            compiled, c = compile_program(cfg, params, batch, args.steps, cn_once)
            run = lambda: jax.block_until_ready(compiled(*split_params(params), make_schedule(args.steps),  # noqa
                                                         jnp.float32(7.5), jnp.float32(1.0), *batch))
            run()
            times = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            rows.append((f"ours {dtype}, ControlNet once {'on' if cn_once else 'off'}", c, statistics.median(times)))
    theirs = official_pipeline(args, models("tiny", "float32"), fp32_params, batch)
    if theirs is not None:
        rows.append(("official XDynaPipeline, float32 (torch eager)", float("nan"), statistics.median(theirs)))
    ref = rows[-1][2] if theirs is not None else None
    print(f"| run | compile s | run s | frames/s |{' × official |' if ref else ''}")
    print(f"|---|---:|---:|---:|{'---:|' if ref else ''}")
    for name, c, s in rows:
        extra = f" {ref / s:.2f} |" if ref else ""
        print(f"| {name} | {c:.1f} | {s:.2f} | {args.frames / s:.2f} |{extra}")


def official_pipeline(args, cfg, params, batch):
    h, w = args.latent
    spec = dict(what="pipeline", frames=args.frames, height=8 * h, width=8 * w, steps=args.steps,
                guidance_scale=7.5, iters=args.official_iters,
                prompt_ids=xdyna.empty_prompt_ids(cfg, 1)[0].tolist(), unet=official_bridge.unet_spec(cfg.unet),
                pose_controlnet=official_bridge.controlnet_spec(cfg.pose_controlnet),
                face_controlnet=official_bridge.controlnet_spec(cfg.face_controlnet),
                vae=official_bridge.vae_spec(cfg.vae), text_encoder=official_bridge.text_encoder_spec(cfg.text_encoder))
    parts = {k: getattr(cfg, k) for k in NETS + ("text_encoder",)}
    ref = np.asarray(batch[0]).transpose(0, 3, 1, 2)[:, :, None]  # (1, 4, 1, h, w), the official layout
    weights = official_bridge.official_weights(params, parts, {"image_tokens": batch[3],
                                                               "uncond_image_tokens": batch[4], "ref_latent": ref})
    out = official_bridge.run_official(spec, weights, xdyna_repo=args.official_repo, python=args.oracle_python)
    if out is not None:
        print(f"official: torch {out['versions']['torch']}, diffusers {out['versions']['diffusers']}, "
              f"{out['threads']} threads, times {[round(t, 2) for t in out['times']]}; "
              f"[calls, s] per network over all runs: {out.get('calls_and_seconds')}")
        return out["times"]
    return None


def compile_times(args):
    h, w = args.latent
    print(f"\n## compile: tiny networks, float32, ControlNet once on, {h}x{w} latent, {args.steps} steps "
          f"(best of {args.compile_repeats})")
    cfg = models("tiny", "float32")
    params = abstract_params(cfg)
    best = {}
    for _ in range(args.compile_repeats):
        for n in args.compile_frames:
            _, c = compile_program(cfg, params, inputs(cfg, n, h, w, args.steps, abstract=True), args.steps, True)
            best[n] = min(best.get(n, c), c)
    base = best[args.compile_frames[0]]
    print(f"| frames | windows per step | compile s | × {args.compile_frames[0]} frames |\n|---:|---:|---:|---:|")
    from xdyna_jax.sampling.windows import window_count
    for n, c in best.items():
        print(f"| {n} | {window_count(n, 16, 4)} | {c:.1f} | {c / base:.2f} |")


def memory_config(args, dtype: str) -> ModelsConfig:
    knobs = [f"{n}.attention_backend={args.attention}" for n in ("unet", "pose_controlnet", "face_controlnet")]
    return config.load(ModelsConfig, None, [f"vae.decode_chunk={args.decode_chunk}", *knobs],
                       defaults=models("sd15", dtype))


def memory_child(args):
    """``--child-memory DTYPE ON|OFF``: compile that program only (the parent reads XLA's dump of it)."""
    dtype, cn_once = args.child_memory
    cfg = memory_config(args, dtype)
    h, w = args.sd15_latent
    compile_program(cfg, abstract_params(cfg), inputs(cfg, 16, h, w, 25, abstract=True), 25, cn_once == "on")


def memory(args):
    h, w = args.sd15_latent
    print(f"\n## memory: sd15 networks, 1 job, 16 frames (one CFG-pair window of 16+1 frames), "
          f"{8 * h}x{8 * w} px, compiled only; VAE decode_chunk {args.decode_chunk}; attention {args.attention}; "
          f"XLA:CPU as a chip (common.cpu_as_chip_flags; bf16 activations in bf16)")
    print("| dtype | ControlNet once | compile s | params GiB | arguments GiB | temporaries GiB | output GiB | "
          "peak GiB |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for dtype in args.dtypes:
        params = abstract_params(memory_config(args, dtype))
        n_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
        for cn_once in {"both": ("on", "off"), "on": ("on",), "off": ("off",)}[args.cn_once]:
            cmd = [sys.executable, __file__, "--child-memory", dtype, cn_once, "--sd15-latent", *map(str, (h, w)),
                   "--decode-chunk", str(args.decode_chunk), "--attention", args.attention]
            skip = common.KEEP_BF16 if dtype == "bfloat16" else ()
            m, c = common.compile_in_child(cmd, ".*sample_and_decode.*", f"memory {dtype} {cn_once}", 60, skip)
            print(f"| {dtype} | {cn_once} | {c:.1f} | {n_bytes / GiB:.2f} | "
                  f"{m['argument'] / GiB:.2f} | {m['temp'] / GiB:.2f} | {m['output'] / GiB:.3f} | "
                  f"{m['peak'] / GiB:.2f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["speed", "compile", "memory"],
                    choices=["speed", "compile", "memory"])
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--frames", type=int, default=16, help="speed: frames generated")
    ap.add_argument("--steps", type=int, default=4, help="speed/compile: DDIM steps")
    ap.add_argument("--latent", type=int, nargs=2, default=[32, 32], help="speed/compile: latent h w (pixels / 8)")
    ap.add_argument("--iters", type=int, default=2, help="speed: timed runs of ours (median)")
    ap.add_argument("--official-repo", default=None, help="speed: bytedance/X-Dyna checkout to time the official "
                    "pipeline (tools/official_parity/README.md); omitted: ours only")
    ap.add_argument("--oracle-python", default="/work/oracle_venv/bin/python",
                    help="python of a venv with torch and diffusers 0.24")
    ap.add_argument("--official-iters", type=int, default=1)
    ap.add_argument("--compile-frames", type=int, nargs="+", default=[16, 48, 192])
    ap.add_argument("--compile-repeats", type=int, default=1)
    ap.add_argument("--sd15-latent", type=int, nargs=2, default=[112, 64], help="memory: latent h w (896x512 px)")
    ap.add_argument("--decode-chunk", type=int, default=1, help="memory: VAE frames per decoder call")
    ap.add_argument("--attention", choices=("blockwise", "xla", "cudnn"), default="blockwise",
                    help="memory: the UNet's and ControlNets' attention backend")
    ap.add_argument("--cn-once", choices=("both", "on", "off"), default="both", help="memory: ControlNet once")
    ap.add_argument("--child-memory", nargs=2, help=argparse.SUPPRESS)  # memory()'s child: DTYPE on|off
    args = ap.parse_args()
    if args.child_memory:
        return memory_child(args)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} host cores, "
          f"jax {jax.__version__}, {datetime.date.today()}")
    for name in args.sections:
        {"speed": speed, "compile": compile_times, "memory": memory}[name](args)


if __name__ == "__main__":
    main()
