"""One process of the two-process ``jax.distributed`` test (``tests/test_multihost.py``).

Each process owns 4 CPU devices; together they form the data=2 x fsdp=4 mesh. The process feeds only
its half of the batch and checks its addressable output shards against an unsharded forward of the
full batch, which the test computed once (``reference``) and passes as a .npy file: each process
compiling that forward again cost as much as the sharded one.
"""
import os
import sys


def inputs():
    """The model, params and global batch: the same in both processes and in the test (seed 0)."""
    import jax
    import numpy as np

    from xdyna_jax.models import UNet3D, UNet3DConfig, param_shapes

    cfg = UNet3DConfig.tiny(block_out_channels=(32, 64), attention_head_dim=(2, 2),
                            down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                            up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))
    model = UNet3D(cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32), param_shapes(model))
    b = 8
    x = rng.standard_normal((b, 3, 8, 8, 4)).astype(np.float32)
    ctx = rng.standard_normal((b, 77 + cfg.num_ip_tokens, cfg.cross_attention_dim)).astype(np.float32)
    t = np.full((b,), 321.0, np.float32)
    return model, params, x, t, ctx


def reference(path):
    """The unsharded forward of the full batch on one device, saved to ``path`` (run in the test's process)."""
    import jax
    import numpy as np

    model, params, x, t, ctx = inputs()
    with jax.default_device(jax.devices()[0]):
        np.save(path, np.asarray(jax.jit(model.apply)({"params": params}, x, t, ctx)))


def main(process_id, port, ref_path):
    # four devices, the session's other XLA flags kept (helpers.cpu_env(None) leaves the count out)
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count=4 {os.environ.get('XLA_FLAGS', '')}".strip()
    os.environ["JAX_PLATFORMS"] = "cpu"

    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.config.update("jax_default_matmul_precision", "highest")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

    import numpy as np

    from xdyna_jax.models import logical_axes, param_shapes
    from xdyna_jax.sharding import (MeshConfig, batch_sharding, host_local_to_global, make_mesh, param_shardings,
                                    shard)

    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    model, params, x, t, ctx = inputs()
    b = x.shape[0]
    mesh = make_mesh(MeshConfig(data=2, fsdp=4))
    p_sh = param_shardings(logical_axes(model), param_shapes(model), mesh)
    half = slice(process_id * b // 2, (process_id + 1) * b // 2)
    batch = host_local_to_global({"x": x[half], "t": t[half], "ctx": ctx[half]}, mesh)
    fwd = jax.jit(model.apply, in_shardings=({"params": p_sh}, batch_sharding(mesh, 5), batch_sharding(mesh, 1),
                                             batch_sharding(mesh, 3)), out_shardings=batch_sharding(mesh, 5))
    out = fwd({"params": shard(params, p_sh)}, batch["x"], batch["t"], batch["ctx"])

    ref = np.load(ref_path)
    err = max(float(np.max(np.abs(np.asarray(s.data) - ref[s.index]))) for s in out.addressable_shards)
    print(f"process {process_id}: {len(out.addressable_shards)} shards, max abs error {err:.2e}", flush=True)
    return 0 if err <= 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
