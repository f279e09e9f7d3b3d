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
    compiled = jax.jit(step, donate_argnums=0).lower(w, x).compile({"xla_dump_to": str(tmp_path)})
    (dump,) = tmp_path.glob("*jit_step*cpu_after_optimizations-buffer-assignment.txt")
    parsed, ref = train_bench.assignment_memory(dump), common.memory(compiled)
    assert parsed == ref and ref["alias"] > 0 and ref["temp"] > 0
