"""What X-Dyna is: the seven networks composed once, as pure functions over one params tree.

``params`` is a dict keyed like ``ModelsConfig``: ``unet``, ``pose_controlnet``, ``face_controlnet``
(absent when the config has none), ``resampler``, ``vae``, ``image_encoder``, ``text_encoder``; each
value is that network's plain param pytree. Every function takes the config as the keyword ``cfg``
(a frozen, hashable dataclass: ``jax.jit(functools.partial(denoise, cfg=cfg))`` compiles it once).

The denoiser step (spec §1.7 steps 1-5, the training-time ``ModelWrapper`` of §8):
  1. the window is ``(B, 1+F, h, w, 4)``: frame 0 the clean reference latent, frames 1..F noisy;
  2. each ControlNet runs per frame on the F noisy frames only, with the text states and no image
     tokens (``controlnet_residuals``);
  3. the reference frame gets an explicit all-zero residual, prepended here;
  4. pose and S-Face residuals are summed;
  5. the UNet sees all 1+F frames with text + IP-Adapter image tokens as context (``unet_eps``).
Conditions are ``(B, F, H, W, C)`` in [0, 1], already min-max normalised over the clip (spec §7.3).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .clip import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel
from .configs import ControlNetConfig, ResamplerConfig, UNet3DConfig
from .controlnet import ControlNet
from .resampler import Resampler
from .unet import UNet3D
from .vae import AutoencoderKL, VAEConfig, latent_dist_sample


@dataclasses.dataclass(frozen=True)
class ModelsConfig:
    """The whole X-Dyna network set (``configs/sd15.yaml`` full size, ``configs/tiny.yaml``).

    ``face_controlnet: null`` is X-Dyna without the S-Face ControlNet (the pose-only scripts).
    The networks must fit together; ``__post_init__`` names any pair of fields that do not.
    """

    unet: UNet3DConfig = UNet3DConfig()
    pose_controlnet: ControlNetConfig = ControlNetConfig()
    face_controlnet: ControlNetConfig | None = ControlNetConfig(conditioning_channels=6)
    resampler: ResamplerConfig = ResamplerConfig()
    vae: VAEConfig = VAEConfig()
    image_encoder: CLIPVisionConfig = CLIPVisionConfig()
    text_encoder: CLIPTextConfig = CLIPTextConfig()

    def __post_init__(self):
        u = self.unet
        pairs = [("text_encoder.hidden_size", self.text_encoder.hidden_size, "unet.cross_attention_dim"),
                 ("resampler.output_dim", self.resampler.output_dim, "unet.cross_attention_dim"),
                 ("pose_controlnet.cross_attention_dim", self.pose_controlnet.cross_attention_dim,
                  "unet.cross_attention_dim"),
                 ("resampler.embedding_dim", self.resampler.embedding_dim, "image_encoder.hidden_size"),
                 ("vae.latent_channels", self.vae.latent_channels, "unet.in_channels"),
                 ("pose_controlnet.in_channels", self.pose_controlnet.in_channels, "unet.in_channels"),
                 ("pose_controlnet.block_out_channels", self.pose_controlnet.block_out_channels,
                  "unet.block_out_channels")]
        if u.unet_use_ipadapter:
            pairs.append(("resampler.num_queries", self.resampler.num_queries, "unet.num_ip_tokens"))
        if self.face_controlnet is not None:
            f = self.face_controlnet
            pairs += [("face_controlnet.cross_attention_dim", f.cross_attention_dim, "unet.cross_attention_dim"),
                      ("face_controlnet.in_channels", f.in_channels, "unet.in_channels"),
                      ("face_controlnet.block_out_channels", f.block_out_channels, "unet.block_out_channels")]
        for name, value, other in pairs:
            want = self.image_encoder.hidden_size if other == "image_encoder.hidden_size" else getattr(
                u, other.split(".")[1])
            if value != want:
                raise ValueError(f"{name}={value} does not fit {other}={want}")
        cond_down = 2 ** (len(self.pose_controlnet.conditioning_embedding_out_channels) - 1)
        if self.vae.downscale != cond_down:
            raise ValueError(f"vae downscales by {self.vae.downscale}, but the ControlNet condition embedding "
                             f"by {cond_down} (conditioning_embedding_out_channels has "
                             f"{len(self.pose_controlnet.conditioning_embedding_out_channels)} entries)")

    def parts(self) -> dict[str, Any]:
        """{part name: its config} for every network this config has (face ControlNet optional)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def sd15(cls) -> "ModelsConfig":
        return cls()


