"""CLIP encoders against transformers (tiny configs, float32, random non-zero weights), their
preprocessing, the tokenizer padding, and the strict porting of their checkpoints."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from official_weights import key_rng, official_weight
from xdyna_jax.models import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, param_shapes
from xdyna_jax.models.attention import attention
from xdyna_jax.models.clip_preprocess import (clip_pixel_values, default_image_processor, tokenize,
                                              uncond_pixel_values)
from xdyna_jax.porting import (PortingError, clip_text_params_from_torch, clip_text_params_to_torch,
                               clip_vision_params_from_torch, clip_vision_params_to_torch, load_clip_text,
                               load_clip_vision, load_converted, official_entries, write_safetensors)

ATOL = 1e-4
VISION_HF = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 image_size=32, patch_size=8, projection_dim=24)
# a 58-token BPE vocabulary: letters, word-final letters, two words, BOS 56, EOS 57
LETTERS = "abcdefghijklmnopqrstuvwxyz"
TOKENS = list(LETTERS) + [c + "</w>" for c in LETTERS] + ["ca", "cat</w>", "do", "dog</w>",
                                                          "<|startoftext|>", "<|endoftext|>"]
BOS, EOS = 56, 57
TEXT_HF = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=12, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS)
PROMPTS = ["a cat", "", "dog dog cat xyz"]


def clip_weights(cfg, seed=0) -> dict[str, np.ndarray]:
    """Non-zero weights for every official key (``tests/official_weights.py`` rules; the 1-D
    ``class_embedding`` is N(0, 1))."""
    out = {}
    for e in official_entries(cfg):
        if e.key.endswith("class_embedding"):
            out[e.key] = key_rng(seed, e.key).standard_normal(e.shape).astype(np.float32)
        else:
            out[e.key] = official_weight(e.key, e.shape, seed)
    return out


def torch_model(cls, sd, **hf_kw):
    cfg = getattr(transformers, cls.replace("ModelWithProjection", "Config").replace("Model", "Config"))(**hf_kw)
    m = getattr(transformers, cls)(cfg).eval()
    tsd = m.state_dict()
    # transformers 5's plain CLIPTextModel has no "text_model." prefix in its own state dict
    prefix = "" if next(iter(tsd)).split(".")[0] in ("vision_model", "text_model") else "text_model."
    assert sorted(prefix + k for k in tsd) == sorted(sd)
    m.load_state_dict({k: torch.from_numpy(sd[prefix + k]) for k in tsd}, strict=True)
    return m


def err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b.detach().numpy())))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    (d / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(TOKENS)}))
    (d / "merges.txt").write_text("\n".join(["#version: 0.2", "c a", "ca t</w>", "d o", "do g</w>"]) + "\n")
    return transformers.CLIPTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


# --- model parity -----------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_vision_matches_transformers(act):
    hf_cfg = transformers.CLIPVisionConfig(**VISION_HF, hidden_act=act)
    cfg = CLIPVisionConfig.from_hf(hf_cfg)
    assert cfg == CLIPVisionConfig.tiny(hidden_act=act)
    sd = clip_weights(cfg, seed=1)
    ref_model = torch_model("CLIPVisionModelWithProjection", sd, **VISION_HF, hidden_act=act)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(x), output_hidden_states=True)
    params = clip_vision_params_from_torch(sd, cfg)
    out = jax.jit(lambda p, v: CLIPVisionModel(cfg).apply({"params": p}, v, output_hidden_states=True))(
        params, x.transpose(0, 2, 3, 1))
    assert len(out.hidden_states) == len(ref.hidden_states) == cfg.num_hidden_layers + 1
    errors = {f"hidden_states[{i}]": err(a, b) for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states))}
    errors.update(last_hidden_state=err(out.last_hidden_state, ref.last_hidden_state),
                  image_embeds=err(out.image_embeds, ref.image_embeds),
                  pooler_output=err(out.pooler_output, ref_model.vision_model.post_layernorm(
                      ref.last_hidden_state[:, 0]).detach()))
    print(f"vision {act}: max abs errors {errors}")
    assert max(errors.values()) <= ATOL, errors
    assert float(np.abs(np.asarray(out.hidden_states[-2])).max()) > 0.1  # X-Dyna's feature is not trivial


@pytest.mark.parametrize("eos_rule", ["eos_id", "legacy_argmax"])
def test_text_matches_transformers(tokenizer, eos_rule):
    hf_kw = dict(TEXT_HF, eos_token_id=EOS if eos_rule == "eos_id" else 2)
    cfg = CLIPTextConfig.from_hf(transformers.CLIPTextConfig(**hf_kw))
    assert cfg == CLIPTextConfig.tiny(eos_token_id=hf_kw["eos_token_id"])
    sd = clip_weights(cfg, seed=2)
    ref_model = torch_model("CLIPTextModel", sd, **hf_kw)
    ids = tokenize(PROMPTS, tokenizer, max_length=12)
    # a row where argmax(ids) (token 60) and the first EOS differ: the two pooling rules disagree
    ids = np.concatenate([ids, np.array([[BOS, 60, 3, EOS] + [EOS] * 8], np.int32)])
    params = clip_text_params_from_torch(sd, cfg)
    run = jax.jit(lambda p, i: CLIPTextModel(cfg).apply({"params": p}, i, output_hidden_states=True))
    errors = {}
    for length in (12, 7):  # full length and a shorter sequence (position embeddings sliced)
        x = ids[:, :length]
        with torch.no_grad():
            ref = ref_model(torch.from_numpy(x).long(), output_hidden_states=True)
        out = run(params, x)
        errors[f"L{length}.last_hidden_state"] = err(out.last_hidden_state, ref.last_hidden_state)
        errors[f"L{length}.pooler_output"] = err(out.pooler_output, ref.pooler_output)
        for i, (a, b) in enumerate(zip(out.hidden_states, ref.hidden_states, strict=True)):
            errors[f"L{length}.hidden_states[{i}]"] = err(a, b)
    print(f"text {eos_rule}: max abs errors {errors}")
    assert max(errors.values()) <= ATOL, errors
    # the pooled rows really are at different positions under the two rules
    at = 1 if eos_rule == "legacy_argmax" else 3
    np.testing.assert_allclose(out.pooler_output[-1], out.last_hidden_state[-1, at], atol=0)


def test_text_projection_and_causality():
    cfg = CLIPTextConfig.tiny(projection_dim=16)
    sd = clip_weights(cfg, seed=3)
    ref_model = torch_model("CLIPTextModelWithProjection", sd, **TEXT_HF, projection_dim=16)
    ids = np.array([[BOS, 5, 9, EOS] + [EOS] * 8, [BOS, 5, 9, 11, 30, EOS] + [EOS] * 6], np.int32)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(ids).long())
    out = CLIPTextModel(cfg).apply({"params": clip_text_params_from_torch(sd, cfg)}, ids)
    errors = {"text_embeds": err(out.text_embeds, ref.text_embeds),
              "last_hidden_state": err(out.last_hidden_state, ref.last_hidden_state)}
    print(f"text with projection: max abs errors {errors}")
    assert max(errors.values()) <= ATOL, errors
    # causal: the first three tokens of both rows are equal, and so are their states
    np.testing.assert_allclose(out.last_hidden_state[0, :3], out.last_hidden_state[1, :3], atol=1e-6)


# --- attention mask ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend,chunk", [("xla", 0), ("xla", 3), ("cudnn", 0)])
def test_causal_attention(backend, chunk):
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, 7, 8)).astype(np.float32) for _ in range(3))
    out = attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), heads=2, backend=backend,
                    query_chunk=chunk, causal=True)
    qh, kh, vh = (a.reshape(2, 7, 2, 4) for a in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", qh, kh) / 2.0
    logits = np.where(np.tril(np.ones((7, 7), bool)), logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    ref = np.einsum("bhqk,bkhd->bqhd", p / p.sum(-1, keepdims=True), vh).reshape(2, 7, 8)
    np.testing.assert_allclose(out, ref, atol=1e-5)


# --- preprocessing and tokenizer --------------------------------------------------------------

def test_pixel_values_match_clip_image_processor():
    rng = np.random.default_rng(0)
    tall = Image.fromarray(rng.integers(0, 256, (70, 40, 3), np.uint8))  # W 40, H 70
    wide = rng.integers(0, 256, (50, 90, 3), np.uint8)
    proc = default_image_processor()
    assert proc.size == {"shortest_edge": 224} and proc.crop_size == {"height": 224, "width": 224}
    assert int(proc.resample) == int(Image.BICUBIC) and proc.do_center_crop and proc.do_normalize
    got = clip_pixel_values([tall, wide])
    assert got.shape == (2, 224, 224, 3) and got.dtype == np.float32
    ref = proc(images=[tall, wide], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, ref)
    # independently: shortest edge -> 224 (bicubic), centre crop, /255, OpenAI mean/std
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    big = np.asarray(tall.resize((224, int(224 * 70 / 40)), Image.BICUBIC), np.float32)
    top = (big.shape[0] - 224) // 2
    np.testing.assert_allclose(got[0], (big[top:top + 224] / 255.0 - mean) / std, atol=1e-5)
    assert clip_pixel_values(tall).shape == (1, 224, 224, 3)
    un = uncond_pixel_values(got)
    assert un.shape == got.shape and un.dtype == np.float32 and not un.any()


def test_tokenize_pads_with_eos_to_77(tokenizer):
    ids = tokenize(PROMPTS + ["a " * 100], tokenizer)
    assert ids.shape == (4, 77) and ids.dtype == np.int32
    assert ids[0, :4].tolist() == [BOS, 26, 53, EOS] and (ids[0, 4:] == EOS).all()  # a</w>, cat</w>
    assert ids[1, 0] == BOS and (ids[1, 1:] == EOS).all()  # the empty prompt: BOS, then EOS padding
    assert ids[3, 0] == BOS and ids[3, -1] == EOS and (ids[3, 1:-1] == 26).all()  # truncated, EOS kept
    assert tokenize("a cat", tokenizer).shape == (1, 77)


# --- porting ----------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["vision", "vision_no_proj", "text", "text_proj"])
def test_round_trip_is_bit_exact(which):
    cfg, model, to_flax, to_torch = {
        "vision": (CLIPVisionConfig.tiny(), CLIPVisionModel, clip_vision_params_from_torch,
                   clip_vision_params_to_torch),
        "vision_no_proj": (CLIPVisionConfig.tiny(projection_dim=None), CLIPVisionModel,
                           clip_vision_params_from_torch, clip_vision_params_to_torch),
        "text": (CLIPTextConfig.tiny(), CLIPTextModel, clip_text_params_from_torch, clip_text_params_to_torch),
        "text_proj": (CLIPTextConfig.tiny(projection_dim=8), CLIPTextModel, clip_text_params_from_torch,
                      clip_text_params_to_torch),
    }[which]
    sd = clip_weights(cfg)
    params = to_flax(sd, cfg)
    shapes = param_shapes(model(cfg))
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shapes)):
        assert isinstance(p, np.ndarray) and p.shape == s.shape and p.dtype == s.dtype
    back = to_torch(params, cfg)
    assert sorted(back) == sorted(sd)
    assert all(back[k].dtype == sd[k].dtype and np.array_equal(back[k], sd[k]) for k in sd)
    emb = "vision_model.embeddings.position_embedding.weight" if "vision" in which else \
        "text_model.embeddings.token_embedding.weight"
    tree = params["vision_model" if "vision" in which else "text_model"]["embeddings"]
    np.testing.assert_array_equal(tree[emb.split(".")[2]]["embedding"], sd[emb])  # no transpose


def test_strict_errors_and_position_ids():
    cfg = CLIPVisionConfig.tiny()
    sd = clip_weights(cfg)
    pid = "vision_model.embeddings.position_ids"
    # transformers < 4.31 files hold position_ids (int64 arange): accepted, and never exported
    params = clip_vision_params_from_torch(dict(sd, **{pid: np.arange(17)[None]}), cfg)
    assert pid not in clip_vision_params_to_torch(params, cfg)
    with pytest.raises(PortingError, match=rf"{pid}: is not arange\(17\)"):
        clip_vision_params_from_torch(dict(sd, **{pid: np.arange(17)[None] % 16}), cfg)
    with pytest.raises(PortingError, match=rf"{pid}: expected shape \(1, 17\), found \(1, 50\)"):
        clip_vision_params_from_torch(dict(sd, **{pid: np.arange(50)[None]}), cfg)
    bad = dict(sd)
    del bad["vision_model.pre_layrnorm.weight"]
    bad["vision_model.pre_layernorm.weight"] = sd["vision_model.pre_layrnorm.weight"]
    bad["vision_model.encoder.layers.0.mlp.fc1.weight"] = np.zeros((64, 33), np.float32)
    with pytest.raises(PortingError) as e:
        clip_vision_params_from_torch(bad, cfg)
    msg = str(e.value)
    assert "1 unknown key(s):\n  vision_model.pre_layernorm.weight" in msg
    assert "1 missing key(s):\n  vision_model.pre_layrnorm.weight" in msg
    assert "vision_model.encoder.layers.0.mlp.fc1.weight: expected shape (64, 32), found (64, 33)" in msg
    # a projection head the config does not have is an unknown key
    with pytest.raises(PortingError, match=r"1 unknown key\(s\):\n  visual_projection.weight"):
        clip_vision_params_from_torch(sd, CLIPVisionConfig.tiny(projection_dim=None))
    with pytest.raises(TypeError, match="expected a CLIPTextConfig"):
        clip_text_params_from_torch(sd, cfg)


def test_transformers5_unprefixed_files_and_folders(tmp_path):
    # transformers 5 saves a plain CLIPTextModel / CLIPVisionModel without the model prefix
    tcfg = CLIPTextConfig.tiny(eos_token_id=2)
    tsd = clip_weights(tcfg, seed=4)
    m = torch_model("CLIPTextModel", tsd, **dict(TEXT_HF, eos_token_id=2))
    m.save_pretrained(tmp_path / "text_encoder")
    params, cfg = load_clip_text(tmp_path / "text_encoder")
    assert cfg == tcfg
    assert all(np.array_equal(v, tsd[k]) for k, v in clip_text_params_to_torch(params, cfg).items())
    # a transformers-4-style folder: prefixed keys + position_ids, pytorch_model.bin, config.json
    vcfg = CLIPVisionConfig.tiny()
    vsd = clip_weights(vcfg, seed=5)
    folder = tmp_path / "image_encoder"
    folder.mkdir()
    legacy = dict(vsd, **{"vision_model.embeddings.position_ids": np.arange(17)[None]})
    torch.save({k: torch.from_numpy(v) for k, v in legacy.items()}, folder / "pytorch_model.bin")
    hf = transformers.CLIPVisionConfig(**VISION_HF, hidden_act="gelu", architectures=["CLIPVisionModelWithProjection"])
    (folder / "config.json").write_text(hf.to_json_string())
    params, cfg = load_clip_vision(folder)
    assert cfg == CLIPVisionConfig.tiny(hidden_act="gelu")
    assert all(np.array_equal(v, vsd[k]) for k, v in clip_vision_params_to_torch(params, cfg).items())
    # no config.json: the preset, projection read from the file
    write_safetensors(vsd, tmp_path / "bare" / "model.safetensors")
    with pytest.raises(PortingError, match=r"expected shape \(1280, 3, 14, 14\)"):
        load_clip_vision(tmp_path / "bare")
    _, cfg = load_clip_vision(tmp_path / "bare", CLIPVisionConfig.tiny())
    assert cfg == CLIPVisionConfig.tiny()
    with pytest.raises(PortingError, match="no model.safetensors or pytorch_model.bin"):
        load_clip_vision(tmp_path)


def test_cli_convert_clip_text_folder(tmp_path):
    from xdyna_jax.porting.__main__ import main

    cfg = CLIPTextConfig.tiny()
    sd = clip_weights(cfg, seed=6)
    write_safetensors(sd, tmp_path / "te" / "model.safetensors")
    (tmp_path / "te" / "config.json").write_text(
        transformers.CLIPTextConfig(**TEXT_HF, architectures=["CLIPTextModel"]).to_json_string())
    assert main(["convert", "--kind", "clip_text", "--checkpoint", str(tmp_path / "te"),
                 "--out", str(tmp_path / "out")]) == 0
    params, got_cfg = load_converted(tmp_path / "out", "clip_text")
    assert got_cfg == cfg
    back = clip_text_params_to_torch(params, got_cfg)
    assert sorted(back) == sorted(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)


# --- configs ----------------------------------------------------------------------------------

IP_ADAPTER_IMAGE_ENCODER = {  # h94/IP-Adapter models/image_encoder/config.json (abridged)
    "architectures": ["CLIPVisionModelWithProjection"], "hidden_act": "gelu", "hidden_size": 1280,
    "image_size": 224, "intermediate_size": 5120, "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
    "num_attention_heads": 16, "num_channels": 3, "num_hidden_layers": 32, "patch_size": 14,
    "projection_dim": 1024, "torch_dtype": "float16", "dropout": 0.0, "attention_dropout": 0.0}
SD15_TEXT_ENCODER = {  # stable-diffusion-v1-5 text_encoder/config.json (abridged)
    "architectures": ["CLIPTextModel"], "hidden_act": "quick_gelu", "hidden_size": 768,
    "intermediate_size": 3072, "layer_norm_eps": 1e-05, "max_position_embeddings": 77,
    "model_type": "clip_text_model", "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768,
    "vocab_size": 49408, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1, "torch_dtype": "float32"}


def test_from_hf():
    assert CLIPVisionConfig.from_hf(IP_ADAPTER_IMAGE_ENCODER) == CLIPVisionConfig.vit_h14()
    assert CLIPVisionConfig.from_hf(transformers.CLIPVisionConfig(**IP_ADAPTER_IMAGE_ENCODER)) == \
        CLIPVisionConfig.vit_h14()
    assert CLIPTextConfig.from_hf(SD15_TEXT_ENCODER) == CLIPTextConfig.sd15(eos_token_id=2)
    assert CLIPTextConfig.from_hf(transformers.CLIPTextConfig(**SD15_TEXT_ENCODER)) == \
        CLIPTextConfig.sd15(eos_token_id=2)
    # missing keys take transformers' defaults
    assert CLIPVisionConfig.from_hf({}) == CLIPVisionConfig.from_hf(transformers.CLIPVisionConfig())
    assert CLIPTextConfig.from_hf({}) == CLIPTextConfig.from_hf(transformers.CLIPTextConfig())
    plain = dict(IP_ADAPTER_IMAGE_ENCODER, architectures=["CLIPVisionModel"])
    assert CLIPVisionConfig.from_hf(plain).projection_dim is None
    assert CLIPTextConfig.from_hf(SD15_TEXT_ENCODER, with_projection=True).projection_dim == 768
    assert CLIPTextConfig.from_hf(SD15_TEXT_ENCODER, dtype="bfloat16").dtype == "bfloat16"
    # a whole CLIPConfig: its sub-config, with the top-level projection_dim (as CLIPModel)
    whole = transformers.CLIPConfig(text_config=dict(TEXT_HF), vision_config=dict(VISION_HF), projection_dim=20)
    assert CLIPVisionConfig.from_hf(whole) == CLIPVisionConfig.tiny(hidden_act="quick_gelu", projection_dim=20)
    assert CLIPTextConfig.from_hf(whole.to_dict()) == CLIPTextConfig.tiny(projection_dim=20)
    with pytest.raises(ValueError, match="expected a 'clip_vision_model' config"):
        CLIPVisionConfig.from_hf(SD15_TEXT_ENCODER)
    with pytest.raises(ValueError, match="hidden_act 'gelu_new' is not supported"):
        CLIPTextConfig.from_hf(dict(SD15_TEXT_ENCODER, hidden_act="gelu_new"))
