"""Remat as named policies (xdyna_jax/models/remat.py): every policy gives the no-remat loss and gradients,
each is applied at the block boundaries, booleans and on/off keep their old meaning, bad names are refused."""
from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import CONFIGS, REPO_ROOT, random_tree
from xdyna_jax import config as config_lib
from xdyna_jax.cli import UserError
from xdyna_jax.models import ControlNet, ControlNetConfig, ModelsConfig, UNet3D, UNet3DConfig, param_shapes
from xdyna_jax.models import remat
from xdyna_jax.training import config as train_config
from xdyna_jax.training.state import models_for_training

# one resolution level: a resnet, a transformer and a motion module down, in the mid block and up
ONE_LEVEL = dict(block_out_channels=(32,), attention_head_dim=(2,), down_block_types=("CrossAttnDownBlock3D",),
                 up_block_types=("CrossAttnUpBlock3D",))
POLICIES = [n for n in remat.NAMES if n != "none"]


def _policies_in(jaxpr) -> list:
    """The ``policy`` param of every checkpoint in a jaxpr, nested ones included."""
    found = []
    for eqn in jaxpr.eqns:
        if "policy" in eqn.params:
            found.append(eqn.params["policy"])
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _policies_in(inner)
    return found


@pytest.fixture(scope="module")
def unet_case():
    """Random non-zero params and inputs of the one-level UNet, and a loss builder per remat value."""
    params = random_tree(param_shapes(UNet3D(UNet3DConfig.tiny(**ONE_LEVEL))), seed=0)
    x = jax.random.normal(jax.random.key(1), (1, 3, 8, 8, 4))
    ctx = jax.random.normal(jax.random.key(2), (1, 77 + 4, 48))
    t = jnp.array([500.0])

    def loss(value):
        model = UNet3D(UNet3DConfig.tiny(**ONE_LEVEL, remat=value))
        return lambda p: jnp.mean(model.apply({"params": p}, x, t, ctx) ** 2)

    ref = jax.jit(jax.value_and_grad(loss("none")))(params)
    return params, loss, ref


@pytest.mark.parametrize("name", POLICIES)
def test_policy_gives_the_loss_and_gradients_of_no_remat(unet_case, name):
    params, loss, (ref_loss, ref_grads) = unet_case
    jaxpr = jax.make_jaxpr(loss(name))(params).jaxpr
    found = _policies_in(jaxpr)
    # 3 down (resnet, transformer, motion), 3 mid (2 resnets, transformer), 2 x 3 up: each under the policy
    assert len(found) == 3 + 3 + 6 and all(p is remat.policy(name) for p in found), found
    value, grads = jax.jit(jax.value_and_grad(loss(name)))(params)
    np.testing.assert_allclose(float(value), float(ref_loss), rtol=1e-6, atol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-6, atol=1e-6)


def test_no_remat_has_no_checkpoint_and_the_controlnet_takes_the_policy():
    cfg = UNet3DConfig.tiny(**ONE_LEVEL)
    unet = UNet3D(cfg)
    assert _policies_in(jax.make_jaxpr(lambda: unet.init(jax.random.key(0), *unet.example_inputs()))().jaxpr) == []
    cn = ControlNet(ControlNetConfig.tiny(block_out_channels=(32,), attention_head_dim=(2,),
                                          down_block_types=("CrossAttnDownBlock2D",), remat="dots_saveable"))
    inputs = cn.example_inputs(size=4)
    params = cn.init(jax.random.key(0), *inputs)
    found = _policies_in(jax.make_jaxpr(lambda p: cn.apply(p, *inputs))(params).jaxpr)
    assert len(found) == 2 + 3 and all(p is remat.policy("dots_saveable") for p in found)


@pytest.mark.parametrize("given, stored", [(True, True), (False, False), ("true", True), ("false", False),
                                           ("True", True), ("on", True), ("off", False), ("blocks", True),
                                           ("none", False), ("dots_saveable", "dots_saveable"),
                                           ("offload_dots", "offload_dots")])
def test_booleans_and_aliases_parse(given, stored):
    """CLI text and YAML values alike; none/blocks are stored as False/True, what configs held before."""
    text = str(given).lower() if isinstance(given, bool) else given
    run = train_config.load(CONFIGS / "train_tiny.yaml", [f"train.remat={text}", f"models.unet.remat={text}"])
    assert run.train.remat is stored if isinstance(stored, bool) else run.train.remat == stored
    assert run.models.unet.remat == stored
    models = config_lib.from_dict(ModelsConfig, {"unet": {"remat": given}, "pose_controlnet": {"remat": given}})
    assert models.unet.remat == stored and models.pose_controlnet.remat == stored
    assert remat.name(given) == remat.name(stored)