PARTS = tuple(f.name for f in dataclasses.fields(ModelsConfig))
OPTIONAL_PARTS = ("face_controlnet",)

_MODULES = {UNet3DConfig: UNet3D, ControlNetConfig: ControlNet, ResamplerConfig: Resampler,
            VAEConfig: AutoencoderKL, CLIPVisionConfig: CLIPVisionModel, CLIPTextConfig: CLIPTextModel}


def module_of(part_cfg):
    """The Flax module of one network config."""
    return _MODULES[type(part_cfg)](part_cfg)


def _need(params: Mapping[str, Any], part: str):
    if part not in params:
        raise KeyError(f"params have no {part!r} network (parts present: {sorted(params)})")
    return params[part]


# --- the denoiser ---------------------------------------------------------------------------------

def controlnet_residuals(params, noisy, t, text_states, pose, face=None, *, cfg: ModelsConfig,
                         conditioning_scale: float = 1.0):
    """Summed pose (+ S-Face) ControlNet residuals, each ``(B, 1+F, h', w', C)`` with a zero frame 0.

    noisy (B, F, h, w, 4): the noisy frames only; text_states (B, T, D): text, no image tokens;
    pose (B, F, H, W, 3) and face (B, F, H, W, 6) or None, in [0, 1].
    """
    if face is not None and cfg.face_controlnet is None:
        raise ValueError("a face condition was given, but the config has no face_controlnet")
    nets = [("pose_controlnet", cfg.pose_controlnet, pose)]
    if face is not None:
        nets.append(("face_controlnet", cfg.face_controlnet, face))
    down, mid = None, None
    for part, part_cfg, cond in nets:
        if cond.shape[:2] != noisy.shape[:2]:
            raise ValueError(f"{part}: condition frames {cond.shape[:2]} do not match the noisy frames "
                             f"{noisy.shape[:2]}")
        d, m = ControlNet(part_cfg).apply({"params": _need(params, part)}, noisy, t, text_states, cond,
                                          conditioning_scale)
        down = d if down is None else [a + b for a, b in zip(down, d)]
        mid = m if mid is None else mid + m
    with_ref = lambda r: jnp.concatenate([jnp.zeros_like(r[:, :1]), r], axis=1)  # the reference: zero
    return [with_ref(r) for r in down], with_ref(mid)


def unet_eps(params, window, t, context, residuals=None, *, cfg: ModelsConfig):
    """UNet prediction for every frame of ``window`` (B, 1+F, h, w, 4); context (B, T + n_ip, D)."""
    down, mid = residuals if residuals is not None else (None, None)
    return UNet3D(cfg.unet).apply({"params": _need(params, "unet")}, window, t, context,
                                  down_residuals=down, mid_residual=mid)


def context_states(text_states, image_tokens):
    """The UNet's cross-attention context: text tokens, then the IP-Adapter image tokens."""
    return jnp.concatenate([text_states, image_tokens.astype(text_states.dtype)], axis=-2)


def denoise(params, window, t, text_states, image_tokens, pose, face=None, *, cfg: ModelsConfig,
            conditioning_scale: float = 1.0):
    """Noise prediction ``(B, 1+F, h, w, 4)`` for a window whose frame 0 is the clean reference latent."""
    residuals = controlnet_residuals(params, window[:, 1:], t, text_states, pose, face, cfg=cfg,
                                     conditioning_scale=conditioning_scale)
    return unet_eps(params, window, t, context_states(text_states, image_tokens), residuals, cfg=cfg)


