"""The frozen SD1.5 VAE (diffusers ``AutoencoderKL``), channels-last, per image.

``AutoencoderKL(cfg)`` works on images ``(N, H, W, C)`` in [-1, 1] and latents ``(N, H/8, W/8, 4)``;
the ``*_video`` methods take ``(B, F, ...)`` and treat every frame as an independent image (the
VAE has no temporal layers). Call them with ``apply(..., method=...)``:

  mean, logvar = vae.apply(v, x, method="encode")                  # posterior, logvar clipped to [-30, 20]
  z = latent_dist_sample(mean, logvar, rng)                        # mean + std * eps (UNSCALED)
  ref = vae.apply(v, x, rng, method="encode_video_to_latents")     # sample * scaling_factor (X-Dyna's ref latent)
  img = vae.apply(v, latents, method="decode_video_from_latents")  # decode(latents / scaling_factor)

X-Dyna samples the posterior for the reference latent (not its mean) and decodes one frame at a time
(spec §1.3 step 3, §1.9). ``decode_video`` decodes ``cfg.decode_chunk`` frames per step of a
sequential loop (``nn.scan``, Flax's lifted ``jax.lax.map``), so a long video never needs decoder
activations for all frames at once. Names mirror the diffusers state dict; every GroupNorm has eps
1e-6 as in diffusers' VAE; ``Downsample2D(padding=0)`` pads bottom/right by one before its
stride-2 conv; the mid-block attention is single-head over H*W tokens with its own GroupNorm.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from .attention import attention
from .configs import AttentionBackend, DType
from .layers import Conv, Dense, GroupNorm, dtype_of

EPS = 1e-6  # every GroupNorm of diffusers' Encoder / Decoder / UNetMidBlock2D (resnet_eps=1e-6)
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0

# diffusers AutoencoderKL options that exist here only at one value: accepted there, refused otherwise
_INERT = {"act_fn": ("silu", "swish"), "use_quant_conv": (True,), "use_post_quant_conv": (True,),
          "mid_block_add_attention": (True,), "shift_factor": (None,), "latents_mean": (None,),
          "latents_std": (None,)}
# bookkeeping, or no effect on our numerics (force_upcast: a torch fp16 switch; our norms and softmax are float32)
_DROPPED = {"_class_name", "_diffusers_version", "_name_or_path", "_use_default_values", "sample_size",
            "force_upcast"}
_BLOCK_TYPES = {"down_block_types": "DownEncoderBlock2D", "up_block_types": "UpDecoderBlock2D"}


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    decode_chunk: int = 1  # frames per decoder call in decode_video (X-Dyna decodes 1 at a time)
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"
    attention_query_chunk: int = 0  # > 0: mid-block attention over query chunks (bounded memory)

    def __post_init__(self):
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ValueError(f"block_out_channels {c} is not divisible by norm_num_groups {self.norm_num_groups}")
        if self.decode_chunk < 1:
            raise ValueError(f"decode_chunk must be >= 1, got {self.decode_chunk}")

    @property
    def downscale(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    @classmethod
    def sd15(cls, **kw) -> "VAEConfig":
        """The SD1.5 ``vae/`` (X-Dyna's frozen VAE)."""
        return dataclasses.replace(cls(), **kw)

    @classmethod
    def tiny(cls, **kw) -> "VAEConfig":
        """Two levels (one down/up sample), one resnet per level, 2-channel GroupNorm groups; for tests."""
        return dataclasses.replace(cls(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=16), **kw)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any], **overrides) -> "VAEConfig":
        """From a diffusers ``vae/config.json`` dict (or ``AutoencoderKL.config``); unsupported options raise."""
        kw = {}
        for k, v in {**dict(config), **overrides}.items():
            if k in _DROPPED:
                continue
            if k in _INERT:
                if v not in _INERT[k]:
                    raise ValueError(f"VAE option {k}={v!r} is not supported (supported: {_INERT[k][0]!r})")
                continue
            kw[k] = tuple(v) if isinstance(v, list) else v
        n = len(kw.get("block_out_channels", cls.block_out_channels))
        for k, want in _BLOCK_TYPES.items():
            types = tuple(kw.pop(k, (want,) * n))
            if types != (want,) * n:
                raise ValueError(f"VAE {k}={list(types)} is not supported (only {n} x {want!r})")
        unknown = sorted(set(kw) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown VAE config key(s) {unknown}")
        return cls(**kw)


def latent_dist_sample(mean, logvar, rng=None, noise=None):
    """Sample of the diagonal Gaussian posterior, ``mean + exp(logvar / 2) * eps`` (UNSCALED latent).

    ``eps`` is ``noise`` when given (same shape as ``mean``), else ``jax.random.normal(rng)``.
    Multiply by ``cfg.scaling_factor`` to get the latent the UNet sees.
    """
    if (rng is None) == (noise is None):
        raise ValueError("latent_dist_sample: give exactly one of rng or noise")
    if noise is None:
        noise = jax.random.normal(rng, mean.shape, jnp.float32)
    std = jnp.exp(0.5 * jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX))
    return mean + std * noise.astype(mean.dtype)


