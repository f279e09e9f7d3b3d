"""The training step: step time, samples/s, FLOPs, MFU and compiled per-device memory.

Every step is built as ``train.py`` builds it: ``training.config.load(configs/train_tiny.yaml, overrides)``,
``state.models_for_training``, the state's shardings and ``step.compile_step`` (jit with the state donated).
Sections (``--sections``, default both):
  tiny  configs/tiny.yaml networks at train_tiny.yaml's shape (batch 2, 2+1 frames, 64x64 pixels, float32,
        the synthetic source, pixels through the frozen VAE and CLIP in the step), run on this device:
        median step time of ``--steps`` steps after ``--warmup``, samples/s, FLOP/s, MFU, memory.
  sd15  configs/sd15.yaml networks, 16+1 frames, per-device batch 1, bfloat16 compute (float32 master
        params), compiled only: the state and batch are ``ShapeDtypeStruct``s with shardings, nothing
        full-size is allocated. The batch is the pre-encoded one a large run reads
        (``data.encoded=[vae_moments, clip_hidden]``: VAE moments and CLIP hidden states, plus pose and
        S-Face maps), so the VAE encoder and the CLIP image encoder stay resident but do not run.
        Rows are ``mesh:HxW:stage:remat`` (remat: off, on or a policy name of xdyna_jax/models/remat.py,
        e.g. dots_saveable); meshes ``one`` (1 device, global batch 1), ``fsdp8`` and
        ``data2fsdp4`` (8 devices, global batch 8). ``--attention`` picks the UNet's and ControlNets'
        attention: ``blockwise`` (default: the memory-linear training path, models/blockwise.py), ``dense``
        (the ``xla`` backend's GPU/TPU program, one einsum, f32 logits for all queries) or ``chunk1024``
        (that einsum over query chunks of 1024, each rematerialised).
        Each row compiles in a child process that is stopped once XLA has assigned its buffers
        (``common.compile_in_child``); the memory is read from that assignment, the table
        ``memory_analysis()`` sums, compiled under ``common.cpu_as_chip_flags``: the memory scheduler, remat's
        barriers kept (XLA:CPU otherwise merges the recomputation back into the forward) and, for bf16,
        bf16 activations kept in bf16 (XLA:CPU otherwise holds them in f32), as a GPU or TPU would.
FLOPs: XLA's cost analysis of the step lowered for GPU (``lowering_platforms=("cuda",)``, not compiled).
XLA's cost analysis counts a loop body once, so loops are counted unrolled: the dense path is one einsum,
and the blockwise path is lowered with one block per attention for the count (its scans then run once; the
arithmetic per query-key pair, recomputation in the backward pass included, does not depend on the block
size). The CPU executable's own figure (the one train.py logs on a CPU, with the tiled attention) is too
low for the same reason. Remat recomputation is included. Every sd15 row also reports the dense path's
FLOPs at the same remat and their ratio (the cost of the recomputation). Memory: per device, arguments + outputs + temporaries - aliased (donated state).
Ratios are against the first row of each table, measured in the same run. Example:
  python benchmarks/train_bench.py                       # the recorded run (benchmarks/RESULTS.md)
  python benchmarks/train_bench.py --sections sd15 --sd15 one:512x512:adapter:on fsdp8:896x512:full:on
  python benchmarks/train_bench.py --sections sd15 --attention chunk1024 --sd15 fsdp8:896x512:full:on
  python benchmarks/train_bench.py --sections sd15 --sd15 fsdp8:896x512:full:on --json rows.json
``--json FILE`` writes a list with one object per sd15 row: ``{"row", "peak_gib", "temp_gib", "state_gib",
"tflop_per_step", ...}`` (per device; the extra keys name the attention and the dense FLOPs ratio).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (before jax: 8 fake CPU devices for the sharded rows)

common.fake_cpu_devices(8)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import contextlib  # noqa: E402
import json  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from xdyna_jax import config as config_lib  # noqa: E402
from xdyna_jax.models import ModelsConfig, attention, xdyna  # noqa: E402
from xdyna_jax.models import remat as remat_lib  # noqa: E402
from xdyna_jax.sharding import MeshConfig, make_mesh  # noqa: E402
from xdyna_jax.training import config as train_config, loop, state as st, step as sp  # noqa: E402
from xdyna_jax.world.source import SyntheticSource  # noqa: E402

GiB = common.GiB
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MESHES = {"one": MeshConfig(1, 1, 1), "fsdp8": MeshConfig(1, 8, 1), "data2fsdp4": MeshConfig(2, 4, 1)}
CHIPS = {"16 GB": 16e9, "80 GB": 80e9, "141 GB": 141e9}
HEADROOM = 0.9  # fits = peak <= 90 % of the chip: the runtime, allocator fragmentation and workspaces need some
# in priority order: when --budget-min runs out, the later rows are left out (and named)
SD15_ROWS = ["one:512x512:adapter:off", "fsdp8:512x512:full:on", "data2fsdp4:512x512:full:on", "one:512x512:full:on",
             "one:896x512:adapter:on", "fsdp8:896x512:full:on", "one:512x512:adapter:on",
             "data2fsdp4:896x512:full:on", "one:896x512:full:on", "one:896x512:adapter:off", "one:512x512:full:off"]
# XLA:CPU's all-reduce combiner rebuilds a reachability map for every group it merges: on the sharded full-size
# step it was still running after 14 minutes. It only merges all-reduces into fewer, larger ones (GPU and TPU
# compilers combine by their own byte thresholds); on the micro networks turning it off moved the temporaries
# of fsdp=8 by 0.2 %. A one-device step has no all-reduce: no change there.
NO_COMBINER = ("cpu-all-reduce-combiner", "all-reduce-combiner")
TINY_ROWS = ["full:off", "full:on", "adapter:off"]
# the networks whose attention --attention sets (the frozen VAE and CLIP do not run: the batch is pre-encoded)
ATTENTION_NETS = ("unet", "pose_controlnet", "face_controlnet")
ATTENTION = {"blockwise": ("attention_backend=blockwise", "attention_query_chunk=0"),
             "dense": ("attention_backend=xla", "attention_query_chunk=0"),
             "chunk1024": ("attention_backend=xla", "attention_query_chunk=1024")}


def attention_overrides(name: str) -> list[str]:
    return [f"models.{net}.{kv}" for net in ATTENTION_NETS for kv in ATTENTION[name]]


@contextlib.contextmanager
def one_block_attention():
    """Blockwise attention with one block per call while counting FLOPs (module doc): the cost analysis
    counts a scan's body once, and with one block the body is all the work."""
    orig = attention.blockwise_attention
    attention.blockwise_attention = lambda *a, **kw: orig(*a, **{**kw, "block_q": 1 << 30, "block_k": 1 << 30})
    try:
        yield
    finally:
        attention.blockwise_attention = orig