# --- the conditioning encoders --------------------------------------------------------------------

def reference_latent(params, images, rng=None, noise=None, *, cfg: ModelsConfig):
    """X-Dyna's reference latent: VAE posterior SAMPLE x scaling factor (spec §1.3 step 3).

    images (B, H, W, 3) in [-1, 1] -> (B, H/8, W/8, 4). Give ``rng`` or the posterior ``noise``
    (B, h, w, 4) itself (to replay another implementation's draw).
    """
    mean, logvar = AutoencoderKL(cfg.vae).apply({"params": _need(params, "vae")}, images, method="encode")
    return latent_dist_sample(mean, logvar, rng, noise) * cfg.vae.scaling_factor


def clip_hidden_states(params, pixel_values, *, cfg: ModelsConfig):
    """What the Resampler reads (B, tokens, width): the CLIP image encoder's hidden_states[-2]."""
    out = CLIPVisionModel(cfg.image_encoder).apply({"params": _need(params, "image_encoder")}, pixel_values,
                                                   output_hidden_states=True)
    return out.hidden_states[-2]


def image_tokens(params, pixel_values, *, cfg: ModelsConfig):
    """IP-Adapter-Plus tokens (B, n_ip, D): CLIP image encoder hidden_states[-2] -> Resampler.

    pixel_values (B, S, S, 3) CLIP-normalised (``clip_preprocess.clip_pixel_values``).
    """
    hidden = clip_hidden_states(params, pixel_values, cfg=cfg)
    return Resampler(cfg.resampler).apply({"params": _need(params, "resampler")}, hidden)


def uncond_image_tokens(params, batch: int, *, cfg: ModelsConfig):
    """The guidance (uncond) tokens: the same chain on zeros in normalised pixel space (spec §1.3)."""
    s = cfg.image_encoder.image_size
    return image_tokens(params, jnp.zeros((batch, s, s, cfg.image_encoder.num_channels), jnp.float32), cfg=cfg)


def text_states(params, input_ids, *, cfg: ModelsConfig):
    """CLIP text encoder ``last_hidden_state`` (B, L, D) of token ids (B, L)."""
    return CLIPTextModel(cfg.text_encoder).apply({"params": _need(params, "text_encoder")},
                                                 input_ids).last_hidden_state


def empty_prompt_ids(cfg: ModelsConfig, batch: int = 1, tokenizer=None) -> np.ndarray:
    """Token ids of the empty prompt X-Dyna uses (caption "" and negative prompt "").

    With a ``CLIPTokenizer``: its output. Without one: CLIP's layout, BOS then EOS padding to the
    full length, with BOS/EOS the last two vocabulary ids (49406 / 49407 for CLIP's vocabulary).
    """
    length = cfg.text_encoder.max_position_embeddings
    if tokenizer is not None:
        from .clip_preprocess import tokenize

        return np.repeat(tokenize("", tokenizer, length), batch, axis=0)
    v = cfg.text_encoder.vocab_size
    ids = np.full((batch, length), v - 1, np.int32)
    ids[:, 0] = v - 2
    return ids


# --- params: init, shapes, logical axes, shardings --------------------------------------------------

def _init_part(part_cfg, rng):
    import flax.linen as nn

    module = module_of(part_cfg)
    return nn.unbox(module.init(rng, *module.example_inputs())["params"])


def _trace_part(part_cfg):
    """(param shapes, logical axes) of one network: one abstract trace of its init (no allocation)."""
    import flax.linen as nn

    module = module_of(part_cfg)
    boxed = jax.eval_shape(lambda: module.init(jax.random.key(0), *module.example_inputs()))["params"]
    return nn.unbox(boxed), nn.get_partition_spec(boxed)


