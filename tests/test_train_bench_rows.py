"""benchmarks/train_bench.py's sd15 contract pieces that need no full-size compile: the ``--json`` row object,
the attention overrides, and the FLOP count of the blockwise path (one block per attention), checked against
the hand count of FlashAttention's arithmetic."""
from __future__ import annotations

import functools
import sys

import jax
import jax.numpy as jnp

from helpers import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
import train_bench  # noqa: E402

from xdyna_jax.models import attention  # noqa: E402


def test_json_row_has_the_contract_keys_in_gib_and_tflop():
    r = dict(row="fsdp8:896x512:full:on", peak=3 * 2 ** 30, temp=2 * 2 ** 30, state=2 ** 29, flops=2.5e14,
             flops_dense=2.0e14, attention="blockwise", devices=8, compile_s=12.34, bf16_kept=True)
    got = train_bench.row_json(r)
    assert {k: got[k] for k in ("row", "peak_gib", "temp_gib", "state_gib", "tflop_per_step")} == dict(
        row="fsdp8:896x512:full:on", peak_gib=3.0, temp_gib=2.0, state_gib=0.5, tflop_per_step=250.0)
    assert got["flops_vs_dense"] == 1.25 and got["attention"] == "blockwise" and got["bf16_activations_kept"]
    assert "cse_barrier_expander" in got["xla_cpu_flags"]  # remat kept: the figures stand for a chip


def test_attention_overrides_reach_the_unet_and_both_controlnets():
    over = train_bench.attention_overrides("blockwise")
    for net in ("unet", "pose_controlnet", "face_controlnet"):
        assert f"models.{net}.attention_backend=blockwise" in over
    assert "models.unet.attention_query_chunk=1024" in train_bench.attention_overrides("chunk1024")
    assert "models.unet.attention_backend=xla" in train_bench.attention_overrides("dense")


def _flops(backend: str, n=2, length=256, heads=4, d=32) -> float:
    q = jax.ShapeDtypeStruct((n, length, heads * d), jnp.float32)

    def loss(q, k, v):
        return jnp.sum(attention.attention(q, k, v, heads, backend) ** 2)

    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))
    return float(fn.trace(q, q, q).lower(lowering_platforms=("cuda",)).cost_analysis()["flops"])


def test_blockwise_flops_are_counted_whole_and_match_flash_attention_arithmetic():
    """Per (query, key) pair and head dim: dense forward + backward = 4 + 8 dot FLOPs; FlashAttention-2's
    backward recomputes the logits, 4 + 10. The count with one block (``one_block_attention``) must show that;
    without it XLA counts one loop iteration of the default blocks only."""
    n, length, heads, d = 2, 256, 4, 32
    pairs = n * heads * length * length * d
    dense = _flops("xla")
    with train_bench.one_block_attention():
        whole = _flops("blockwise")
    assert 12 * pairs <= dense < 13 * pairs  # the dots, plus softmax's elementwise work
    assert 14 * pairs <= whole < 15.5 * pairs
    small = functools.partial(attention.blockwise_attention, block_q=64, block_k=64)
    orig = attention.blockwise_attention
    attention.blockwise_attention = small
    try:
        looped = _flops("blockwise")
    finally:
        attention.blockwise_attention = orig
    assert looped < whole / 3  # 4 x 4 blocks: each loop body is counted once
