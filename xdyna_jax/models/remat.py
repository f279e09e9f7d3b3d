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


def tied_checkpoint(fn, policy=None):
    """``jax.checkpoint(fn, policy)`` whose backward pass recomputes only once the output's cotangent exists.

    Why: nothing orders a checkpoint's recomputation after the cotangent it multiplies, and a scheduler may
    run the recomputation of many blocks early or leave their weight gradients for the end of the step,
    keeping every block's recomputed activations at once (measured on XLA:CPU's memory scheduler: at the full
    stage's peak all top-level transformers' and motion modules' recomputations were live; benchmarks/
    RESULTS.md). Here the residuals pass through an ``optimization_barrier`` with the cotangent, so the
    recomputation depends on it, and the block's param and input cotangents leave through another, so the
    weight gradients are done before the next block's recomputation starts. Only the inputs being
    differentiated get cotangents (``symbolic_zeros``): a frozen block's weight gradients are never computed.
    Values and gradients are ``jax.checkpoint``'s."""
    import jax
    import jax.numpy as jnp
    from jax.custom_derivatives import SymbolicZero

    checkpointed = jax.checkpoint(fn, policy=policy, prevent_cse=True)

    @jax.custom_vjp
    def tied(*args):
        return checkpointed(*args)

    def forward(*primals):
        leaves, tree = jax.tree.flatten(primals)
        values, perturbed = [p.value for p in leaves], tuple(p.perturbed for p in leaves)

        def of_perturbed(*diff):
            it = iter(diff)
            return checkpointed(*jax.tree.unflatten(tree, [next(it) if d else v for v, d in zip(values, perturbed)]))

        out, vjp_fn = jax.vjp(of_perturbed, *(v for v, d in zip(values, perturbed) if d))
        # the flags and the tree travel as the static part of a Partial (residuals must be a pytree of arrays)
        return out, jax.tree_util.Partial(functools.partial(_cotangents, tree, perturbed), vjp_fn)

    def backward(residuals, cotangent):
        cotangent = jax.tree.map(lambda c: jnp.zeros(c.shape, c.dtype) if isinstance(c, SymbolicZero) else c,
                                 cotangent, is_leaf=lambda c: isinstance(c, SymbolicZero))
        residuals, cotangent = jax.lax.optimization_barrier((residuals, cotangent))
        return residuals(cotangent)

    tied.defvjp(forward, backward, symbolic_zeros=True)
    return tied


def _cotangents(tree, perturbed, vjp_fn, cotangent):
    """The cotangents of every input of ``tied_checkpoint`` (None where not differentiated); the computed ones
    leave together through a barrier: the weight gradients (small outputs of large recomputed inputs) are
    done before the backward moves on, not left for the end of the step."""
    import jax

    it = iter(jax.lax.optimization_barrier(vjp_fn(cotangent)))
    return tuple(jax.tree.unflatten(tree, [next(it) if d else None for d in perturbed]))


def _lifted_tied_checkpoint(fn, variables=True, rngs=True, policy=None):
    """flax.core's lifted form of ``tied_checkpoint``: the module's variables and rngs travel as arguments
    (``lift.pack``), as ``nn.remat`` does, so the param tree is the same as without remat."""
    from flax.core import lift

    def inner(scope_fn, repack_fn, variable_groups, rng_groups, *args):
        def pure(variable_groups, rng_groups, *args):
            scope = scope_fn(variable_groups, rng_groups)
            return fn(scope, *args), repack_fn(scope)

        # no variables yet: init is creating them (no gradient to take); a block without params lands here
        # too and simply runs unwrapped, which changes no value
        if any(_initializing(g) for g in variable_groups):
            return pure(variable_groups, rng_groups, *args)
        return tied_checkpoint(pure, policy)(variable_groups, rng_groups, *args)

    return lift.pack(inner, (variables,), (variables,), (rngs,), name="remat")


def _initializing(group) -> bool:
    import jax

    return not jax.tree.leaves(group)


def wrap(cls, value, tie: bool = True):
    """``cls`` checkpointed by the policy of ``value`` (``cls`` itself for none); ``tie``: its recomputation
    and weight gradients ordered by the output's cotangent (``tied_checkpoint``), else plain ``nn.remat``
    (the scheduler orders them: on a chip it may overlap more, at the memory cost measured in RESULTS.md)."""
    n = name(value)
    if n == "none":
        return cls
    import flax.linen as nn
    from flax.linen import transforms

    if not tie:
        return nn.remat(cls, policy=policy(n))
    return transforms.lift_transform(_lifted_tied_checkpoint, cls, policy=policy(n))