def run_config(models_file: str, overrides) -> train_config.TrainRunConfig:
    """train_tiny.yaml + overrides, with the networks of ``configs/{models_file}`` (a train YAML names its
    models file once; the overrides cannot swap it)."""
    run = train_config.load(CONFIGS / "train_tiny.yaml", overrides)
    if models_file != "tiny.yaml":
        over = [o.removeprefix("models.") for o in overrides if o.startswith("models.")]
        run = dataclasses.replace(run, models=config_lib.load(ModelsConfig, CONFIGS / models_file, over))
        train_config.check(run)
    return run


def parse_row(row: str, fields: tuple[str, ...]) -> dict:
    """A ``--tiny`` (stage:remat) or ``--sd15`` (mesh:HxW:stage:remat) row as {field: text}; its remat is
    off, on or a remat policy name (models/remat.py), checked here so a typo fails before any compile."""
    parts = row.split(":")
    if len(parts) != len(fields):
        raise ValueError(f"row {row!r}: expected {':'.join(fields)}")
    out = dict(zip(fields, parts))
    try:
        remat_lib.name(out["remat"])
    except ValueError as e:
        raise ValueError(f"row {row!r}: {e}") from None
    if "mesh" in out and out["mesh"] not in MESHES:
        raise ValueError(f"row {row!r}: unknown mesh {out['mesh']!r}; expected one of {sorted(MESHES)}")
    return out


