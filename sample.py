"""Sample X-Dyna videos. For now: a smoke run of the tiny denoiser (one jitted UNet3D forward).

The full sampling pipeline (config file, ``key=value`` overrides, DDIM, context windows) arrives
with the sampling issue; this entry point will then parse ``--config`` and overrides.
"""
from __future__ import annotations

import os
import sys
import time


def smoke() -> int:
    try:
        import jax
        from xdyna_jax import models
        from xdyna_jax.models import UNet3D, UNet3DConfig
    except ImportError as e:
        print(f"sample.py: the models are not importable yet ({e})", file=sys.stderr)
        return 1

    # compiled programs persist between runs (the tiny init alone compiles for a minute on 2 CPU cores)
    jax.config.update("jax_compilation_cache_dir",
                      os.environ.get("XDYNA_JAX_CACHE", os.path.expanduser("~/.cache/xdyna_jax/jit")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)

    model = UNet3D(UNet3DConfig.tiny())
    rng_params, rng_inputs = jax.random.split(jax.random.key(0))
    if hasattr(models, "init_params"):
        params = models.init_params(model, rng_params)
    else:
        params = model.init(rng_params, *model.example_inputs())["params"]

    # Random inputs with the structure (shapes, dtypes) of the model's example inputs.
    examples = model.example_inputs()
    keys = jax.random.split(rng_inputs, len(examples))
    inputs = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, examples)]
    inputs[1] = jax.random.randint(keys[1], examples[1].shape, 0, 1000).astype(examples[1].dtype)

    forward = jax.jit(lambda p, *xs: model.apply({"params": p}, *xs))
    t0 = time.perf_counter()
    out = jax.block_until_ready(forward(params, *inputs))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"tiny UNet3D on {jax.devices()[0].platform}: {n_params:,} params, "
          f"input {tuple(inputs[0].shape)} -> output {tuple(out.shape)} {out.dtype} "
          f"(compile + run {time.perf_counter() - t0:.1f} s)")
    print("The full sampling pipeline (DDIM, context windows, video out) arrives with the sampling issue.")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv:
        print(f"sample.py: arguments are not supported yet (got {argv}); "
              "--config and key=value overrides arrive with the sampling issue", file=sys.stderr)
        return 2
    return smoke()


if __name__ == "__main__":
    sys.exit(main())