_trace_part_cached = functools.lru_cache(maxsize=64)(_trace_part)


def _abstract_part(part_cfg):
    """``_trace_part``, memoised per (frozen, hashable) network config: tracing a network's init takes seconds
    even for the tiny ones, and bundles, shardings and checkpoint targets ask for the same shapes again and
    again. The nested dicts are fresh copies on every call (callers may edit them); the leaves are immutable."""
    try:
        shapes, axes = _trace_part_cached(part_cfg)
    except TypeError:  # an unhashable config: trace it every time
        shapes, axes = _trace_part(part_cfg)
    return _copy_dicts(shapes), _copy_dicts(axes)


def _copy_dicts(tree):
    return {k: _copy_dicts(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def param_shapes(cfg: ModelsConfig):
    """{part: pytree of ShapeDtypeStruct}; no allocation (fine at full size)."""
    return {name: _abstract_part(c)[0] for name, c in cfg.parts().items()}


def logical_axes(cfg: ModelsConfig):
    """{part: pytree of PartitionSpec of logical axis names}."""
    return {name: _abstract_part(c)[1] for name, c in cfg.parts().items()}


def param_shardings(cfg: ModelsConfig, mesh, rules=None):
    """{part: pytree of NamedSharding} by the rule table ``rules`` (default ``xdyna_jax.sharding.RULES``;
    a config's: ``sharding.rules_with(mesh_cfg.rules)``)."""
    from xdyna_jax import sharding

    shapes, axes = param_shapes(cfg), logical_axes(cfg)
    return {name: sharding.param_shardings(axes[name], shapes[name], mesh, rules) for name in shapes}


def abstract_params(cfg: ModelsConfig, mesh=None, rules=None):
    """Param shapes with their shardings attached: the target to restore a checkpoint straight onto ``mesh``."""
    shapes = param_shapes(cfg)
    if mesh is None:
        return shapes
    sh = param_shardings(cfg, mesh, rules)
    return jax.tree.map(lambda s, h: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=h), shapes, sh)


def _init_programs(cfg: ModelsConfig, mesh=None, parts=None, rules=None) -> dict:
    """{part: jitted init of that network, with ``out_shardings`` on ``mesh`` by ``rules``}: for shapes
    (``init_params_shape``) and as the reference the leafwise ``init_params`` is tested against."""
    shardings = param_shardings(cfg, mesh, rules) if mesh is not None else {}
    return {name: jax.jit(functools.partial(_init_part, c), out_shardings=shardings.get(name))
            for name, c in cfg.parts().items() if parts is None or name in parts}


def _part_key(rng, name: str):
    return jax.random.fold_in(rng, PARTS.index(name))


def init_params(cfg: ModelsConfig, rng: jax.Array, mesh=None, parts=None, rules=None):
    """Fresh params of every network (or of ``parts``), created already sharded on ``mesh``.

    Each network's init is evaluated leaf by leaf (``leafwise_init``: minutes of XLA compile become seconds),
    every param placed on its sharding as soon as it is drawn, so at full size no device ever holds a whole
    network. The values equal one jitted ``module.init`` per network. The key of a part is
    ``fold_in(rng, index in PARTS)``: adding or leaving out a part never changes another part's values.
    """
    from .leafwise_init import init_leafwise

    shardings = param_shardings(cfg, mesh, rules) if mesh is not None else {}
    return {name: init_leafwise(_init_part, (c,), _part_key(rng, name), shardings.get(name))
            for name, c in cfg.parts().items() if parts is None or name in parts}


def init_params_shape(cfg: ModelsConfig, mesh=None, parts=None, rules=None):
    """What ``init_params`` would create (shapes, dtypes and shardings), without allocating anything."""
    return {name: fn.eval_shape(_part_key(jax.random.key(0), name))
            for name, fn in _init_programs(cfg, mesh, parts, rules).items()}