TINY_FIELDS, SD15_FIELDS = ("stage", "remat"), ("mesh", "size", "stage", "remat")


def row_overrides(stage: str, remat: str, mesh: MeshConfig, per_device: int, extra=()) -> list[str]:
    n = mesh.data * mesh.fsdp
    return [f"train.stage={stage}", f"train.remat={remat}", f"mesh.data={mesh.data}",
            f"mesh.fsdp={mesh.fsdp}", f"mesh.tensor={mesh.tensor}", f"train.batch_size={per_device * n}", *extra]


def compile_once(run, models, mesh, state, batch):
    """(compiled, seconds): ``step.compile_step``, the program train.py runs. Its in-process memo is emptied:
    this benchmark compiles many configs and keeps none of them."""
    t0 = time.perf_counter()
    compiled = sp.compile_step(run, models, mesh, state, batch)
    secs = time.perf_counter() - t0
    sp._COMPILED.clear()
    return compiled, secs


@functools.lru_cache(maxsize=None)
def _flops_cached(run, models, spec):
    state = st.abstract_state(run, xdyna.param_shapes(run.models))
    batch = {k: jax.ShapeDtypeStruct(s, jnp.dtype(d)) for k, s, d in spec}
    fn = jax.jit(functools.partial(sp.train_step, run=sp.step_key_config(run), models=models))
    with one_block_attention():
        return float(fn.trace(state, batch).lower(lowering_platforms=("cuda",)).cost_analysis()["flops"])


