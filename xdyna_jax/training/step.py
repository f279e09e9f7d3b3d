"""The pure train step, ``train_step(state, batch) -> (state, metrics)``, and its compiled, sharded form.

Per-step randomness is ``fold_in(key(seed), step)``, so a step is a pure function of the state and the
batch: a resumed run repeats an uninterrupted one exactly. With ``accum_steps > 1`` the batch is split
into micro-batches scanned with ``lax.scan`` (micro-batch i draws from ``fold_in(step key, i)``) and the
gradients averaged. Only the trainable subset is differentiated and updated; frozen params pass through.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from . import objective
from .state import TrainState, learning_rate, merge, optimizer


def train_step(state: TrainState, batch, *, run, models):
    t = run.train
    key = jax.random.fold_in(jax.random.key(t.seed), state.step)

    def loss_fn(trainable, micro, k):
        return objective.loss(merge(trainable, state.frozen), micro, k, cfg=models, train=t)

    grad_fn = jax.value_and_grad(loss_fn)
    if t.accum_steps == 1:
        loss, grads = grad_fn(state.trainable, batch, key)
    else:
        a = t.accum_steps
        micro = jax.tree.map(lambda x: x.reshape((a, x.shape[0] // a) + x.shape[1:]), batch)

        def body(carry, xs):
            i, mb = xs
            l, g = grad_fn(state.trainable, mb, jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, carry, (l, g)), None

        zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, state.trainable))
        (loss, grads), _ = jax.lax.scan(body, zero, (jnp.arange(a), micro))
        loss, grads = loss / a, jax.tree.map(lambda g: g / a, grads)
    updates, opt_state = optimizer(t).update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    ema = state.ema
    if ema is not None:
        ema = jax.tree.map(lambda e, p: t.ema_decay * e + (1.0 - t.ema_decay) * p, ema, trainable)
    # grad_norm before clipping; update_norm is the step AdamW applied (learning rate and decay included);
    # param_norm of the params after it: a run that drifts or stalls shows in their ratio
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "update_norm": optax.tree.norm(updates),
               "param_norm": optax.tree.norm(trainable), "learning_rate": learning_rate(t)(state.step)}
    return TrainState(state.step + 1, trainable, opt_state, ema, state.frozen), metrics


def batch_shardings(batch, mesh, rules=None):
    from xdyna_jax.sharding import batch_sharding

    return jax.tree.map(lambda x: batch_sharding(mesh, x.ndim, rules), batch)


_COMPILED: dict = {}


def step_key_config(run):
    """The part of the run config the compiled step depends on: keys that only steer the host loop
    (how long, how often) are normalised, so runs differing only there share one executable."""
    import dataclasses

    t = run.train
    steps = t.steps if t.schedule == "cosine" else 1
    t = dataclasses.replace(t, steps=steps, save_every=1, max_to_keep=1, log_every=1, eval_every=0, eval_batches=0,
                            profile="", debug_nan_step=-1, init="")
    return dataclasses.replace(run, train=t, data=type(run.data)(), mesh=type(run.mesh)())


def lower_step(run, models, mesh, state, batch, rules=None):
    """``train_step`` jitted with the shardings of ``state`` and ``batch`` (the state donated) and lowered,
    traced inside ``sharding.activation_sharding``: the blocks' activation constraints follow ``rules``
    (default: the run's table, ``mesh.rules``). ``state`` and ``batch`` may be arrays or sharded
    ShapeDtypeStructs."""
    from xdyna_jax.sharding import activation_sharding, replicated, rules_with

    rules = rules_with(run.mesh.rules) if rules is None else rules
    state_sh = jax.tree.map(lambda x: x.sharding, state)
    fn = jax.jit(functools.partial(train_step, run=step_key_config(run), models=models),
                 in_shardings=(state_sh, batch_shardings(batch, mesh, rules)),
                 out_shardings=(state_sh, replicated(mesh)), donate_argnums=0)
    with activation_sharding(mesh, rules):
        return fn.lower(state, batch)


def compile_step(run, models, mesh, state, batch):
    """``train_step`` compiled for the shapes and shardings of ``state`` and ``batch``, the state donated.

    Executables are memoised in-process, keyed by the step's config, the mesh, the run's rule table
    (``mesh.rules``) and the input layout.
    """
    from xdyna_jax.sharding import rules_with

    rules = rules_with(run.mesh.rules)  # before step_key_config, which forgets the mesh config
    run = step_key_config(run)
    leaves, tree = jax.tree.flatten((state, batch))
    key = (run, models, mesh, rules, tree, tuple((x.shape, x.dtype, x.sharding) for x in leaves))
    if key not in _COMPILED:
        _COMPILED[key] = lower_step(run, models, mesh, state, batch, rules).compile()
    return _COMPILED[key]


# peak dense bf16 FLOP/s per chip, for model FLOP utilisation (None: unknown device, MFU not reported)
PEAK_FLOPS = {"TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12,
              "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12}


def step_flops(compiled) -> float | None:
    """FLOPs of one step from XLA's cost analysis (None when the backend does not say)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def peak_flops(device) -> float | None:
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
