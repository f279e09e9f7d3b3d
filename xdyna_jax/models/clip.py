"""The frozen CLIP encoders: IP-Adapter's image encoder and SD1.5's text encoder.

``CLIPVisionModel(cfg).apply({"params": p}, pixel_values (B, H, W, 3), output_hidden_states=True)``
mirrors transformers' ``CLIPVisionModelWithProjection`` (``CLIPVisionModel`` when
``projection_dim=None``); X-Dyna's IP-Adapter feature is ``.hidden_states[-2]`` (B, 257, 1280): the
output of the second-to-last encoder layer, before any post-LN or projection.
``CLIPTextModel(cfg).apply({"params": p}, input_ids (B, L))`` mirrors ``CLIPTextModel``
(``CLIPTextModelWithProjection`` with ``projection_dim``); SD1.5 uses ``.last_hidden_state``.

``hidden_states`` are, as in transformers, the (pre-LN'ed, for vision) embeddings followed by the
output of every encoder layer, so there are ``num_hidden_layers + 1`` and the text model's last one is
the encoder output *before* ``final_layer_norm``.
Param names mirror the transformers state dicts (``vision_model/encoder/layers_0/self_attn/q_proj``,
``pre_layrnorm`` sic); embedding tables are ``<name>/embedding`` of shape (rows, width), as torch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Literal, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from .attention import attention
from .configs import AttentionBackend, DType
from .layers import Conv, Dense, LayerNorm, dtype_of

Activation = Literal["gelu", "quick_gelu"]
ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
}


# --- configs ----------------------------------------------------------------------------------

# transformers' defaults of the keys read by ``from_hf`` (a config.json may omit any of them)
_HF_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  image_size=224, patch_size=32, num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5)
_HF_TEXT = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                eos_token_id=49407)


def _from_hf(config: Any, sub: str, model_type: str, defaults: dict, model_class: str,
             with_projection: Optional[bool], default_projection: bool) -> dict:
    """Field values from a transformers config object or dict. A ``CLIPConfig`` gives its ``sub``
    config with the top-level ``projection_dim`` (as ``CLIPModel``, which has both heads)."""
    d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    proj, archs = d.get("projection_dim", 512), list(d.get("architectures") or [])
    if sub in d or d.get("model_type") == "clip":
        d = d.get(sub) or {}
        d = d.to_dict() if hasattr(d, "to_dict") else dict(d)
        archs = [model_class + "WithProjection"]
    if d.get("model_type") not in (None, model_type):
        raise ValueError(f"expected a {model_type!r} config, got model_type {d.get('model_type')!r}")
    if with_projection is None:  # as architectures say, else the default of this tower
        with_projection = model_class + "WithProjection" in archs or (model_class not in archs and default_projection)
    kw = {k: v if d.get(k) is None else d[k] for k, v in defaults.items()}
    return dict(kw, layer_norm_eps=float(kw["layer_norm_eps"]), projection_dim=int(proj) if with_projection else None)


def _check_common(cfg) -> None:
    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} is not divisible by {cfg.num_attention_heads} heads")
    if cfg.hidden_act not in ACTIVATIONS:
        raise ValueError(f"hidden_act {cfg.hidden_act!r} is not supported (supported: {sorted(ACTIVATIONS)})")


@dataclasses.dataclass(frozen=True)
class CLIPVisionConfig:
    """Vision tower; the defaults are IP-Adapter's OpenCLIP ViT-H/14 image encoder."""

    hidden_size: int = 1280
    intermediate_size: int = 5120
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: Activation = "gelu"
    layer_norm_eps: float = 1e-5
    projection_dim: Optional[int] = 1024  # None: no ``visual_projection`` (plain CLIPVisionModel)
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"

    def __post_init__(self):
        _check_common(self)

    @property
    def num_positions(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1

    @classmethod
    def vit_h14(cls, **kw) -> "CLIPVisionConfig":
        """IP-Adapter ``models/image_encoder`` (CLIPVisionModelWithProjection, OpenCLIP ViT-H/14)."""
        return dataclasses.replace(cls(), **kw)

    sd15 = vit_h14  # the image encoder of X-Dyna's SD1.5 setup (the CLI's default preset)

    @classmethod
    def tiny(cls, **kw) -> "CLIPVisionConfig":
        base = cls(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                   image_size=32, patch_size=8, projection_dim=24)
        return dataclasses.replace(base, **kw)

    @classmethod
    def from_hf(cls, config: Any, with_projection: Optional[bool] = None, **overrides) -> "CLIPVisionConfig":
        """From a transformers ``CLIPVisionConfig`` / ``CLIPConfig`` or their dict (``config.json``).

        Missing keys take transformers' defaults. The projection head exists when
        ``with_projection`` says so; by default as ``architectures`` says (``CLIPVisionModel``: none),
        else (no architectures) it exists, as in IP-Adapter's ``CLIPVisionModelWithProjection``.
        """
        kw = _from_hf(config, "vision_config", "clip_vision_model", _HF_VISION, "CLIPVisionModel",
                      with_projection, default_projection=True)
        return cls(**{**kw, **overrides})


@dataclasses.dataclass(frozen=True)
class CLIPTextConfig:
    """Text tower; the defaults are SD1.5's text encoder (OpenAI CLIP ViT-L/14 text)."""

    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: Activation = "quick_gelu"
    layer_norm_eps: float = 1e-5
    # pooling, as transformers: eos_token_id == 2 (the pre-2023 default that SD1.5's config.json
    # still holds) pools at argmax(input_ids); any other value at the first ``eos_token_id``.
    # Both pick the first EOS of a CLIPTokenizer output (EOS 49407 is the largest id).
    eos_token_id: int = 49407
    projection_dim: Optional[int] = None  # an int: ``text_projection`` (CLIPTextModelWithProjection)
    dtype: DType = "float32"
    param_dtype: DType = "float32"
    attention_backend: AttentionBackend = "xla"

    def __post_init__(self):
        _check_common(self)

    @classmethod
    def sd15(cls, **kw) -> "CLIPTextConfig":
        """SD1.5 ``text_encoder`` (CLIPTextModel)."""
        return dataclasses.replace(cls(), **kw)

    @classmethod
    def tiny(cls, **kw) -> "CLIPTextConfig":
        base = cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=12, eos_token_id=57)
        return dataclasses.replace(base, **kw)

    @classmethod
    def from_hf(cls, config: Any, with_projection: Optional[bool] = None, **overrides) -> "CLIPTextConfig":
        """From a transformers ``CLIPTextConfig`` / ``CLIPConfig`` or their dict (``config.json``).

        Missing keys take transformers' defaults. The projection head exists when
        ``with_projection`` says so; by default as ``architectures`` says, else (no architectures)
        not, as in SD1.5's ``CLIPTextModel``.
        """
        kw = _from_hf(config, "text_config", "clip_text_model", _HF_TEXT, "CLIPTextModel",
                      with_projection, default_projection=False)
        return cls(**{**kw, **overrides})


