"""Sharding on 8 fake CPU devices: FSDP (data=2 x fsdp=4) and tensor parallelism (fsdp=4 x tensor=2)
give the unsharded numbers, and every kernel is split the intended way."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from official_weights import official_weights
from xdyna_jax.models import UNet3D, UNet3DConfig, logical_axes, param_shapes
from xdyna_jax.porting import official_entries, unet_params_from_torch
from xdyna_jax.sharding import (MeshConfig, batch_sharding, logical_to_mesh_spec, make_mesh,
                                param_shardings, replicated, shard)

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


def sharded_forward(model, params, inputs, mesh):
    p_sh = param_shardings(logical_axes(model), param_shapes(model), mesh)
    sharded = shard(params, p_sh)
    x, t, ctx = inputs
    fwd = jax.jit(model.apply, in_shardings=({"params": p_sh}, batch_sharding(mesh, 5), batch_sharding(mesh, 1),
                                             batch_sharding(mesh, 3)),
                  out_shardings=batch_sharding(mesh, 5))
    return sharded, fwd({"params": sharded}, shard(x, batch_sharding(mesh, 5)), t, ctx)


@needs8
def test_fsdp_forward_matches_unsharded_and_kernels_are_split(small):
    model, _, params, inputs, ref = small
    sharded, out = sharded_forward(model, params, inputs, make_mesh(MeshConfig(data=2, fsdp=4)))
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
    _, out = sharded_forward(model, params, inputs, make_mesh(MeshConfig(data=1, fsdp=4, tensor=2)))
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
