"""Compiled per-device memory of the UNet3D forward under FSDP and tensor parallelism.

Compiles (never runs) the forward pass for each mesh on fake CPU devices, with abstract params and
inputs (``jax.ShapeDtypeStruct`` carrying their shardings: nothing full-size is allocated), and prints
XLA's ``memory_analysis()`` per device: arguments (params and inputs), output and temporaries. Ratios
are against the ``fsdp=8`` mesh measured in the same run. Example (the X-Dyna sampling window):
  python benchmarks/sharding_memory.py --preset sd15 --batch 2 --frames 17 --height 112 --width 64
The batch of 2 (the CFG pair) divides neither 8 nor 4 devices, so inputs are replicated (the rule
table's fallback) and only the params and the work inside layers are split.
"""
from __future__ import annotations

import os
import sys

# XLA reads the device count once, when the backend starts: set it before jax is imported.
if "jax" in sys.modules:
    raise RuntimeError("import benchmarks/sharding_memory.py before jax")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from xdyna_jax.models import UNet3D, UNet3DConfig, logical_axes, param_shapes  # noqa: E402
from xdyna_jax.sharding import MeshConfig, logical_to_mesh_spec, make_mesh, param_shardings  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import GiB, abstract  # noqa: E402

MESHES = {  # the first is the baseline of the ratios
    "fsdp8": MeshConfig(data=1, fsdp=8),
    "tensor2_fsdp4": MeshConfig(data=1, fsdp=4, tensor=2),
    "single": None,  # one device, no sharding
}


def compile_forward(model, shapes, inputs, mesh_cfg):
    """(seconds, memory_analysis) of the jitted forward compiled for ``mesh_cfg`` (None: one device)."""
    if mesh_cfg is None:
        dev = jax.devices()[0]
        params = jax.tree.map(lambda s: abstract(s.shape, s.dtype, jax.sharding.SingleDeviceSharding(dev)), shapes)
        args = [abstract(x.shape, x.dtype, jax.sharding.SingleDeviceSharding(dev)) for x in inputs]
    else:
        mesh = make_mesh(mesh_cfg)
        p_sh = param_shardings(logical_axes(model), shapes, mesh)
        params = jax.tree.map(lambda s, sh: abstract(s.shape, s.dtype, sh), shapes, p_sh)
        # batch over the data-parallel axes where it divides, else replicated (the rule table's fallback)
        args = [abstract(x.shape, x.dtype, NamedSharding(mesh, logical_to_mesh_spec(P("batch"), x.shape, mesh)))
                for x in inputs]
    start = time.perf_counter()
    compiled = jax.jit(model.apply).lower({"params": params}, *args).compile()
    return time.perf_counter() - start, compiled.memory_analysis()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("tiny", "sd15"), default="tiny")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--frames", type=int, default=17, help="window frames including the reference")
    ap.add_argument("--height", type=int, default=16, help="latent height")
    ap.add_argument("--width", type=int, default=16, help="latent width")
    ap.add_argument("--tokens", type=int, default=93, help="context tokens (77 text + 16 image)")
    ap.add_argument("--query-chunk", type=int, default=1024, help="attention_query_chunk (0: off)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--meshes", nargs="*", default=list(MESHES), choices=list(MESHES))
    args = ap.parse_args()

    cfg = getattr(UNet3DConfig, args.preset)(dtype=args.dtype, param_dtype=args.dtype,
                                             attention_query_chunk=args.query_chunk)
    model, dt = UNet3D(cfg), jnp.dtype(args.dtype)
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dt), param_shapes(model))
    n_params = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    inputs = [jax.ShapeDtypeStruct((args.batch, args.frames, args.height, args.width, cfg.in_channels), dt),
              jax.ShapeDtypeStruct((args.batch,), jnp.float32),
              jax.ShapeDtypeStruct((args.batch, args.tokens, cfg.cross_attention_dim), dt)]
    print(f"devices: {jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"jax {jax.__version__}")
    print(f"UNet3D {args.preset}: {n_params / 1e6:.1f} M params ({n_params * dt.itemsize / GiB:.2f} GiB), "
          f"input {inputs[0].shape} {args.dtype}, attention_query_chunk={args.query_chunk}")

    rows = {}
    for name in args.meshes:
        secs, mem = compile_forward(model, shapes, inputs, MESHES[name])
        rows[name] = (secs, mem.argument_size_in_bytes, mem.output_size_in_bytes, mem.temp_size_in_bytes)
        print(f"  compiled {name} in {secs:.1f} s", flush=True)

    base = rows.get("fsdp8")
    ratio = lambda v, i: f"{v / base[i]:.2f}" if base and base[i] else "-"
    print("\n| mesh | compile s | argument GiB | x fsdp8 | output GiB | temp GiB | x fsdp8 | total GiB | x fsdp8 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, (secs, arg, out, temp) in rows.items():
        total = arg + out + temp
        base_total = sum(base[1:]) if base else 0
        print(f"| {name} | {secs:.1f} | {arg / GiB:.3f} | {ratio(arg, 1)} | {out / GiB:.3f} | {temp / GiB:.3f} | "
              f"{ratio(temp, 3)} | {total / GiB:.3f} | {f'{total / base_total:.2f}' if base_total else '-'} |")

if __name__ == "__main__":
    main()
