"""What trains: stage presets as regex tables over the param tree, the trainable/frozen split, the
optimizer and the train state (sharded init, abstract target for restore).

A param's path is ``part/module/.../leaf`` (``unet/down_blocks_0/attentions_0/transformer_blocks_0/
attn1/to_q_ff/kernel``). A stage is a tuple of regexes; a param trains when any one matches its path
(``re.search``). Everything else is frozen: it is an input of the step, has no optimizer state and is
not checkpointed (it comes back from the init seed or the ``train.init`` bundle).
"""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from xdyna_jax.cli import UserError

STAGES: dict[str, tuple[str, ...]] = {
    "adapter": (r"^unet/.*/attn1/(to_q_ff|to_out_ff)/",),                 # the Dynamics-Adapter
    "motion": (r"^unet/.*/motion_modules_\d+/",),
    "pose_controlnet": (r"^pose_controlnet/",),
    "face_controlnet": (r"^face_controlnet/",),
    "full": (r"^(unet|pose_controlnet|face_controlnet)/",),                # pretraining from scratch
    "vae": (r"^vae/",),                                                    # the autoencoder's own objective
    # the IP-Adapter's Resampler, trained over a frozen image encoder ("full+resampler" from scratch)
    "resampler": (r"^resampler/",),
}


def stage_patterns(stage: str) -> tuple[str, ...]:
    """The regexes of ``stage`` ('adapter', or a union 'adapter+motion+pose_controlnet')."""
    names = [s.strip() for s in stage.split("+") if s.strip()]
    unknown = [n for n in names if n not in STAGES]
    if not names or unknown:
        raise UserError(f"train.stage={stage!r}: unknown stage {unknown or [stage]}; expected one of "
                        f"{sorted(STAGES)} or several joined by '+'")
    if "vae" in names and len(names) > 1:
        raise UserError(f"train.stage={stage!r}: 'vae' has its own objective and cannot be combined")
    return tuple(p for n in names for p in STAGES[n])


def is_trainable(path: str, patterns) -> bool:
    return any(re.search(p, path) for p in patterns)


def split(params, stage: str):
    """(trainable, frozen): two nested dicts that together hold every leaf of ``params`` once."""
    pats = stage_patterns(stage)
    flat = flatten_dict(params, sep="/")
    train = {k: v for k, v in flat.items() if is_trainable(k, pats)}
    if not train:
        raise UserError(f"train.stage={stage!r}: no param of these networks matches {pats}")
    frozen = {k: v for k, v in flat.items() if k not in train}
    return unflatten_dict(train, sep="/"), unflatten_dict(frozen, sep="/")


def merge(trainable, frozen):
    """The full params tree again (the inverse of ``split``)."""
    return unflatten_dict({**flatten_dict(frozen, sep="/"), **flatten_dict(trainable, sep="/")}, sep="/")


def adapter_init(params):
    """Spec §8: ``to_q_ff`` starts as a copy of ``to_q`` (to_out_ff keeps its default init; the
    models' own initialisers already zero the ControlNet zero convs and the motion ``proj_out``)."""
    flat = flatten_dict(params, sep="/")
    for k in list(flat):
        if "/to_q_ff/" in k:
            flat[k] = flat[k.replace("/to_q_ff/", "/to_q/")]
    return unflatten_dict(flat, sep="/")


# --- optimizer ----------------------------------------------------------------------------------------

HE_GAIN = 6 ** 0.5


def he_scale(params, parts):
    """Every weight kernel of the networks ``parts`` times sqrt(6): torch's default U(+-1/sqrt(fan_in))
    (std 1/sqrt(3 fan_in), what the models' initialisers reproduce for porting) becomes He's std
    sqrt(2/fan_in). With torch's scale each conv shrinks a signal by about sqrt(3), and an SD-style VAE
    trained from nothing sat on a grey, blurred plateau (diffusers' own module too); at He scale the same
    VAE keeps colours within 200 steps (docs/TINY_WORLD.md). Zero-initialised kernels (zero convs, the
    motion modules' ``proj_out``) stay zero; biases, norms and embeddings are untouched."""
    def scale(path, x):
        name = jax.tree_util.keystr(path)
        return x * HE_GAIN if name.endswith("['kernel']") else x

    return {k: jax.tree_util.tree_map_with_path(scale, v) if k in parts else v for k, v in params.items()}


def with_vae_logvar_bias(params, value: float):
    """The VAE's ``quant_conv`` bias with its log-variance half (the second half of its outputs) set to ``value``."""
    qc = params["vae"]["quant_conv"]
    bias = qc["bias"]
    logvar_half = np.arange(bias.shape[0]) >= bias.shape[0] // 2
    new = jnp.where(logvar_half, jnp.asarray(value, bias.dtype), bias)
    return {**params, "vae": {**params["vae"], "quant_conv": {**qc, "bias": new}}}


