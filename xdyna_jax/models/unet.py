"""The X-Dyna denoiser: SD1.5 UNet inflated to video, with the Dynamics-Adapter, IP-Adapter
cross-attention, AnimateDiff motion modules and ControlNet residual injection.

``UNet3D(cfg).apply({"params": p}, sample, timestep, encoder_hidden_states, down_residuals, mid_residual)``
  sample                 (B, F, H, W, C_in), frame 0 = the clean reference latent
  timestep               scalar or (B,), the same for every frame (the reference included)
  encoder_hidden_states  (B, T, D): text tokens followed by ``num_ip_tokens`` image tokens
  down_residuals         12 ControlNet residuals shaped like the skips (B, F, h, w, C), the reference
                         frame included (``models.xdyna.controlnet_residuals`` gives it its zero residual)
  mid_residual           likewise for the mid block
returns (B, F, H, W, C_out).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from .blocks import BlockSpec, DownBlock, MidBlock3D, UpBlock, pin
from .configs import UNet3DConfig
from .layers import Conv, GroupNorm, TimestepEmbedding, dtype_of, timestep_embedding


def _block_specs(cfg: UNet3DConfig):
    """Resolve per-block settings exactly as the official constructor does."""
    common = dict(groups=cfg.norm_num_groups, eps=cfg.norm_eps, inflated_gn=cfg.use_inflated_groupnorm,
                  time_scale_shift=cfg.resnet_time_scale_shift, attn1_mode=cfg.unet_use_cross_frame_attention,
                  num_ip_tokens=cfg.num_ip_tokens if cfg.unet_use_ipadapter else 0,
                  linear_projection=cfg.use_linear_projection, motion=cfg.motion_module_kwargs,
                  backend=cfg.attention_backend, remat=cfg.remat, remat_tie=cfg.remat_tie,
                  query_chunk=cfg.attention_query_chunk)
    n = len(cfg.block_out_channels)
    down = []
    for i, t in enumerate(cfg.down_block_types):
        if t not in ("CrossAttnDownBlock3D", "DownBlock3D"):
            raise ValueError(f"unknown down block type {t!r}")
        mm = cfg.use_motion_module and (2 ** i in cfg.motion_module_resolutions) and not cfg.motion_module_decoder_only
        down.append(BlockSpec(cfg.block_out_channels[i], cfg.layers_per_block, cfg.attention_head_dim[i],
                              t == "CrossAttnDownBlock3D", mm, i < n - 1, **common))
    mid = BlockSpec(cfg.block_out_channels[-1], 1, cfg.attention_head_dim[-1], True,
                    cfg.use_motion_module and cfg.motion_module_mid_block, False, **common)
    up = []
    rev_ch, rev_heads = cfg.block_out_channels[::-1], cfg.attention_head_dim[::-1]
    for i, t in enumerate(cfg.up_block_types):
        if t not in ("CrossAttnUpBlock3D", "UpBlock3D"):
            raise ValueError(f"unknown up block type {t!r}")
        # the official code hard-codes 2 ** (3 - i) for the up path's resolution
        mm = cfg.use_motion_module and (2 ** (3 - i) in cfg.motion_module_resolutions)
        up.append(BlockSpec(rev_ch[i], cfg.layers_per_block + 1, rev_heads[i],
                            t == "CrossAttnUpBlock3D", mm, i < n - 1, **common))
    return down, mid, up


def add_residual(x, r):
    """Add a ControlNet residual of exactly the skip's shape (the reference frame's is explicit)."""
    if r.shape != x.shape:
        raise ValueError(f"ControlNet residual of shape {r.shape} does not fit the UNet skip {x.shape}")
    return x + r.astype(x.dtype)


class UNet3D(nn.Module):
    cfg: UNet3DConfig

    @nn.compact
    def __call__(self, sample, timestep, encoder_hidden_states,
                 down_residuals: Sequence | None = None, mid_residual=None):
        cfg = self.cfg
        dtype, pdtype = dtype_of(cfg.dtype), dtype_of(cfg.param_dtype)
        kw = dict(dtype=dtype, param_dtype=pdtype)
        if sample.ndim != 5:
            raise ValueError(f"sample must be (B, F, H, W, C), got shape {sample.shape}")
        b, f, height, width, _ = sample.shape
        down_specs, mid_spec, up_specs = _block_specs(cfg)

        t = jnp.broadcast_to(jnp.asarray(timestep, jnp.float32).reshape(-1), (b,))
        emb = timestep_embedding(t, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        emb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **kw)(emb.astype(dtype))
        context = encoder_hidden_states.astype(dtype)

        h = pin(Conv(cfg.block_out_channels[0], name="conv_in", **kw)(sample.astype(dtype)))
        skips = [h]
        for i, spec in enumerate(down_specs):
            h, s = DownBlock(spec, name=f"down_blocks_{i}", **kw)(h, emb, context)
            skips += s
        if down_residuals is not None:
            if len(down_residuals) != len(skips):
                raise ValueError(f"expected {len(skips)} down residuals, got {len(down_residuals)}")
            skips = [add_residual(x, r) for x, r in zip(skips, down_residuals)]
        h = MidBlock3D(mid_spec, name="mid_block", **kw)(h, emb, context)
        if mid_residual is not None:
            h = pin(add_residual(h, mid_residual))

        up_factor = 2 ** sum(s.add_sampler for s in up_specs)
        forward_size = height % up_factor != 0 or width % up_factor != 0
        for i, spec in enumerate(up_specs):
            res, skips = skips[-spec.num_layers:], skips[:-spec.num_layers]
            size = tuple(skips[-1].shape[2:4]) if (spec.add_sampler and forward_size) else None
            h = UpBlock(spec, name=f"up_blocks_{i}", **kw)(h, res, emb, context, size)

        bd = 2 if cfg.use_inflated_groupnorm else 1
        h = GroupNorm(cfg.norm_num_groups, cfg.norm_eps, batch_dims=bd, name="conv_norm_out", **kw)(h)
        return Conv(cfg.out_channels, name="conv_out", **kw)(nn.silu(h))

    def example_inputs(self, batch: int = 1, frames: int = 2, size: int = 8):
        """Small inputs of the right structure (for init / eval_shape)."""
        cfg = self.cfg
        tokens = 77 + (cfg.num_ip_tokens if cfg.unet_use_ipadapter else 0)
        return (jnp.zeros((batch, frames, size, size, cfg.in_channels), jnp.float32),
                jnp.zeros((batch,), jnp.float32),
                jnp.zeros((batch, tokens, cfg.cross_attention_dim), jnp.float32))