# --- outputs ----------------------------------------------------------------------------------

@flax.struct.dataclass
class CLIPVisionOutput:
    last_hidden_state: jax.Array            # (B, N, C), no post-LN
    pooler_output: jax.Array                # (B, C): post_layernorm(CLS)
    image_embeds: Optional[jax.Array] = None      # (B, P) with a projection head
    hidden_states: Optional[tuple] = None         # num_hidden_layers + 1 arrays (B, N, C)


@flax.struct.dataclass
class CLIPTextOutput:
    last_hidden_state: jax.Array            # (B, L, C), after final_layer_norm
    pooler_output: jax.Array                # (B, C): at the EOS token
    text_embeds: Optional[jax.Array] = None
    hidden_states: Optional[tuple] = None


# --- modules ----------------------------------------------------------------------------------

class Embed(nn.Module):
    """torch ``nn.Embedding``: ``embedding`` (rows, features), logical axes ("vocab", "embed")."""

    rows: int
    features: int
    param_dtype: Any = jnp.float32

    def setup(self):
        self.embedding = self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")), (self.rows, self.features), self.param_dtype)

    def __call__(self, ids):
        return jnp.take(self.embedding, ids, axis=0)


class CLIPAttention(nn.Module):
    heads: int
    causal: bool = False
    backend: str = "xla"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        dense = lambda name, axes: Dense(c, dtype=self.dtype, param_dtype=self.param_dtype, axes=axes, name=name)
        q, k, v = (dense(n, ("embed", "heads"))(x) for n in ("q_proj", "k_proj", "v_proj"))
        h = attention(q, k, v, self.heads, self.backend, causal=self.causal)
        return dense("out_proj", ("heads", "embed"))(h)


