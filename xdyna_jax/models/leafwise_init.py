"""A network's init evaluated one primitive at a time, each param placed on its sharding as soon as it exists.

Why not one jitted ``module.init``: that program holds every param's threefry draw, a dozen fused kernels each,
and XLA:CPU spends minutes generating code for them: 69 s for the tiny UNet's 544 draws, 166 s for SD1.5's
UNet (2 cores, jax 0.10.2), before any step runs. Here the init is traced once (a jaxpr), the forward pass it
runs on example inputs is dropped (only what the params depend on is kept), and the rest is evaluated eagerly:
each distinct (primitive, shape) compiles once and is reused (the tiny UNet's draws have 33 shapes), about 12 s.

The values are the jitted init's to an ulp (the same primitives on the same keys; the one program may fuse a
multiply-add that runs here as two roundings), and the same on every mesh: threefry draws do not depend on where
they run (tests/test_xdyna_model.py compares the two). The multi-process placement (``_place`` with shards on
other hosts) is not exercised by any test. Memory: a leaf is moved onto its sharding
(``shardings``, a pytree like the params) as soon as it is made and the values it came from are dropped after
their last use, so one device holds the param being drawn plus what it already placed.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal, jaxpr_as_fun


def _live_eqns(jaxpr) -> list:
    """The equations the outputs depend on (a backward liveness pass: the init's forward pass falls out)."""
    needed = {v for v in jaxpr.outvars if not isinstance(v, Literal)}
    keep = []
    for eqn in reversed(jaxpr.eqns):
        if any(v in needed for v in eqn.outvars) or eqn.effects:
            keep.append(eqn)
            needed.update(v for v in eqn.invars if not isinstance(v, Literal))
    return keep[::-1]


def _trace(fn, static, key_type):
    """(closed jaxpr, its live equations, output treedef) of ``fn(*static, key)``."""
    closed, out_shape = jax.make_jaxpr(lambda k: fn(*static, k), return_shape=True)(key_type)
    return closed, _live_eqns(closed.jaxpr), jax.tree.structure(out_shape)


_trace_cached = functools.lru_cache(maxsize=64)(_trace)  # tracing the tiny UNet's init takes seconds


_NESTED: dict = {}


def _nested_jit(eqn):
    """The program of a nested ``jit`` equation, shared by every equation with the same jaxpr text: each draw
    traces its own (identical) jaxpr object, and binding those would compile once per param, not per shape."""
    key = (eqn.params["name"], str(eqn.params["jaxpr"]))
    if key not in _NESTED:
        if len(_NESTED) > 4096:  # many networks in one process: start over rather than grow without bound
            _NESTED.clear()
        _NESTED[key] = jax.jit(jaxpr_as_fun(eqn.params["jaxpr"]))
    return _NESTED[key]


def _place(x, sharding):
    if sharding is None:
        return x
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)  # a multi-process mesh: every process drew the same value; each keeps its shards
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def init_leafwise(fn, static: tuple, key, shardings=None):
    """``fn(*static, key)`` (pure; a pytree of arrays), evaluated eagerly primitive by primitive; with
    ``shardings`` (the same pytree of ``jax.sharding.Sharding``) each leaf is created on its sharding. The trace
    is memoised per (``fn``, ``static``, key type) when ``static`` is hashable (frozen configs are)."""
    key_type = jax.ShapeDtypeStruct(jnp.shape(key), key.dtype)
    try:
        closed, eqns, treedef = _trace_cached(fn, static, key_type)
    except TypeError:  # an unhashable static argument: trace every time
        closed, eqns, treedef = _trace(fn, static, key_type)
    jaxpr = closed.jaxpr
    leaf_shardings = [None] * treedef.num_leaves if shardings is None else treedef.flatten_up_to(shardings)
    out_index: dict = {}
    for i, v in enumerate(jaxpr.outvars):
        if not isinstance(v, Literal):
            out_index.setdefault(v, []).append(i)
    last_use = {}
    for n, eqn in enumerate(eqns):
        for v in eqn.invars:
            if not isinstance(v, Literal):
                last_use[v] = n

    env = dict(zip(jaxpr.constvars, closed.consts))
    env.update(zip(jaxpr.invars, [key]))
    outs: list = [None] * len(jaxpr.outvars)

    def read(v):
        return v.val if isinstance(v, Literal) else env[v]

    def emit(v):  # an output made: place it now, and keep the unplaced value only if an equation still reads it
        for i in out_index.pop(v, ()):
            outs[i] = _place(env[v], leaf_shardings[i])

    for v in list(out_index):
        if v in env:  # outputs that are constants or the key itself
            emit(v)
    for n, eqn in enumerate(eqns):
        with eqn.ctx.manager:  # the config the equation was traced under (as jax's own eval_jaxpr)
            if eqn.primitive.name == "jit":  # an initializer's own jit (jax.random.uniform, ...)
                ans = _nested_jit(eqn)(*map(read, eqn.invars))
            else:
                ans = eqn.primitive.bind(*map(read, eqn.invars), **eqn.primitive.get_bind_params(eqn.params))
        for v, x in zip(eqn.outvars, ans if eqn.primitive.multiple_results else [ans]):
            env[v] = x
            emit(v)
        for v in eqn.invars:
            if not isinstance(v, Literal) and last_use.get(v) == n and v not in out_index:
                env.pop(v, None)
        for v in eqn.outvars:  # made but never read again (the outputs are already placed)
            if v not in last_use:
                env.pop(v, None)
    for i, v in enumerate(jaxpr.outvars):
        if isinstance(v, Literal):
            outs[i] = _place(jnp.asarray(v.val), leaf_shardings[i])
    return jax.tree.unflatten(treedef, outs)
