"""Coverage of the naming rules at full size, against the official key lists (no allocation).

``tests/data/keys/*.tsv`` are dumps of the official modules' state dicts at SD1.5 size (key, shape).
Every official key must map to exactly one Flax param of the right shape (``pe`` buffers to the
attention block that recomputes them), and every Flax param must be covered.
"""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from xdyna_jax.models import (AutoencoderKL, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel,
                              ControlNet, ControlNetConfig, Resampler, ResamplerConfig, UNet3D, UNet3DConfig,
                              VAEConfig, param_shapes)
from xdyna_jax.models.motion import sinusoidal_position_encoding
from xdyna_jax.porting import names, official_entries

KEYS = Path(__file__).parent / "data" / "keys"
FACE_CHANNELS = 6


def read_tsv(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (KEYS / name).read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(ast.literal_eval(shape))
    return out


def face_keys() -> dict[str, tuple[int, ...]]:
    keys = read_tsv("controlnet_keys.tsv")
    w = "controlnet_cond_embedding.conv_in.weight"
    keys[w] = (keys[w][0], FACE_CHANNELS) + keys[w][2:]
    return keys


CASES = {
    "unet": (lambda: UNet3D(UNet3DConfig.sd15()), lambda: read_tsv("unet_keys.tsv"), 24),
    "controlnet": (lambda: ControlNet(ControlNetConfig.sd15()), lambda: read_tsv("controlnet_keys.tsv"), None),
    "controlnet_face": (lambda: ControlNet(ControlNetConfig.sd15(conditioning_channels=FACE_CHANNELS)),
                        face_keys, None),
    "resampler": (lambda: Resampler(ResamplerConfig.sd15()), lambda: read_tsv("resampler_keys.tsv"), None),
    # the frozen encoders: key lists from diffusers / transformers on the meta device (tools/keys/)
    "vae": (lambda: AutoencoderKL(VAEConfig.sd15()), lambda: read_tsv("vae_keys.tsv"), None),
    "clip_vision": (lambda: CLIPVisionModel(CLIPVisionConfig.vit_h14()), lambda: read_tsv("clip_vision_keys.tsv"),
                    None),
    "clip_text": (lambda: CLIPTextModel(CLIPTextConfig.sd15()), lambda: read_tsv("clip_text_keys.tsv"), None),
}
KEY_COUNTS = {"unet": 1326, "controlnet": 340, "controlnet_face": 340, "resampler": 51, "vae": 248,
              "clip_vision": 520, "clip_text": 196}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_official_key_maps_to_one_param(case):
    make_model, make_keys, pe_len = CASES[case]
    model, keys = make_model(), make_keys()
    assert len(keys) == KEY_COUNTS[case]
    flat = traverse_util.flatten_dict(param_shapes(model))
    seen: dict[tuple[str, ...], str] = {}
    n_pe = 0
    for key, shape in keys.items():
        if key.endswith(".pos_encoder.pe"):
            # a buffer: it belongs to the temporal attention block that recomputes it
            n_pe += 1
            mod = names.module_path(key[: -len(".pos_encoder.pe")])
            assert mod[-1].startswith("attention_blocks_") and any(c.startswith("motion_modules_") for c in mod), key
            to_q = flat[mod + ("to_q", "kernel")]
            assert shape == (1, pe_len, to_q.shape[0]), key
            assert sinusoidal_position_encoding(pe_len, to_q.shape[0])[None].shape == shape
            continue
        path = names.key_to_path(key, len(shape))
        assert path in flat, f"{key} -> {'/'.join(path)} is not a param"
        assert path not in seen, f"{key} and {seen.get(path)} both map to {'/'.join(path)}"
        seen[path] = key
        assert names.official_shape(tuple(flat[path].shape), path[-1]) == shape, key
        assert names.path_to_key(path) == key
    uncovered = sorted("/".join(p) for p in set(flat) - set(seen))
    assert not uncovered, f"params no official key maps to: {uncovered[:20]}"
    assert n_pe == (40 if case == "unet" else 0)


@pytest.mark.parametrize("case", sorted(CASES))
def test_official_entries_list_exactly_the_official_keys(case):
    make_model, make_keys, _ = CASES[case]
    cfg = make_model().cfg
    listed = {e.key: e.shape for e in official_entries(cfg)}
    assert listed == make_keys()


def test_sd15_unet_is_the_official_unet_without_the_xdyna_layers():
    # a plain SD1.5 diffusers UNet has 686 tensors; X-Dyna adds _ff, _ip, motion modules (with pe)
    added = (".to_q_ff.", ".to_out_ff.", ".to_k_ip.", ".to_v_ip.", "motion_modules.")
    plain = [k for k in read_tsv("unet_keys.tsv") if not any(a in k for a in added)]
    assert len(plain) == 686


@pytest.mark.parametrize("key,ndim,path", [
    ("time_embedding.linear_1.weight", 2, ("time_embedding", "linear_1", "kernel")),
    ("layers.0.1.1.weight", 2, ("layers_0_1_1", "kernel")),
    ("layers.3.0.norm1.weight", 1, ("layers_3_0", "norm1", "scale")),
    ("controlnet_cond_embedding.blocks.3.bias", 1, ("controlnet_cond_embedding", "blocks_3", "bias")),
    ("controlnet_down_blocks.11.weight", 4, ("controlnet_down_blocks_11", "kernel")),
    ("down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_out.0.weight", 2,
     ("down_blocks_0", "attentions_1", "transformer_blocks_0", "attn1", "to_out_0", "kernel")),
    ("up_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj.bias", 1,
     ("up_blocks_1", "attentions_0", "transformer_blocks_0", "ff", "net_0", "proj", "bias")),
    ("latents", 3, ("latents",)),
])
def test_rule_table_examples(key, ndim, path):
    assert names.key_to_path(key, ndim) == path
    assert names.path_to_key(path) == key


def test_leaf_layouts():
    lin = np.arange(6.0).reshape(2, 3)            # torch Linear (out=2, in=3)
    assert names.to_flax(lin, ("to_q", "kernel")).shape == (3, 2)
    np.testing.assert_array_equal(names.to_flax(lin, ("to_q", "kernel")), lin.T)
    conv = np.arange(2 * 3 * 5 * 7.0).reshape(2, 3, 5, 7)  # torch Conv (O, I, kh, kw)
    k = names.to_flax(conv, ("conv_in", "kernel"))
    assert k.shape == (5, 7, 3, 2) and k[4, 6, 1, 0] == conv[0, 1, 4, 6]
    np.testing.assert_array_equal(names.to_torch(k, ("conv_in", "kernel")), conv)
    assert names.official_shape(k.shape, "kernel") == conv.shape
    assert names.key_to_path("norm.weight", 1)[-1] == "scale"
    with pytest.raises(names.NamingError):
        names.key_to_path("x.weight", 3)


def test_geglu_proj_is_stored_value_gate_interleaved():
    """Official GEGLU ``proj`` rows are [values | gates]; ours has column 2i = value i, 2i+1 = gate i."""
    inner, d = 3, 2
    w = np.arange(2 * inner * d, dtype=np.float32).reshape(2 * inner, d)  # torch Linear (out, in)
    b = np.arange(2 * inner, dtype=np.float32) + 100
    path = ("mid_block", "attentions_0", "transformer_blocks_0", "ff", "net_0", "proj")
    k = names.to_flax(w, path + ("kernel",))
    bias = names.to_flax(b, path + ("bias",))
    for i in range(inner):
        np.testing.assert_array_equal(k[:, 2 * i], w[i])              # value i
        np.testing.assert_array_equal(k[:, 2 * i + 1], w[inner + i])  # gate i
        assert bias[2 * i] == b[i] and bias[2 * i + 1] == b[inner + i]
    np.testing.assert_array_equal(names.to_torch(k, path + ("kernel",)), w)
    np.testing.assert_array_equal(names.to_torch(bias, path + ("bias",)), b)
    # any other Linear keeps the plain transpose
    np.testing.assert_array_equal(names.to_flax(w, ("ff", "net_2", "kernel")), w.T)
    with pytest.raises(names.NamingError, match="even"):
        names.to_flax(np.zeros(3), path + ("bias",))


def test_geglu_rule_matches_only_feed_forward_projections():
    """The path rule touches exactly the ``ff.net.0.proj`` tensors of every model's official keys."""
    for name in ("unet", "controlnet", "resampler", "vae", "clip_vision", "clip_text"):
        for key, shape in read_tsv(f"{name}_keys.tsv").items():
            path = names.key_to_path(key, len(shape))
            assert names.is_geglu_proj(path) == (".ff.net.0.proj." in f".{key}"), key
