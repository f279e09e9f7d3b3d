"""Sharding on 8 fake CPU devices: FSDP (data=2 x fsdp=4) and tensor parallelism (fsdp=4 x tensor=2)
give the unsharded numbers with the activations pinned by the rule table, every kernel is split the intended
way, and ``mesh.rules`` overrides reach params, batches, the train state and the activation constraints."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from helpers import CONFIGS, MICRO_TRAIN, random_tree, tiny_models_config
from official_weights import official_weights
from xdyna_jax.models import UNet3D, UNet3DConfig, logical_axes, param_shapes
from xdyna_jax.porting import official_entries, unet_params_from_torch
from xdyna_jax.sharding import (MeshConfig, activation_sharding, batch_sharding, logical_to_mesh_spec, make_mesh,
                                param_shardings, replicated, rules_with, shard)

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")

# two resolution levels keep the 8-device compiles short; every layer kind is still present
SMALL = UNet3DConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                          down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                          up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
TB = "up_blocks_1/attentions_0/transformer_blocks_0"  # a transformer block at 32 channels, 2 heads
GEGLU_KEY = "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.weight"


def at(tree, path):
    for k in path.split("/"):
        tree = tree[k]
    return tree


@pytest.fixture(scope="module")
def small():
    """The small UNet, ported official-layout weights (random, non-zero everywhere, so zero-initialised
    layers cannot hide a sharding bug), inputs and the single-device forward."""
    model = UNet3D(SMALL)
    state = official_weights({e.key: e.shape for e in official_entries(SMALL)}, seed=0)
    params = unet_params_from_torch(state, SMALL)
    b, f = 8, 3
    x = jax.random.normal(jax.random.key(2), (b, f, 8, 8, 4))
    ctx = jax.random.normal(jax.random.key(3), (b, 77 + SMALL.num_ip_tokens, SMALL.cross_attention_dim))
    t = jnp.full((b,), 321.0)
    ref = jax.jit(model.apply)({"params": params}, x, t, ctx)
    return model, state, params, (x, t, ctx), ref


def constraints(lowered) -> list[str]:
    """The activation sharding constraints of a lowered program (Shardy or GSPMD text)."""
    return [line.strip() for line in lowered.as_text().splitlines()
            if "sdy.sharding_constraint" in line or "@Sharding" in line]


def sharded_forward(model, params, inputs, mesh, want_constraint=None):
    """Sharded params and the forward traced under ``activation_sharding(mesh)``: every residual-stream
    constraint of the program is ``want_constraint`` (Shardy text), when given."""
    p_sh = param_shardings(logical_axes(model), param_shapes(model), mesh)
    sharded = shard(params, p_sh)
    x, t, ctx = inputs
    # a fresh function: a jitted one already traced outside the context would keep that trace
    fwd = jax.jit(lambda p, *a: model.apply(p, *a),
                  in_shardings=({"params": p_sh}, batch_sharding(mesh, 5), batch_sharding(mesh, 1),
                                batch_sharding(mesh, 3)),
                  out_shardings=batch_sharding(mesh, 5))
    with activation_sharding(mesh):
        lowered = fwd.lower({"params": sharded}, shard(x, batch_sharding(mesh, 5)), t, ctx)
    found = constraints(lowered)
    # conv_in 1; down 4 + 2 (resnet, transformer, motion, downsampler; resnet, motion); mid 3 (resnet,
    # transformer, resnet); up 5 + 6 (2 x (resnet, motion), upsampler; 2 x (resnet, transformer, motion))
    assert len(found) == 21, found
    if want_constraint is not None:
        assert all(want_constraint in c for c in found), found
    return sharded, lowered.compile()({"params": sharded}, shard(x, batch_sharding(mesh, 5)), t, ctx)


@needs8
def test_fsdp_forward_matches_unsharded_and_kernels_are_split(small):
    model, _, params, inputs, ref = small
    sharded, out = sharded_forward(model, params, inputs, make_mesh(MeshConfig(data=2, fsdp=4)),
                                   want_constraint='[{"data", "fsdp"}, {}, {}, {}, {}]')
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)

    # the large kernels really are split four ways over fsdp
    big = at(sharded, TB + "/ff/net_0/proj/kernel")
    assert big.shape == (32, 256)
    assert big.addressable_shards[0].data.shape == (8, 256)
    conv = sharded["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
    assert conv.addressable_shards[0].data.size * 4 == conv.size
    n_split = sum(1 for leaf in jax.tree.leaves(sharded)
                  if leaf.size >= 4096 and leaf.addressable_shards[0].data.size * 4 == leaf.size)
    n_big = sum(1 for leaf in jax.tree.leaves(sharded) if leaf.size >= 4096)
    assert n_split == n_big, f"only {n_split} of {n_big} large params are split over fsdp"


@needs8
def test_tensor_parallel_forward_matches_unsharded(small):
    model, _, params, inputs, ref = small
    _, out = sharded_forward(model, params, inputs, make_mesh(MeshConfig(data=1, fsdp=4, tensor=2)),
                             want_constraint='[{"data", "fsdp"}, {}, {}, {}, {}]')
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


@needs8
def test_tensor_splits_are_megatron_style(small):
    """q/k/v split by heads, to_out on its input, GEGLU on its output with each device holding the
    value AND gate columns of the same hidden units, net_2 on its input, resnets conv1 out / conv2 in."""
    model, state, params, _, _ = small
    mesh = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    sharded = shard(params, param_shardings(logical_axes(model), param_shapes(model), mesh))
    want = {  # path: (mesh spec, shape of one device's block)
        TB + "/attn1/to_q/kernel": (P("fsdp", "tensor"), (8, 16)),       # 2 heads of 16: one head per device
        TB + "/attn1/to_q_ff/kernel": (P("fsdp", "tensor"), (8, 16)),
        TB + "/attn1/to_out_0/kernel": (P("tensor", "fsdp"), (16, 8)),
        TB + "/attn1/to_out_ff/kernel": (P("tensor", "fsdp"), (16, 8)),
        TB + "/attn1/to_out_0/bias": (P("fsdp"), (8,)),
        TB + "/attn2/to_k/kernel": (P("fsdp", "tensor"), (12, 16)),      # context width 48
        TB + "/attn2/to_v_ip/kernel": (P("fsdp", "tensor"), (12, 16)),
        TB + "/ff/net_0/proj/kernel": (P("fsdp", "tensor"), (8, 128)),
        TB + "/ff/net_0/proj/bias": (P("tensor"), (128,)),
        TB + "/ff/net_2/kernel": (P("tensor", "fsdp"), (64, 8)),
        "up_blocks_1/motion_modules_0/temporal_transformer/transformer_blocks_0/attention_blocks_0/to_v/kernel":
            (P("fsdp", "tensor"), (8, 16)),
        "down_blocks_1/resnets_0/conv1/kernel": (P(None, None, "fsdp", "tensor"), (3, 3, 8, 32)),
        "down_blocks_1/resnets_0/conv2/kernel": (P(None, None, "tensor", "fsdp"), (3, 3, 32, 16)),
        "down_blocks_1/resnets_0/time_emb_proj/kernel": (P("fsdp", "tensor"), (32, 32)),
        "down_blocks_1/resnets_0/conv_shortcut/kernel": (P(None, None, "fsdp", None), (1, 1, 8, 64)),
        "conv_in/kernel": (P(None, None, "fsdp", None), (3, 3, 1, 32)),
    }
    for path, (spec, block) in want.items():
        leaf = at(sharded, path)
        assert leaf.sharding.spec == spec, path
        assert {s.data.shape for s in leaf.addressable_shards} == {block}, path

    # GEGLU: the device at tensor index i holds value AND gate rows i*64..i*64+63 of the official weight
    official = state[GEGLU_KEY]  # (2 * 128, 32): [values | gates]
    inner, per_device = 128, 64
    proj = at(sharded, TB + "/ff/net_0/proj/kernel")
    coords = {d: np.argwhere(mesh.devices == d)[0] for d in mesh.devices.flat}
    seen = set()
    for s in proj.addressable_shards:
        rows, cols = s.index
        ti = coords[s.device][2]  # position on the tensor axis
        assert cols == slice(2 * per_device * ti, 2 * per_device * (ti + 1))
        hidden = slice(per_device * ti, per_device * (ti + 1))
        np.testing.assert_array_equal(np.asarray(s.data)[:, 0::2], official[hidden, rows].T)
        np.testing.assert_array_equal(np.asarray(s.data)[:, 1::2], official[inner:][hidden, rows].T)
        seen.add(ti)
    assert seen == {0, 1}


@needs8
def test_rules_replicate_non_divisible_dims_and_reject_unknown_names():
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    # a 3-channel condition conv cannot split its 3 input channels 4 ways: its output channels take fsdp
    assert logical_to_mesh_spec(P("conv_h", "conv_w", "conv_in", "conv_out"), (3, 3, 3, 16), mesh) == \
        P(None, None, None, "fsdp")
    assert logical_to_mesh_spec(P("conv_h", "conv_w", "conv_in", "conv_out"), (3, 3, 8, 16), mesh) == \
        P(None, None, "fsdp", None)
    assert logical_to_mesh_spec(P("embed", "heads"), (64, 8), mesh) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(P("embed", "embed"), (6, 8), mesh) == P(None, "fsdp")
    with pytest.raises(KeyError, match="no sharding rule"):
        logical_to_mesh_spec(P("mystery"), (8,), mesh)
    assert replicated(mesh).spec == P()


def test_make_mesh_validates_sizes():
    devs = jax.devices()
    with pytest.raises(ValueError, match="needs"):
        make_mesh(MeshConfig(data=len(devs) + 1, fsdp=1), devs)
    with pytest.raises(ValueError, match="at most one axis"):
        make_mesh(MeshConfig(data=-1, fsdp=-1), devs)
    mesh = make_mesh(MeshConfig(data=-1), devs)
    assert mesh.shape["data"] == len(devs)


def test_every_param_has_logical_names_at_full_size():
    specs = logical_axes(UNet3D(UNet3DConfig.sd15()))
    shapes = param_shapes(UNet3D(UNet3DConfig.sd15()))
    flat_specs = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))
    flat_shapes = jax.tree.leaves(shapes)
    assert len(flat_specs) == len(flat_shapes) == 1286
    for spec, s in zip(flat_specs, flat_shapes):
        assert len(spec) == len(s.shape) and all(n is not None for n in spec) or s.shape[0] == 1


@needs8
def test_every_model_maps_onto_the_rule_table():
    """Each model's logical names are known to RULES, its big kernels are split over fsdp, and at
    tensor=2 every full-size heads / mlp / conv_mid dim is split over tensor."""
    from xdyna_jax.models import (AutoencoderKL, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel,
                                  ControlNet, ControlNetConfig, Resampler, ResamplerConfig, VAEConfig)

    fsdp = make_mesh(MeshConfig(data=2, fsdp=4))
    tp = make_mesh(MeshConfig(data=1, fsdp=4, tensor=2))
    for model in (UNet3D(UNet3DConfig.sd15()), ControlNet(ControlNetConfig.sd15()), Resampler(ResamplerConfig.sd15()),
                  AutoencoderKL(VAEConfig.sd15()), CLIPVisionModel(CLIPVisionConfig.vit_h14()),
                  CLIPTextModel(CLIPTextConfig.sd15())):
        shapes, logical = param_shapes(model), logical_axes(model)
        flat_logical = jax.tree.leaves(logical, is_leaf=lambda x: isinstance(x, P))
        name = type(model).__name__
        for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(param_shardings(logical, shapes, fsdp))):
            if np.prod(s.shape) >= 2**20:
                assert "fsdp" in str(sh.spec), (name, s.shape, sh.spec)
        for s, lg, sh in zip(jax.tree.leaves(shapes), flat_logical,
                             jax.tree.leaves(param_shardings(logical, shapes, tp))):
            for n, axis in zip(lg, sh.spec):
                assert (axis == "tensor") == (n in ("heads", "mlp", "conv_mid")), (name, s.shape, lg, sh.spec)


@needs8
def test_controlnet_sharded_forward_with_constraints_matches_unsharded():
    from xdyna_jax.models import ControlNet, ControlNetConfig

    model = ControlNet(ControlNetConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                                            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D")))
    params = random_tree(param_shapes(model), seed=1)
    b, f = 4, 2  # a video: inputs replicated, its B·F = 8 per-frame samples split over data x fsdp inside
    x = jax.random.normal(jax.random.key(4), (b, f, 8, 8, 4))
    cond = jax.random.uniform(jax.random.key(5), (b, f, 64, 64, 3))
    ctx = jax.random.normal(jax.random.key(6), (b, 77, 48))
    t = jnp.full((b,), 321.0)
    ref = jax.jit(model.apply)({"params": params}, x, t, ctx, cond)
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    p_sh = param_shardings(logical_axes(model), param_shapes(model), mesh)
    rep = replicated(mesh)
    fwd = jax.jit(lambda p, *a: model.apply(p, *a), in_shardings=({"params": p_sh}, rep, rep, rep, rep))
    args = ({"params": shard(params, p_sh)}, x, t, ctx, cond)
    with activation_sharding(mesh):
        lowered = fwd.lower(*args)
    found = constraints(lowered)
    # the input; resnet, transformer, downsampler; resnet; mid (resnet, transformer, resnet)
    assert len(found) == 8 and all('[{"data", "fsdp"}, {}, {}, {}, {}]' in c for c in found), found
    out = lowered.compile()(*args)
    for o, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):  # float32 sums in another order: 1e-6 of the scale
        np.testing.assert_allclose(np.asarray(o), np.asarray(r), atol=1e-6 * float(np.abs(r).max()), rtol=0)


def test_constraints_are_no_ops_outside_the_context_and_on_one_device():
    model = UNet3D(SMALL)
    args = model.example_inputs(batch=2, frames=2)
    params = param_shapes(model)

    def count(fn):
        return str(jax.make_jaxpr(fn)(params)).count("sharding_constraint")

    apply = lambda p: model.apply({"params": p}, *args)  # noqa: E731
    assert count(apply) == 0
    with activation_sharding(make_mesh(MeshConfig(data=1), jax.devices()[:1])):
        assert count(lambda p: model.apply({"params": p}, *args)) == 0


@needs8
def test_activation_specs_leave_undividable_batches_to_xla():
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    residual = P("batch", None, None, None, "act_embed")
    assert logical_to_mesh_spec(residual, (8, 3, 4, 4, 64), mesh, unfit=P.UNCONSTRAINED) == \
        P(("data", "fsdp"), None, None, None, None)
    assert logical_to_mesh_spec(residual, (2, 3, 4, 4, 64), mesh, unfit=P.UNCONSTRAINED) == \
        P(P.UNCONSTRAINED, None, None, None, None)
    # params keep replicating what does not divide
    assert logical_to_mesh_spec(P("embed"), (6,), mesh) == P(None)


@needs8
def test_mesh_rules_override_params_batches_and_activations():
    """``mesh.rules`` is a table passed explicitly beside the mesh: two configs of one layout (the same
    interned ``Mesh``) keep their own tables."""
    from xdyna_jax.models import xdyna

    default_cfg = MeshConfig(data=2, fsdp=4)
    over_cfg = MeshConfig(data=2, fsdp=4, rules=[["embed", None], ["batch", "data"], ["act_embed", "fsdp"]])
    default, over = make_mesh(default_cfg), make_mesh(over_cfg)
    assert over is default  # meshes are interned by layout: a table cannot ride on the mesh
    rules = dict(rules_with(over_cfg.rules))
    assert rules["embed"] is None and rules["batch"] == "data" and rules["heads"] == "tensor"  # others kept
    geglu = (P("embed", "mlp"), (32, 256))
    assert logical_to_mesh_spec(*geglu, over, rules_with(over_cfg.rules)) == P(None, "tensor")
    assert batch_sharding(over, 3, rules_with(over_cfg.rules)).spec == P("data", None, None)
    # the default table, whichever config made the mesh last
    assert logical_to_mesh_spec(*geglu, default, rules_with(default_cfg.rules)) == P("fsdp", "tensor")
    assert logical_to_mesh_spec(*geglu, default) == P("fsdp", "tensor")
    assert batch_sharding(default, 3).spec == P(("data", "fsdp"), None, None)

    # the models' param shardings (what training/state.py:state_shardings builds on) follow the table given
    cfg = tiny_models_config()
    sh = xdyna.param_shardings(cfg, over, rules_with(over_cfg.rules))
    ff = lambda tree: tree["unet"]["up_blocks_1"]["attentions_0"]["transformer_blocks_0"]["ff"]["net_0"]["proj"]  # noqa: E731
    assert ff(sh)["kernel"].spec == P(None, "tensor")
    assert ff(xdyna.param_shardings(cfg, default))["kernel"].spec == P("fsdp", "tensor")
    # ... and the activation constraints: the residual stream's channels now over fsdp, batch over data
    with activation_sharding(over, rules_with(over_cfg.rules)):
        from xdyna_jax.models.blocks import pin

        lowered = jax.jit(lambda x: pin(x) * 2).lower(jnp.ones((2, 1, 4, 4, 64)))
    assert '[{"data"}, {}, {}, {}, {"fsdp"}]' in " ".join(constraints(lowered))


@needs8
def test_train_step_is_lowered_with_the_configured_activation_rules():
    """``step.lower_step`` (what ``compile_step`` compiles) traces the step inside ``activation_sharding``,
    and the train state's shardings follow ``mesh.rules``."""
    import dataclasses

    from xdyna_jax.models import xdyna
    from xdyna_jax.training import config as train_config, state as st, step as sp

    run = train_config.load(CONFIGS / "train_tiny.yaml", [
        *MICRO_TRAIN, "mesh.data=2", "mesh.fsdp=4", "train.batch_size=8", "data.encoded=[vae_moments,clip_hidden]",
        "mesh.rules={embed: null}"])
    mesh = make_mesh(run.mesh)
    shapes = xdyna.param_shapes(run.models)
    state_sh = st.state_shardings(run, mesh, shapes)
    q = state_sh.trainable["unet"]["down_blocks_0"]["attentions_0"]["transformer_blocks_0"]["attn1"]["to_q_ff"]
    assert q["kernel"].spec == P(None, "tensor")  # embed -> null: no fsdp on the model width
    state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                         st.abstract_state(run, shapes), state_sh)
    m, t = run.models, run.train
    tokens = (m.image_encoder.image_size // m.image_encoder.patch_size) ** 2 + 1
    down = m.vae.downscale
    batch = {"vae_moments": (8, 1 + t.frames, t.height // down, t.width // down, 2 * m.unet.in_channels),
             "clip_hidden": (8, tokens, m.image_encoder.hidden_size), "pose": (8, t.frames, t.height, t.width, 3)}
    batch = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=batch_sharding(mesh, len(s))) for k, s in batch.items()}
    found = constraints(sp.lower_step(run, st.models_for_training(run), mesh, state, batch))
    assert found and all('{"data", "fsdp"}, {}, {}, {}, {}]' in c for c in found), found[:3]
    run_off = dataclasses.replace(run, mesh=dataclasses.replace(run.mesh, rules={"batch": None}))
    mesh = make_mesh(run_off.mesh)
    off = rules_with(run_off.mesh.rules)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sharding(mesh, v.ndim, off))
             for k, v in batch.items()}
    found = constraints(sp.lower_step(run_off, st.models_for_training(run_off), mesh, state, batch))
    assert found and all('[{}, {}, {}, {}, {}]' in c for c in found), found[:3]
