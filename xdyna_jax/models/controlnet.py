"""ControlNet (diffusers ``ControlNetModel``, 2D, per frame). Pose and S-Face are two configs of it.

``ControlNet(cfg).apply({"params": p}, sample, timestep, encoder_hidden_states, controlnet_cond,
conditioning_scale=1.0) -> (down_residuals, mid_residual)``, channels-last:
  sample (N, h, w, 4) or a video (B, F, h, w, 4); controlnet_cond (N or B·F..., 8h, 8w, cc) in [0, 1];
  encoder_hidden_states (N, T, D), or (B, T, D) for a video (shared by its frames).
Video inputs give (B, F, ...) residuals that ``UNet3D`` takes directly (it prepends the zero
reference frame).
"""
from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from .blocks import BlockSpec, DownBlock, MidBlock3D, pin
from .configs import ControlNetConfig
from .layers import Conv, TimestepEmbedding, dtype_of, timestep_embedding


class ConditioningEmbedding(nn.Module):
    """``controlnet_cond_embedding``: full-resolution condition down to latent size (3 stride-2 convs)."""

    out_channels: int
    channels: tuple[int, ...]
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, c):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = nn.silu(Conv(self.channels[0], name="conv_in", **kw)(c))
        for i in range(len(self.channels) - 1):
            h = nn.silu(Conv(self.channels[i], name=f"blocks_{2 * i}", **kw)(h))
            h = nn.silu(Conv(self.channels[i + 1], stride=2, name=f"blocks_{2 * i + 1}", **kw)(h))
        return Conv(self.out_channels, zero_init=True, name="conv_out", **kw)(h)


class ControlNet(nn.Module):
    cfg: ControlNetConfig

    @nn.compact
    def __call__(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale=1.0):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        video = sample.ndim == 5
        if video:
            b, f = sample.shape[:2]
            sample = sample.reshape((b * f,) + sample.shape[2:])
            controlnet_cond = controlnet_cond.reshape((b * f,) + controlnet_cond.shape[-3:])
            encoder_hidden_states = jnp.repeat(encoder_hidden_states, f, axis=0)
            timestep = jnp.repeat(jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (b,)), f)
        elif sample.ndim != 4:
            raise ValueError(f"ControlNet sample must be (N, h, w, C) or (B, F, h, w, C), got {sample.shape}")
        n = sample.shape[0]
        if controlnet_cond.shape[-1] != cfg.conditioning_channels:
            raise ValueError(f"controlnet_cond has {controlnet_cond.shape[-1]} channels, "
                             f"the config says conditioning_channels={cfg.conditioning_channels}")
        t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (n,))
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = TimestepEmbedding(cfg.block_out_channels[0] * 4, name="time_embedding", **kw)(emb.astype(dtype))
        context = encoder_hidden_states.astype(dtype)

        # one frame per sample: (N, 1, h, w, C) lets the 3D blocks run as the 2D ones
        h = Conv(cfg.block_out_channels[0], name="conv_in", **kw)(sample.astype(dtype)[:, None])
        h = h + ConditioningEmbedding(cfg.block_out_channels[0], cfg.conditioning_embedding_out_channels,
                                      name="controlnet_cond_embedding", **kw)(controlnet_cond.astype(dtype)[:, None])
        h = pin(h)  # per-frame samples (B·F) split over the data-parallel axes, as the UNet's batch
        common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, inflated_gn=True,
                      time_scale_shift=cfg.resnet_time_scale_shift,
                      linear_projection=cfg.use_linear_projection, backend=cfg.attention_backend, remat=cfg.remat,
                      remat_tie=cfg.remat_tie,
                      query_chunk=cfg.attention_query_chunk)
        skips = [h]
        nblocks = len(cfg.block_out_channels)
        for i, btype in enumerate(cfg.down_block_types):
            if btype not in ("CrossAttnDownBlock2D", "DownBlock2D"):
                raise ValueError(f"unknown ControlNet down block type {btype!r}")
            spec = BlockSpec(cfg.block_out_channels[i], cfg.layers_per_block, cfg.attention_head_dim[i],
                             btype == "CrossAttnDownBlock2D", False, i < nblocks - 1, **common)
            h, s = DownBlock(spec, name=f"down_blocks_{i}", **kw)(h, emb, context)
            skips += s
        mid_spec = BlockSpec(cfg.block_out_channels[-1], 1, cfg.attention_head_dim[-1], True, False, False, **common)
        h = MidBlock3D(mid_spec, name="mid_block", **kw)(h, emb, context)

        zero_conv = lambda c, name: Conv(c, kernel_size=1, padding=0, zero_init=True, name=name, **kw)
        down = [zero_conv(x.shape[-1], f"controlnet_down_blocks_{k}")(x)[:, 0] * conditioning_scale
                for k, x in enumerate(skips)]
        mid = zero_conv(h.shape[-1], "controlnet_mid_block")(h)[:, 0] * conditioning_scale
        if video:
            down = [d.reshape((b, f) + d.shape[1:]) for d in down]
            mid = mid.reshape((b, f) + mid.shape[1:])
        return down, mid

    def example_inputs(self, batch: int = 1, size: int = 8):
        cfg = self.cfg
        return (jnp.zeros((batch, size, size, cfg.in_channels), jnp.float32),
                jnp.zeros((batch,), jnp.float32),
                jnp.zeros((batch, 77, cfg.cross_attention_dim), jnp.float32),
                jnp.zeros((batch, size * 8, size * 8, cfg.conditioning_channels), jnp.float32))
