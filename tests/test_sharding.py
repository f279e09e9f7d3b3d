"""FSDP sharding on 8 fake CPU devices (mesh data=2 x fsdp=4) gives the unsharded numbers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from xdyna_jax.models import UNet3D, UNet3DConfig, logical_axes, param_shapes
from xdyna_jax.sharding import (MeshConfig, batch_sharding, logical_to_mesh_spec, make_mesh,
                                param_shardings, replicated, shard)

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


@needs8
def test_fsdp_forward_matches_unsharded_and_kernels_are_split():
    # two resolution levels keep the 8-device compile short; every layer kind is still present
    cfg = UNet3DConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    model = UNet3D(cfg)
    # random non-zero everywhere (numpy: no init program to compile), so zero-initialised layers
    # cannot hide a sharding bug
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(model))

    b, f = 8, 3
    x = jax.random.normal(jax.random.key(2), (b, f, 8, 8, 4))
    ctx = jax.random.normal(jax.random.key(3), (b, 77 + cfg.num_ip_tokens, cfg.cross_attention_dim))
    t = jnp.full((b,), 321.0)
    ref = jax.jit(model.apply)({"params": params}, x, t, ctx)

    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    p_sh = param_shardings(logical_axes(model), param_shapes(model), mesh)
    sharded = shard(params, p_sh)
    fwd = jax.jit(model.apply, in_shardings=({"params": p_sh}, batch_sharding(mesh, 5), batch_sharding(mesh, 1),
                                             batch_sharding(mesh, 3)),
                  out_shardings=batch_sharding(mesh, 5))
    out = fwd({"params": sharded}, shard(x, batch_sharding(mesh, 5)), t, ctx)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)

    # the large kernels really are split four ways over fsdp
    big = sharded["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
    big = sharded["up_blocks_1"]["attentions_0"]["transformer_blocks_0"]["ff"]["net_0"]["proj"]["kernel"]
    assert big.shape == (32, 256)
    assert big.addressable_shards[0].data.shape == (8, 256)
    conv = sharded["down_blocks_1"]["resnets_0"]["conv1"]["kernel"]
    assert conv.addressable_shards[0].data.size * 4 == conv.size
    n_split = sum(1 for leaf in jax.tree.leaves(sharded)
                  if leaf.size >= 4096 and leaf.addressable_shards[0].data.size * 4 == leaf.size)
    n_big = sum(1 for leaf in jax.tree.leaves(sharded) if leaf.size >= 4096)
    assert n_split == n_big, f"only {n_split} of {n_big} large params are split over fsdp"


@needs8
def test_rules_replicate_non_divisible_dims_and_reject_unknown_names():
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    # a 3-channel condition conv cannot split its 3 input channels 4 ways: replicate that dim
    assert logical_to_mesh_spec(P("conv_h", "conv_w", "embed_in", "embed_out"), (3, 3, 3, 16), mesh) == \
        P(None, None, None, "tensor")
    assert logical_to_mesh_spec(P("embed_in", "embed_out"), (64, 8), mesh) == P("fsdp", "tensor")
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
    """Each model's logical names are known to RULES, and its big kernels are split over fsdp."""
    from xdyna_jax.models import (AutoencoderKL, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel,
                                  ControlNet, ControlNetConfig, Resampler, ResamplerConfig, VAEConfig)

    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    for model in (ControlNet(ControlNetConfig.sd15()), Resampler(ResamplerConfig.sd15()),
                  AutoencoderKL(VAEConfig.sd15()), CLIPVisionModel(CLIPVisionConfig.vit_h14()),
                  CLIPTextModel(CLIPTextConfig.sd15())):
        shapes = param_shapes(model)
        shardings = param_shardings(logical_axes(model), shapes, mesh)
        for s, sh in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)):
            if np.prod(s.shape) >= 2**20:
                assert "fsdp" in str(sh.spec), (type(model).__name__, s.shape, sh.spec)