def learning_rate(t):
    """The schedule of ``TrainConfig`` t: linear warmup, then constant or cosine."""
    if t.schedule == "constant":
        after = optax.constant_schedule(t.learning_rate)
    else:
        after = optax.cosine_decay_schedule(t.learning_rate, max(1, t.steps - t.warmup_steps), t.end_lr_ratio)
    if t.warmup_steps <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps), after],
                                [t.warmup_steps])


def optimizer(t) -> optax.GradientTransformation:
    parts = [optax.clip_by_global_norm(t.clip_grad_norm)] if t.clip_grad_norm > 0 else []
    parts.append(optax.adamw(learning_rate(t), b1=t.b1, b2=t.b2, weight_decay=t.weight_decay))
    return optax.chain(*parts)


# --- the state ----------------------------------------------------------------------------------------

class TrainState(NamedTuple):
    """Everything the step changes, plus the frozen params it reads (not checkpointed)."""

    step: jax.Array          # () int32: steps done
    trainable: Any           # nested dict, float32 master weights
    opt_state: Any
    ema: Any                 # EMA of ``trainable`` or None
    frozen: Any              # nested dict; never updated


def checkpointed(state: TrainState) -> dict:
    """The part of the state a checkpoint holds (no frozen params)."""
    out = {"step": state.step, "trainable": state.trainable, "opt_state": state.opt_state}
    if state.ema is not None:
        out["ema"] = state.ema
    return out


def with_checkpointed(state: TrainState, saved: dict) -> TrainState:
    return state._replace(step=saved["step"], trainable=saved["trainable"], opt_state=saved["opt_state"],
                          ema=saved.get("ema"))


def models_for_training(run) -> Any:
    """The ModelsConfig the step runs: compute dtype and remat policy from ``train.*`` (params stay float32).
    ``train.remat`` / ``train.remat_tie`` replace the networks' own (UNet and ControlNets alike; models/remat.py)."""
    t, m = run.train, run.models
    kw = dict(dtype=t.compute_dtype, remat=t.remat, remat_tie=t.remat_tie)
    face = None if m.face_controlnet is None else dataclasses.replace(m.face_controlnet, **kw)
    return dataclasses.replace(m, unet=dataclasses.replace(m.unet, **kw),
                               pose_controlnet=dataclasses.replace(m.pose_controlnet, **kw), face_controlnet=face)


def _fresh(params, t) -> TrainState:
    """State from full params (already placed); pure, so it can be jitted with out_shardings."""
    trainable, frozen = split(params, t.stage)
    trainable = jax.tree.map(lambda x: x.astype(jnp.float32), trainable)
    opt_state = optimizer(t).init(trainable)
    ema = jax.tree.map(jnp.copy, trainable) if t.ema_decay > 0 else None
    return TrainState(jnp.zeros((), jnp.int32), trainable, opt_state, ema, frozen)


def state_shardings(run, mesh, params_shape=None) -> TrainState:
    """A TrainState of NamedShardings: params by the logical rules, Adam moments like their params,
    optimizer counters replicated."""
    from xdyna_jax.models import xdyna
    from xdyna_jax.sharding import replicated, rules_with

    p_sh = xdyna.param_shardings(run.models, mesh, rules_with(run.mesh.rules))
    if params_shape is not None:  # only the parts this run has
        p_sh = {k: v for k, v in p_sh.items() if k in params_shape}
    tr_sh, fr_sh = split(p_sh, run.train.stage)
    shapes = abstract_state(run, params_shape or xdyna.param_shapes(run.models))
    rep = replicated(mesh)
    opt_sh = optax.tree_map_params(optimizer(run.train), lambda _, s: s, shapes.opt_state, tr_sh,
                                   transform_non_params=lambda _: rep)
    ema_sh = tr_sh if run.train.ema_decay > 0 else None
    return TrainState(rep, tr_sh, opt_sh, ema_sh, fr_sh)


def abstract_state(run, params_shape) -> TrainState:
    return jax.eval_shape(functools.partial(_fresh, t=run.train), params_shape)


def init_state(run, mesh, params) -> TrainState:
    """The first state from full params ``params`` (the models' init or a bundle), placed on ``mesh``."""
    if "adapter" in run.train.stage.split("+"):
        params = adapter_init(params)
    sh = state_shardings(run, mesh, jax.eval_shape(lambda: params))
    return jax.jit(functools.partial(_fresh, t=run.train), out_shardings=sh)(params)
