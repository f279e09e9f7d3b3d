"""Gradient checkpointing by name: the one table from a ``remat`` config value to a ``jax.checkpoint`` policy.

Every policy applies at the same boundaries: ``nn.remat`` around each resnet, transformer and motion module
(``blocks._remat``). What differs is what a block keeps from its forward for the backward:
  none                              no remat: everything the backward needs stays in memory
  blocks                            keep nothing inside a block, recompute it (nn.remat's default policy)
  nothing_saveable                  the same, with jax's named policy
  dots_saveable                     keep matmul (dot_general) outputs, recompute the rest (norms,
                                    activations, convolutions: convs are not dots)
  dots_with_no_batch_dims_saveable  keep only the dense-layer matmuls (no batch dims), recompute attention
  offload_dots                      those same matmul outputs, moved to pinned host memory and back for the
                                    backward (GPU/TPU). XLA:CPU compiles it too, with the same values: its
                                    device memory is host memory, so nothing is saved there.
Configs store ``False`` for none and ``True`` for blocks (what they held before the names existed, so older
configs, checkpoints and bundles compare equal) and the name otherwise; ``true``/``false``/``on``/``off``
are accepted for blocks / none. Nothing here imports JAX until a policy is built.
"""
from __future__ import annotations

import functools

NAMES = ("none", "blocks", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable", "offload_dots")
_ALIASES = {"false": "none", "off": "none", "true": "blocks", "on": "blocks"}


def name(value) -> str:
    """The policy name of a ``remat`` value (bool, alias or name); ValueError naming the field otherwise."""
    if isinstance(value, bool):
        return "blocks" if value else "none"
    if isinstance(value, str):
        key = value.strip().lower()
        key = _ALIASES.get(key, key)
        if key in NAMES:
            return key
    raise ValueError(f"remat={value!r}: expected one of {', '.join(NAMES)} "
                     f"(or true/on for blocks, false/off for none)")


def config_value(value):
    """What a config stores for ``value``: False (none), True (blocks) or the policy name."""
    n = name(value)
    return {"none": False, "blocks": True}.get(n, n)


@functools.lru_cache(maxsize=None)
def policy(n: str):
    """The ``jax.checkpoint`` policy of a name other than none; None for blocks (nn.remat's default)."""
    import jax

    cp = jax.checkpoint_policies
    return {"blocks": None, "nothing_saveable": cp.nothing_saveable, "dots_saveable": cp.dots_saveable,
            "dots_with_no_batch_dims_saveable": cp.dots_with_no_batch_dims_saveable,
            "offload_dots": cp.offload_dot_with_no_batch_dims("device", "pinned_host")}[n]


def wrap(cls, value):
    """``cls`` checkpointed by the policy of ``value`` (``cls`` itself for none)."""
    n = name(value)
    if n == "none":
        return cls
    import flax.linen as nn

    return nn.remat(cls, policy=policy(n))