def _has_custom_vjp(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if "custom_vjp" in eqn.primitive.name:
            return True
        for v in eqn.params.values():
            inner = getattr(v, "jaxpr", v)
            if hasattr(inner, "eqns") and _has_custom_vjp(inner):
                return True
    return False


def test_untied_remat_is_plain_checkpoint_with_the_same_gradients(unet_case):
    """``remat_tie=false`` is nn.remat as it comes (no custom VJP around the blocks); both give the no-remat
    gradients (the tied path is covered by the policy test above, which runs the default)."""
    params, _, (ref_loss, ref_grads) = unet_case
    x, ctx, t = (jax.random.normal(jax.random.key(1), (1, 3, 8, 8, 4)),
                 jax.random.normal(jax.random.key(2), (1, 77 + 4, 48)), jnp.array([500.0]))

    def loss(tie):
        model = UNet3D(UNet3DConfig.tiny(**ONE_LEVEL, remat="blocks", remat_tie=tie))
        return lambda p: jnp.mean(model.apply({"params": p}, x, t, ctx) ** 2)

    assert _has_custom_vjp(jax.make_jaxpr(loss(True))(params).jaxpr)
    assert not _has_custom_vjp(jax.make_jaxpr(loss(False))(params).jaxpr)
    value, grads = jax.jit(jax.value_and_grad(loss(False)))(params)
    np.testing.assert_allclose(float(value), float(ref_loss), rtol=1e-6, atol=1e-6)
    for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-6, atol=1e-6)


def test_tied_checkpoint_orders_the_recomputation_after_the_cotangent():
    """The backward of ``tied_checkpoint``: the residuals and the cotangent go through one barrier before the
    recomputation, and the gradients leave through another; values are jax.checkpoint's."""
    def f(w, x):
        return jnp.tanh(x @ w) @ w.T

    w, x = jax.random.normal(jax.random.key(0), (8, 8)), jax.random.normal(jax.random.key(1), (4, 8))
    tied = remat.tied_checkpoint(f)
    loss = lambda fn: lambda w, x: jnp.sum(fn(w, x) ** 2)  # noqa: E731
    got, ref = jax.grad(loss(tied), (0, 1))(w, x), jax.grad(loss(f), (0, 1))(w, x)
    for g, r in zip(got, ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-6, atol=1e-6)
    text = jax.jit(jax.grad(loss(tied))).lower(w, x).as_text()
    assert text.count("optimization_barrier") >= 3  # checkpoint's own + the tie's two
    # only the differentiated inputs get cotangents: w held fixed (a frozen block) costs no weight gradient
    dots = lambda argnums: jax.jit(jax.grad(loss(tied), argnums)).lower(w, x).as_text().count("dot_general")  # noqa
    assert dots(1) < dots((0, 1))
    np.testing.assert_allclose(np.asarray(jax.grad(loss(tied), 1)(w, x)), np.asarray(ref[1]), rtol=1e-6, atol=1e-6)


def test_train_remat_reaches_every_denoiser():
    run = train_config.load(CONFIGS / "train_tiny.yaml", ["train.remat=dots_with_no_batch_dims_saveable",
                                                          "models.unet.remat=blocks", "train.remat_tie=false"])
    m = models_for_training(run)
    assert {m.unet.remat, m.pose_controlnet.remat, m.face_controlnet.remat} == {"dots_with_no_batch_dims_saveable"}
    assert {m.unet.remat_tie, m.pose_controlnet.remat_tie, m.face_controlnet.remat_tie} == {False}
    assert models_for_training(train_config.load(CONFIGS / "train_tiny.yaml", [])).unet.remat_tie is True


def test_bad_name_is_refused_naming_the_field():
    with pytest.raises(UserError, match=r"config\.train: remat='dots'.*expected one of none, blocks"):
        train_config.load(CONFIGS / "train_tiny.yaml", ["train.remat=dots"])
    with pytest.raises(UserError, match=r"models\.pose_controlnet: remat='yes please'"):
        train_config.load(CONFIGS / "train_tiny.yaml", ["models.pose_controlnet.remat=yes please"])
    with pytest.raises(ValueError, match="remat=1: expected one of"):
        UNet3DConfig.tiny(remat=1)


def test_bench_rows_take_policy_names():
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    import train_bench

    assert train_bench.parse_row("one:512x512:adapter:dots_saveable", train_bench.SD15_FIELDS) == dict(
        mesh="one", size="512x512", stage="adapter", remat="dots_saveable")
    assert train_bench.parse_row("full:on", train_bench.TINY_FIELDS)["remat"] == "on"
    assert "train.remat=off" in train_bench.row_overrides("adapter", "off", train_bench.MESHES["one"], 1)
    with pytest.raises(ValueError, match="row 'full:dots'.*remat='dots'"):
        train_bench.parse_row("full:dots", train_bench.TINY_FIELDS)
    with pytest.raises(ValueError, match="expected mesh:size:stage:remat"):
        train_bench.parse_row("one:512x512:adapter", train_bench.SD15_FIELDS)