class CLIPEncoderLayer(nn.Module):
    """Pre-LN block: x + attn(LN1 x), then x + fc2(act(fc1(LN2 x)))."""

    cfg: Any
    causal: bool = False

    @nn.compact
    def __call__(self, x):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        h = LayerNorm(cfg.layer_norm_eps, name="layer_norm1", **kw)(x)
        x = x + CLIPAttention(cfg.num_attention_heads, self.causal, cfg.attention_backend, name="self_attn", **kw)(h)
        h = LayerNorm(cfg.layer_norm_eps, name="layer_norm2", **kw)(x)
        return x + _MLP(cfg, name="mlp")(h)


class _MLP(nn.Module):
    cfg: Any

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=dtype_of(self.cfg.dtype), param_dtype=dtype_of(self.cfg.param_dtype))
        h = Dense(self.cfg.intermediate_size, axes=("embed", "mlp"), name="fc1", **kw)(x)
        h = ACTIVATIONS[self.cfg.hidden_act](h.astype(jnp.float32)).astype(kw["dtype"])
        return Dense(self.cfg.hidden_size, axes=("mlp", "embed"), name="fc2", **kw)(h)


class CLIPEncoder(nn.Module):
    """``layers_0 .. layers_{n-1}``; returns (output, (input, output of each layer))."""

    cfg: Any
    causal: bool = False

    @nn.compact
    def __call__(self, x):
        states = [x]
        for i in range(self.cfg.num_hidden_layers):
            x = CLIPEncoderLayer(self.cfg, self.causal, name=f"layers_{i}")(x)
            states.append(x)
        return x, tuple(states)


class _VisionEmbeddings(nn.Module):
    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        cls_emb = self.param("class_embedding", nn.with_logical_partitioning(
            nn.initializers.normal(cfg.hidden_size ** -0.5), ("embed",)), (cfg.hidden_size,), kw["param_dtype"])
        patches = Conv(cfg.hidden_size, kernel_size=cfg.patch_size, stride=cfg.patch_size, padding=0,
                       use_bias=False, name="patch_embedding", **kw)(pixel_values.astype(kw["dtype"]))
        b = patches.shape[0]
        patches = patches.reshape((b, -1, cfg.hidden_size))
        if patches.shape[1] + 1 != cfg.num_positions:
            raise ValueError(f"pixel_values of shape {pixel_values.shape} give {patches.shape[1]} patches; "
                             f"the model expects {cfg.image_size}x{cfg.image_size} images")
        cls_tok = jnp.broadcast_to(jnp.asarray(cls_emb, kw["dtype"]), (b, 1, cfg.hidden_size))
        pos = Embed(cfg.num_positions, cfg.hidden_size, kw["param_dtype"], name="position_embedding").embedding
        return jnp.concatenate([cls_tok, patches], axis=1) + jnp.asarray(pos, kw["dtype"])[None]


