"""Smoke test of benchmarks/train_bench.py: its tiny path runs the real train step in-process and prints
its table with sensible figures (no timing is asserted: the machine's load decides those)."""
from __future__ import annotations

import math
import sys

from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import train_bench  # noqa: E402

# one-level networks, one noisy frame at 16x16: the step compiles in about 20 s on 2 cores
MICRO = ["models.face_controlnet=null", "models.unet.block_out_channels=[32]", "models.unet.attention_head_dim=[2]",
         "models.unet.down_block_types=[CrossAttnDownBlock3D]", "models.unet.up_block_types=[CrossAttnUpBlock3D]",
         "models.pose_controlnet.block_out_channels=[32]", "models.pose_controlnet.attention_head_dim=[2]",
         "models.pose_controlnet.down_block_types=[CrossAttnDownBlock2D]", "models.text_encoder.num_hidden_layers=1",
         "models.image_encoder.num_hidden_layers=1", "models.resampler.depth=1", "train.frames=1", "train.height=16",
         "train.width=16"]


def test_tiny_path_prints_its_table(capsys):
    result = train_bench.main(["--sections", "tiny", "--tiny", "adapter:off", "--steps", "1", "--warmup", "1",
                               "--tiny-override", *MICRO])
    out = capsys.readouterr().out
    assert out.startswith("device: ")
    assert "| stage | remat | compute | compile s | step s | samples/s |" in out
    (row,) = result["tiny"]
    line = next(s for s in out.splitlines() if s.startswith("| adapter | off | float32 |"))
    assert "| 1.00 |" in line and "n/a (CPU)" in line  # the baseline's ratio; no known peak on a CPU
    assert row["step_s"] > 0 and row["samples_s"] > 0 and math.isfinite(row["loss"])
    assert row["flops"] > 1e6 and row["peak"] > 0 and row["mfu"] is None
    # samples/s is the batch over the step time
    assert math.isclose(row["samples_s"] * row["step_s"], 2.0, rel_tol=1e-9)


def test_buffer_assignment_dump_gives_memory_analysis(tmp_path):
    """The sd15 rows read XLA's buffer-assignment dump (their compiles are stopped before the end); its sums
    must equal ``memory_analysis()`` of the finished compile, donation and a sharded program included."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    import common

    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "fsdp"))

    def step(w, x):
        for _ in range(3):
            x = jnp.tanh(x @ w)
        return w - 0.1 * jax.grad(lambda w: jnp.sum(jnp.tanh(x @ w)))(w), x.sum()

    w = jax.ShapeDtypeStruct((256, 256), jnp.float32, sharding=NamedSharding(mesh, P("fsdp")))
    x = jax.ShapeDtypeStruct((64, 256), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"))))
    # a real compile (the tests' persistent cache would load a warm run's program and dump nothing)
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        compiled = jax.jit(step, donate_argnums=0).lower(w, x).compile({"xla_dump_to": str(tmp_path)})
    finally:
        jax.config.update("jax_enable_compilation_cache", True)
    (dump,) = tmp_path.glob("*jit_step*cpu_after_optimizations-buffer-assignment.txt")
    parsed, ref = common.assignment_memory(dump), common.memory(compiled)
    assert parsed == ref and ref["alias"] > 0 and ref["temp"] > 0


# a chain of residual blocks whose activations (4 MB each in f32) dominate the program's memory
_CHAIN = """
import sys, jax, jax.numpy as jnp
dtype, remat = jnp.dtype(sys.argv[1]), sys.argv[2] == "remat"
def block(w, x):
    return x + jax.nn.gelu(jnp.tanh(x @ w[0]) @ w[1])
blk = jax.checkpoint(block) if remat else block
def loss(ws, x):
    for w in ws:
        x = blk(w, x)
    return jnp.sum(x.astype(jnp.float32) ** 2)
ws = [jax.ShapeDtypeStruct((2, 256, 256), dtype) for _ in range(12)]
jax.jit(jax.grad(loss)).lower(ws, jax.ShapeDtypeStruct((4096, 256), dtype)).compile()
"""


def test_cpu_as_chip_flags_keep_remat_and_bf16():
    """What the sd15 rows rest on (benchmarks/common.py): under ``cpu_as_chip_flags`` remat bounds XLA:CPU's
    memory (12 remat'd blocks keep their inputs, one block's working set, not every activation), and with
    ``KEEP_BF16`` a bf16 program's activations take half the bytes of the f32 ones XLA:CPU computes in."""
    import common

    def temp(dtype, mode, skip=()):
        cmd = [sys.executable, "-c", _CHAIN, dtype, mode]
        return common.compile_in_child(cmd, ".*jit_loss.*", f"{dtype} {mode}", 5, skip)[0]["temp"]

    act = 4096 * 256 * 4  # one f32 activation
    plain, remat = temp("float32", "plain"), temp("float32", "remat")
    assert plain > 12 * 3 * act  # each block keeps its tanh, its matmul output and its input
    assert remat < 0.5 * plain, (remat, plain)
    f32_held, bf16_held = temp("bfloat16", "plain"), temp("bfloat16", "plain", common.KEEP_BF16)
    assert bf16_held < 0.65 * f32_held, (bf16_held, f32_held)
