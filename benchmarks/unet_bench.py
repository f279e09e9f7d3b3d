"""UNet3D forward speed and compiled memory, per attention backend / memory knob.

Every figure is printed next to its ratio against the baseline (``xla`` attention, no chunking)
measured in the same run on the same device. Examples:
  python benchmarks/unet_bench.py --preset tiny --frames 17 --size 32
  python benchmarks/unet_bench.py --preset sd15 --frames 17 --height 112 --width 64 --batch 2 --memory-only
  python benchmarks/unet_bench.py --preset tiny --frames 17 --size 32 --variants xla --official-repo /tmp/xdyna
With ``--official-repo`` (a bytedance/X-Dyna checkout) and the oracle venv's python, the official
UNet3D forward (torch eager) runs after ours in the same run, at the same config and weights (16 IP
tokens, as the official IP-Adapter attention needs), and its time is the last row.
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import sys
from pathlib import Path

from xdyna_jax.models import UNet3D, UNet3DConfig, param_shapes

sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_bridge  # noqa: E402

VARIANTS = {
    "xla": {},
    "cudnn": {"attention_backend": "cudnn"},
    "xla+chunk1024": {"attention_query_chunk": 1024},
    "xla+chunk256": {"attention_query_chunk": 256},
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=17, help="window frames including the reference")
    ap.add_argument("--height", type=int, default=None, help="latent height (default --size)")
    ap.add_argument("--width", type=int, default=None, help="latent width (default --size)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--memory-only", action="store_true", help="compile and report memory, do not run")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--official-repo", default=None, help="bytedance/X-Dyna checkout: also time the official forward")
    ap.add_argument("--oracle-python", default="/work/oracle_venv/bin/python")
    args = ap.parse_args()
    h, w = args.height or args.size, args.width or args.size

    base = getattr(UNet3DConfig, args.preset)(dtype=args.dtype, param_dtype=args.dtype)
    if args.official_repo:
        base = dataclasses.replace(base, num_ip_tokens=official_bridge.OFFICIAL_IP_TOKENS)
    dt = jnp.dtype(args.dtype)
    shapes = param_shapes(UNet3D(base))
    n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    if args.memory_only:
        params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dt), shapes)
    else:
        rng = np.random.default_rng(0)
        params = jax.tree.map(lambda s: jnp.asarray(0.02 * rng.standard_normal(s.shape), dt), shapes)
    tokens = 77 + (base.num_ip_tokens if base.unet_use_ipadapter else 0)
    x = jax.ShapeDtypeStruct((args.batch, args.frames, h, w, base.in_channels), dt)
    ctx = jax.ShapeDtypeStruct((args.batch, tokens, base.cross_attention_dim), dt)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"UNet3D {args.preset}: {n_params / 1e6:.1f} M params, input {x.shape} {args.dtype}")

    rows = []
    for name in args.variants:
        cfg = dataclasses.replace(base, **VARIANTS[name])
        fwd = jax.jit(UNet3D(cfg).apply)
        t0 = time.perf_counter()
        compiled = fwd.lower({"params": params}, x, jax.ShapeDtypeStruct((), jnp.float32), ctx).compile()
        compile_s = time.perf_counter() - t0
        mem = compiled.memory_analysis()
        temp = getattr(mem, "temp_size_in_bytes", float("nan")) if mem is not None else float("nan")
        step = float("nan")
        if not args.memory_only:
            xs = jnp.asarray(np.random.default_rng(1).standard_normal(x.shape), dt)
            cs = jnp.asarray(np.random.default_rng(2).standard_normal(ctx.shape), dt)
            compiled({"params": params}, xs, jnp.float32(500), cs).block_until_ready()
            times = []
            for _ in range(args.iters):
                t0 = time.perf_counter()
                compiled({"params": params}, xs, jnp.float32(500), cs).block_until_ready()
                times.append(time.perf_counter() - t0)
            step = statistics.median(times)
        rows.append((name, compile_s, step, temp))

    if args.official_repo and not args.memory_only:
        spec = dict(what="unet", unet=official_bridge.unet_spec(base), batch=args.batch, frames=args.frames,
                    height=h, width=w, tokens=tokens, iters=args.iters)
        out = official_bridge.run_official(spec, official_bridge.official_weights({"unet": params}, {"unet": base}),
                                           xdyna_repo=args.official_repo, python=args.oracle_python)
        if out is not None:
            print(f"official: torch {out['versions']['torch']}, {out['threads']} threads")
            rows.append(("official (torch)", float("nan"), statistics.median(out["times"]), float("nan")))

    b_step, b_temp = rows[0][2], rows[0][3]
    print(f"{'variant':<16}{'compile s':>10}{'forward s':>11}{'x base':>8}{'temp GiB':>10}{'x base':>8}")
    for name, c, s, m in rows:
        print(f"{name:<16}{c:>10.1f}{s:>11.4f}{s / b_step:>8.2f}{m / 2**30:>10.3f}{m / b_temp:>8.2f}")


if __name__ == "__main__":
    main()