class _VisionTransformer(nn.Module):
    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        h = _VisionEmbeddings(cfg, name="embeddings")(pixel_values)
        h = LayerNorm(cfg.layer_norm_eps, name="pre_layrnorm", **kw)(h)
        last, states = CLIPEncoder(cfg, name="encoder")(h)
        pooled = LayerNorm(cfg.layer_norm_eps, name="post_layernorm", **kw)(last[:, 0])
        return last, pooled, states


class CLIPVisionModel(nn.Module):
    """pixel_values (B, H, W, C), CLIP-normalised (``clip_preprocess.clip_pixel_values``)."""

    cfg: CLIPVisionConfig

    @nn.compact
    def __call__(self, pixel_values, output_hidden_states: bool = False) -> CLIPVisionOutput:
        cfg = self.cfg
        last, pooled, states = _VisionTransformer(cfg, name="vision_model")(pixel_values)
        embeds = None
        if cfg.projection_dim is not None:
            embeds = Dense(cfg.projection_dim, use_bias=False, dtype=dtype_of(cfg.dtype),
                           param_dtype=dtype_of(cfg.param_dtype), name="visual_projection")(pooled)
        return CLIPVisionOutput(last, pooled, embeds, states if output_hidden_states else None)

    def example_inputs(self, batch: int = 1):
        s = self.cfg.image_size
        return (jnp.zeros((batch, s, s, self.cfg.num_channels), jnp.float32),)


class _TextTransformer(nn.Module):
    cfg: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids):
        cfg = self.cfg
        kw = dict(dtype=dtype_of(cfg.dtype), param_dtype=dtype_of(cfg.param_dtype))
        length = input_ids.shape[-1]
        if length > cfg.max_position_embeddings:
            raise ValueError(f"{length} tokens exceed max_position_embeddings={cfg.max_position_embeddings}")
        tok = _TextEmbeddings(cfg, name="embeddings")(input_ids).astype(kw["dtype"])
        last, states = CLIPEncoder(cfg, causal=True, name="encoder")(tok)
        last = LayerNorm(cfg.layer_norm_eps, name="final_layer_norm", **kw)(last)
        ids = input_ids.astype(jnp.int32)
        # transformers' rule (see CLIPTextConfig.eos_token_id); argmax returns the first maximum
        at = jnp.argmax(ids, axis=-1) if cfg.eos_token_id == 2 else jnp.argmax(ids == cfg.eos_token_id, axis=-1)
        pooled = jnp.take_along_axis(last, at[:, None, None], axis=1)[:, 0]
        return last, pooled, states


class _TextEmbeddings(nn.Module):
    cfg: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids):
        cfg = self.cfg
        pd = dtype_of(cfg.param_dtype)
        tok = Embed(cfg.vocab_size, cfg.hidden_size, pd, name="token_embedding")(input_ids)
        pos = Embed(cfg.max_position_embeddings, cfg.hidden_size, pd, name="position_embedding").embedding
        return tok + pos[: input_ids.shape[-1]][None]


class CLIPTextModel(nn.Module):
    """input_ids (B, L), L <= max_position_embeddings, causal attention, no padding mask (as SD1.5)."""

    cfg: CLIPTextConfig

    @nn.compact
    def __call__(self, input_ids, output_hidden_states: bool = False) -> CLIPTextOutput:
        cfg = self.cfg
        last, pooled, states = _TextTransformer(cfg, name="text_model")(input_ids)
        embeds = None
        if cfg.projection_dim is not None:
            embeds = Dense(cfg.projection_dim, use_bias=False, dtype=dtype_of(cfg.dtype),
                           param_dtype=dtype_of(cfg.param_dtype), name="text_projection")(pooled)
        return CLIPTextOutput(last, pooled, embeds, states if output_hidden_states else None)

    def example_inputs(self, batch: int = 1):
        return (jnp.zeros((batch, self.cfg.max_position_embeddings), jnp.int32),)