class ResnetBlock2D(nn.Module):
    """``ResnetBlock2D`` without time embedding: GN, SiLU, conv, GN, SiLU, conv, (1x1 shortcut) + input."""

    out_channels: int
    groups: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(GroupNorm(self.groups, EPS, name="norm1", **kw)(x))
        # a Megatron pair over ``conv_mid``, as the UNet's resnets (see sharding.RULES)
        h = Conv(self.out_channels, axes=("conv_in", "conv_mid"), name="conv1", **kw)(h)
        h = nn.silu(GroupNorm(self.groups, EPS, name="norm2", **kw)(h))
        h = Conv(self.out_channels, axes=("conv_mid", "conv_out"), name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = Conv(self.out_channels, kernel_size=1, padding=0, name="conv_shortcut", **kw)(x)
        return x.astype(h.dtype) + h


class AttentionBlock(nn.Module):
    """The VAE mid-block ``Attention``: GN, single-head attention over H*W tokens (biased q/k/v/out), + input."""

    groups: int
    backend: str = "xla"
    query_chunk: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        n, hh, ww, c = x.shape
        h = GroupNorm(self.groups, EPS, name="group_norm", **kw)(x).reshape(n, hh * ww, c)
        # one head: splitting it over ``tensor`` would split each dot product, so all four
        # projections keep the default ("embed", "embed") names and are not tensor-split
        q, k, v = (Dense(c, name=name, **kw)(h) for name in ("to_q", "to_k", "to_v"))
        h = attention(q, k, v, heads=1, backend=self.backend, query_chunk=self.query_chunk)
        return Dense(c, name="to_out_0", **kw)(h).reshape(x.shape) + x.astype(self.dtype)


class MidBlock2D(nn.Module):
    """``UNetMidBlock2D``: resnet, attention, resnet (all at the same width)."""

    cfg: VAEConfig

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        c, g = x.shape[-1], cfg.norm_num_groups
        x = ResnetBlock2D(c, g, name="resnets_0", **kw)(x)
        x = AttentionBlock(g, cfg.attention_backend, cfg.attention_query_chunk, name="attentions_0", **kw)(x)
        return ResnetBlock2D(c, g, name="resnets_1", **kw)(x)


class Downsample2D(nn.Module):
    """``Downsample2D(padding=0)``: zero pad bottom/right by one, then a 3x3 stride-2 conv ``conv``."""

    channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return Conv(self.channels, stride=2, padding=0, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample2D(nn.Module):
    """``Upsample2D``: nearest 2x, then a 3x3 conv ``conv``."""

    channels: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return Conv(self.channels, padding=1, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Block(nn.Module):
    """``DownEncoderBlock2D`` / ``UpDecoderBlock2D``: ``num_layers`` resnets, then an optional sampler."""

    cfg: VAEConfig
    out_channels: int
    num_layers: int
    sampler: str | None  # "down", "up" or None

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=dtype_of(self.cfg.dtype), param_dtype=dtype_of(self.cfg.param_dtype))
        for j in range(self.num_layers):
            x = ResnetBlock2D(self.out_channels, self.cfg.norm_num_groups, name=f"resnets_{j}", **kw)(x)
        if self.sampler is not None:
            down = self.sampler == "down"
            sampler = Downsample2D if down else Upsample2D
            x = sampler(self.out_channels, name="downsamplers_0" if down else "upsamplers_0", **kw)(x)
        return x


def _out(cfg: VAEConfig, x, features: int):
    """conv_norm_out -> SiLU -> conv_out (the tail of encoder and decoder; call inside a compact module)."""
    kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
    x = nn.silu(GroupNorm(cfg.norm_num_groups, EPS, name="conv_norm_out", **kw)(x))
    return Conv(features, name="conv_out", **kw)(x)


class Encoder(nn.Module):
    """Images (N, H, W, in) -> posterior moments (N, H/f, W/f, 2 * latent) before ``quant_conv``."""

    cfg: VAEConfig

    @nn.compact
    def __call__(self, x):
        cfg, n = self.cfg, len(self.cfg.block_out_channels)
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        x = Conv(cfg.block_out_channels[0], name="conv_in", **kw)(x)
        for i, c in enumerate(cfg.block_out_channels):
            x = Block(cfg, c, cfg.layers_per_block, "down" if i < n - 1 else None, name=f"down_blocks_{i}")(x)
        x = MidBlock2D(cfg, name="mid_block")(x)
        return _out(cfg, x, 2 * cfg.latent_channels)


class Decoder(nn.Module):
    """Latents (N, h, w, latent) after ``post_quant_conv`` -> images (N, h*f, w*f, out)."""

    cfg: VAEConfig

    @nn.compact
    def __call__(self, z):
        cfg, n = self.cfg, len(self.cfg.block_out_channels)
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        x = Conv(cfg.block_out_channels[-1], name="conv_in", **kw)(z)
        x = MidBlock2D(cfg, name="mid_block")(x)
        for i, c in enumerate(reversed(cfg.block_out_channels)):
            x = Block(cfg, c, cfg.layers_per_block + 1, "up" if i < n - 1 else None, name=f"up_blocks_{i}")(x)
        return _out(cfg, x, cfg.out_channels)


class AutoencoderKL(nn.Module):
    """diffusers ``AutoencoderKL`` (SD1.5 VAE). ``__call__`` = decode(posterior mean), touching every param."""

    cfg: VAEConfig

    def setup(self):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = Conv(2 * cfg.latent_channels, kernel_size=1, padding=0, **kw)
        self.post_quant_conv = Conv(cfg.latent_channels, kernel_size=1, padding=0, **kw)

    def encode(self, x):
        """Images (N, H, W, C) in [-1, 1] -> posterior (mean, logvar), float32, logvar clipped to [-30, 20]."""
        moments = self.quant_conv(self.encoder(x.astype(dtype_of(self.cfg.dtype)))).astype(jnp.float32)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def decode(self, z):
        """UNSCALED latents (N, h, w, latent) -> images (N, h*f, w*f, C), float32 in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z.astype(dtype_of(self.cfg.dtype)))).astype(jnp.float32)

    def __call__(self, x):
        return self.decode(self.encode(x)[0])

    # --- video helpers: (B, F, ...) with every frame an independent image -------------------------

    def encode_video(self, x):
        """(B, F, H, W, C) -> posterior (mean, logvar), each (B, F, h, w, latent); all frames at once."""
        mean, logvar = self.encode(x.reshape((-1,) + x.shape[2:]))
        return mean.reshape(x.shape[:2] + mean.shape[1:]), logvar.reshape(x.shape[:2] + logvar.shape[1:])

    def decode_video(self, z):
        """UNSCALED latents (B, F, h, w, latent) -> images (B, F, H, W, C), ``cfg.decode_chunk`` frames at a time.

        A sequential loop over chunks (``nn.scan`` with the params broadcast: Flax's lifted
        ``jax.lax.map``); the last chunk is padded with zero latents, whose images are dropped.
        """
        b, f = z.shape[:2]
        frames = z.reshape((b * f,) + z.shape[2:])
        k = min(self.cfg.decode_chunk, b * f)
        n = -(-(b * f) // k)
        frames = jnp.pad(frames, ((0, n * k - b * f),) + ((0, 0),) * 3).reshape((n, k) + frames.shape[1:])

        def body(mdl, carry, chunk):
            return carry, mdl.decode(chunk)

        scan = nn.scan(body, variable_broadcast="params", split_rngs={"params": False}, length=n)
        _, out = scan(self, None, frames)
        out = out.reshape((n * k,) + out.shape[2:])[: b * f]
        return out.reshape((b, f) + out.shape[1:])

    def encode_video_to_latents(self, x, rng):
        """X-Dyna's reference latent: posterior SAMPLE * scaling_factor, (B, F, H, W, C) -> (B, F, h, w, latent)."""
        mean, logvar = self.encode_video(x)
        return latent_dist_sample(mean, logvar, rng) * self.cfg.scaling_factor

    def decode_video_from_latents(self, latents):
        """X-Dyna's ``decode_latents`` before post-processing: decode_video(latents / scaling_factor)."""
        return self.decode_video(latents / self.cfg.scaling_factor)

    def example_inputs(self, batch: int = 1):
        s = 2 * self.cfg.downscale
        return (jnp.zeros((batch, s, s, self.cfg.in_channels), jnp.float32),)