def model_flops(run, models, batch) -> float:
    """FLOPs of one step on one device's rows of ``batch`` (per-device shapes), from the GPU lowering
    (module doc). Memoised: the meshes' rows repeat the one-device row's per-device work."""
    n = run.mesh.data * run.mesh.fsdp
    spec = tuple((k, (v.shape[0] // n,) + tuple(v.shape[1:]), str(v.dtype)) for k, v in sorted(batch.items()))
    one = dataclasses.replace(run, mesh=MeshConfig(1, 1, 1),
                              train=dataclasses.replace(run.train, batch_size=run.train.batch_size // n))
    return _flops_cached(one, models, spec)


def state_bytes(state) -> int:
    """Bytes of the train state on one device (its shard of every leaf)."""
    return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(state))


def fmt_ratio(v, base) -> str:
    return f"{v / base:.2f}" if base else "-"


# --- tiny: run steps -----------------------------------------------------------------------------------

def tiny(args) -> list[dict]:
    from xdyna_jax.models.clip_preprocess import default_image_processor
    from xdyna_jax.sharding import host_local_to_global

    out = []
    for row in args.tiny:
        r = parse_row(row, TINY_FIELDS)
        run = run_config("tiny.yaml", ["train.init=random", "mesh.data=1", "mesh.fsdp=1", "mesh.tensor=1",
                                       f"train.stage={r['stage']}", f"train.remat={r['remat']}",
                                       *args.tiny_override])
        t = run.train
        mesh = make_mesh(run.mesh, loop.mesh_devices(run.mesh))
        models = st.models_for_training(run)
        state = st.init_state(run, mesh, loop.initial_params(run, mesh))  # seeded numpy values, no init program
        raw = SyntheticSource(run).batch(0)  # one batch for every step: the data source is not timed
        batch = host_local_to_global(loop.prepare_batch(raw, models, t, default_image_processor(
            run.models.image_encoder.image_size)), mesh)
        compiled, compile_s = compile_once(run, models, mesh, state, batch)
        mem = common.memory(compiled)
        times, losses = [], []
        for i in range(args.warmup + args.steps):
            tic = time.perf_counter()
            state, metrics = compiled(state, batch)
            losses.append(float(jax.block_until_ready(metrics)["loss"]))  # waits for the step
            if i >= args.warmup:
                times.append(time.perf_counter() - tic)
        if not all(map(math.isfinite, losses)):
            raise RuntimeError(f"tiny {row}: non-finite loss {losses}")
        step_s = statistics.median(times)
        flops = model_flops(run, models, batch)
        peak = sp.peak_flops(jax.devices()[0])
        out.append(dict(row=row, dtype=t.compute_dtype, compile_s=compile_s, step_s=step_s,
                        samples_s=t.batch_size / step_s, flops=flops, flops_s=flops / step_s,
                        mfu=flops / step_s / peak if peak else None, peak=mem["peak"], loss=losses[-1]))
        print(f"  tiny {row}: compiled in {compile_s:.1f} s, median step {step_s:.3f} s", flush=True)
    run0 = run_config("tiny.yaml", list(args.tiny_override))
    t = run0.train
    print(f"\n## tiny: configs/tiny.yaml networks, 1 device, batch {t.batch_size}, 1+{t.frames} frames, "
          f"{t.height}x{t.width} px, pixels + CLIP pixels encoded in the step; median of {args.steps} steps "
          f"after {args.warmup} warm-up")
    print("| stage | remat | compute | compile s | step s | samples/s | × base | GFLOP/step | GFLOP/s | MFU | "
          "peak GiB | loss |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = out[0]["samples_s"] if out else 0
    for r in out:
        stage, remat = parse_row(r["row"], TINY_FIELDS).values()
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a (CPU)"
        print(f"| {stage} | {remat} | {r['dtype']} | {r['compile_s']:.1f} | {r['step_s']:.3f} | {r['samples_s']:.2f} | "
              f"{fmt_ratio(r['samples_s'], base)} | {r['flops'] / 1e9:.3g} | {r['flops_s'] / 1e9:.3g} | {mfu} | "
              f"{r['peak'] / GiB:.3f} | {r['loss']:.4f} |", flush=True)
    return out


# --- sd15: compile only --------------------------------------------------------------------------------

def abstract_batch(run, mesh) -> dict:
    """The pre-encoded batch of ``loop.prepare_batch`` (objective module doc) as sharded ShapeDtypeStructs."""
    t, m = run.train, run.models
    b, f, h, w = t.batch_size, t.frames, t.height, t.width
    down = m.vae.downscale
    tokens = (m.image_encoder.image_size // m.image_encoder.patch_size) ** 2 + 1  # hidden_states[-2], CLS first
    shapes = {"vae_moments": (b, 1 + f, h // down, w // down, 2 * m.unet.in_channels),
              "clip_hidden": (b, tokens, m.image_encoder.hidden_size), "pose": (b, f, h, w, 3)}
    if m.face_controlnet is not None:
        shapes["face"] = (b, f, h, w, 6)
    shapes = {k: jax.ShapeDtypeStruct(s, jnp.float32) for k, s in shapes.items()}
    return jax.tree.map(lambda v, s: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=s), shapes,
                        sp.batch_shardings(shapes, mesh))


def sd15_setup(row: str, args, attention_name: str | None = None):
    """(run, models, mesh, abstract state, abstract batch) of one ``mesh:HxW:stage:remat`` row, with
    ``attention_name`` (default ``--attention``) in the UNet and ControlNets."""
    mesh_name, size, stage, remat = parse_row(row, SD15_FIELDS).values()
    h, w = map(int, size.split("x"))
    run = run_config(args.sd15_models, row_overrides(stage, remat, MESHES[mesh_name], 1, [
        "train.frames=16", f"train.height={h}", f"train.width={w}", f"train.compute_dtype={args.dtype}",
        "data.encoded=[vae_moments,clip_hidden]", *attention_overrides(attention_name or args.attention),
        *args.sd15_override]))
    # compile the GPU/TPU branch of attention() (lax.platform_dependent's default: one einsum, or query chunks)
    # on this CPU: the CPU branch loops over tiles whose loop axis holds the batch, and XLA gathers the whole batch
    # onto every device for it (tiny networks at 256x256: fsdp=8 needed 5.7x the one-device temporaries)
    attention._tiled = attention._dense
    mesh = make_mesh(run.mesh, loop.mesh_devices(run.mesh))
    shapes = xdyna.param_shapes(run.models)
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         st.abstract_state(run, shapes), st.state_shardings(run, mesh, shapes))
    return run, st.models_for_training(run), mesh, state, abstract_batch(run, mesh)


def compile_in_child(row: str, args, on_start=lambda: None) -> tuple[dict, float]:
    """(memory, seconds) of ``row``'s step compiled in a child process (``common.compile_in_child``: XLA:CPU
    flags under which its figures stand for a chip's; bf16 activations kept in bf16 for a bf16 row)."""
    cmd = [sys.executable, __file__, "--child-row", row, "--dtype", args.dtype, "--sd15-models", args.sd15_models,
           "--attention", args.attention, "--sd15-override", *args.sd15_override]
    skip = NO_COMBINER + (common.KEEP_BF16 if args.dtype == "bfloat16" and not args.cpu_f32_activations else ())
    return common.compile_in_child(cmd, ".*train_step.*", row, args.row_timeout_min, skip, on_start)


def sd15_row(row: str, args) -> dict:
    run, models, mesh, state, batch = sd15_setup(row, args)
    dense = sd15_setup(row, args, "dense")

    def count():  # the parent's FLOP counts overlap the child's compile
        flops.append(model_flops(run, models, batch))
        flops.append(model_flops(dense[0], dense[1], dense[4]))

    flops = []
    mem, secs = compile_in_child(row, args, on_start=count)
    mesh_name, size, stage, remat = parse_row(row, SD15_FIELDS).values()
    return dict(row=row, mesh=mesh_name, size=size, stage=stage, remat=remat, devices=mesh.size,
                batch=run.train.batch_size, attention=args.attention, compile_s=secs, state=state_bytes(state),
                bf16_kept=args.dtype == "bfloat16" and not args.cpu_f32_activations,
                **mem, flops=flops[0], flops_dense=flops[1])


def row_json(r: dict) -> dict:
    """The contract object of one sd15 row (per device; GiB = 2^30 bytes)."""
    return dict(row=r["row"], peak_gib=round(r["peak"] / GiB, 3), temp_gib=round(r["temp"] / GiB, 3),
                state_gib=round(r["state"] / GiB, 3), tflop_per_step=round(r["flops"] / 1e12, 2),
                attention=r["attention"], tflop_dense=round(r["flops_dense"] / 1e12, 2),
                flops_vs_dense=round(r["flops"] / r["flops_dense"], 3), devices=r["devices"],
                compile_s=round(r["compile_s"], 1), xla_cpu_flags=common.cpu_as_chip_flags(),
                bf16_activations_kept=r["bf16_kept"])


def sd15(args, start: float) -> list[dict]:
    print(f"\n## sd15: configs/{args.sd15_models} networks, 16+1 frames, per-device batch 1, {args.dtype} compute, "
          f"float32 params and Adam moments, pre-encoded batch, {args.attention} attention (GPU/TPU path); compiled "
          f"only, memory per device from XLA:CPU as a chip ({common.cpu_as_chip_flags()}; bf16 activations "
          f"{'in f32' if args.cpu_f32_activations else 'kept bf16'}) {' '.join(args.sd15_override)}")
    chips = " | ".join(f"fits {c}" for c in CHIPS)
    print(f"| mesh | devices × batch | image | stage | remat | s to assignment | state GiB | temp GiB | peak GiB | "
          f"× base | TFLOP/step/device | FLOPs × dense | {chips} |\n|---|---|---|---|---|---:|---:|---:|---:|---:|---:|"
          f"---:|" + "---|" * len(CHIPS), flush=True)
    out, left, last = [], [], 0.0
    for row in args.sd15:  # each row printed as it comes: a long run still leaves what it measured
        # a compile takes minutes: start one only when one as long as the last still fits the budget
        if time.perf_counter() - start + last > 60 * args.budget_min:
            left.append(row)
            continue
        t0 = time.perf_counter()
        try:
            out.append(r := sd15_row(row, args))
        except TimeoutError as e:
            left.append(f"{row} ({e})")
            continue
        finally:
            last = time.perf_counter() - t0
        fits = " | ".join("yes" if r["peak"] <= HEADROOM * cap else "no" for cap in CHIPS.values())
        print(f"| {r['mesh']} | {r['devices']} × {r['batch'] // r['devices']} | {r['size']} | {r['stage']} | "
              f"{r['remat']} | {r['compile_s']:.1f} | {r['state'] / GiB:.2f} | {r['temp'] / GiB:.2f} | "
              f"{r['peak'] / GiB:.2f} | {fmt_ratio(r['peak'], out[0]['peak'])} | {r['flops'] / 1e12:.1f} | "
              f"{fmt_ratio(r['flops'], r['flops_dense'])} | {fits} |", flush=True)
        if args.json:  # rewritten after every row: a long run still leaves what it measured
            Path(args.json).write_text(json.dumps([row_json(x) for x in out], indent=1) + "\n")
    if left:
        print(f"not measured (past --budget-min {args.budget_min:g}, or as noted): {', '.join(left)}")
    if args.json:
        Path(args.json).write_text(json.dumps([row_json(x) for x in out], indent=1) + "\n")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sections", nargs="+", default=["tiny", "sd15"], choices=["tiny", "sd15"])
    ap.add_argument("--tiny", nargs="+", default=TINY_ROWS,
                    help="tiny rows, stage:remat, remat off/on or a policy name (first = baseline)")
    ap.add_argument("--tiny-override", nargs="*", default=[], help="key=value for every tiny row (train.*, models.*)")
    ap.add_argument("--steps", type=int, default=5, help="tiny: timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2, help="tiny: untimed steps first")
    ap.add_argument("--sd15", nargs="+", default=SD15_ROWS, help="sd15 rows, mesh:HxW:stage:remat, in priority order")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16", help="sd15: train.compute_dtype")
    ap.add_argument("--budget-min", type=float, default=25.0,
                    help="sd15: start no row that would end past this many minutes of the whole run")
    ap.add_argument("--row-timeout-min", type=float, default=12.0, help="sd15: give up on a row after this long")
    ap.add_argument("--sd15-models", default="sd15.yaml", help="sd15: the networks (a configs/ file)")
    ap.add_argument("--sd15-override", nargs="*", default=[], help="sd15: key=value for every row")
    ap.add_argument("--attention", choices=sorted(ATTENTION), default="blockwise",
                    help="sd15: the UNet's and ControlNets' attention (module doc)")
    ap.add_argument("--cpu-f32-activations", action="store_true",
                    help="sd15: let XLA:CPU hold bf16 activations in f32 as it computes them (the default keeps "
                    "them bf16, as a GPU or TPU does; common.KEEP_BF16)")
    ap.add_argument("--json", help="sd15: write the rows here, one object per row (module doc)")
    ap.add_argument("--child-row", help=argparse.SUPPRESS)  # compile_in_child's child: compile one row, no output
    args = ap.parse_args(argv)
    rows = [(r, TINY_FIELDS) for r in args.tiny] if "tiny" in args.sections else []
    if args.child_row or "sd15" in args.sections:
        rows += [(r, SD15_FIELDS) for r in ([args.child_row] if args.child_row else args.sd15)]
    for row, fields in rows:  # a bad row fails here, before --json is touched and, before minutes of compiles
        try:
            parse_row(row, fields)
        except ValueError as e:
            ap.error(str(e))
    if args.json:  # an unwritable --json fails here, not after the compiles
        try:
            Path(args.json).write_text("[]\n")
        except OSError as e:
            ap.error(f"--json {args.json}: cannot write ({e.strerror})")
    if args.child_row:
        run, models, mesh, state, batch = sd15_setup(args.child_row, args)
        compile_once(run, models, mesh, state, batch)
        return {}
    start = time.perf_counter()
    print(common.device_line(), flush=True)
    result = {}
    if "tiny" in args.sections:
        result["tiny"] = tiny(args)
    if "sd15" in args.sections:
        result["sd15"] = sd15(args, start)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(f"\nwall {time.perf_counter() - start:.0f} s, peak host RSS {rss:.1f} GiB")
    return result


if __name__ == "__main__":
    main()
