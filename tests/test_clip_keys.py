"""Coverage of the naming rules for the CLIP encoders at full size (no allocation: ``jax.eval_shape``).

``tests/data/keys/clip_{vision,text}_keys.tsv`` come from transformers on the meta device
(``tools/keys/make_clip_keys.py``): ``CLIPVisionModelWithProjection`` at IP-Adapter's ViT-H/14 config
and ``CLIPTextModel`` at SD1.5's text-encoder config (with the on-disk ``text_model.`` prefix).
"""
from __future__ import annotations

import ast
from pathlib import Path

import jax
import pytest
from flax import traverse_util

from xdyna_jax.models import (CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, logical_axes,
                              param_shapes)
from xdyna_jax.porting import names, official_entries

KEYS = Path(__file__).parent / "data" / "keys"


def read_tsv(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (KEYS / name).read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(ast.literal_eval(shape))
    return out


CASES = {
    "clip_vision": (lambda: CLIPVisionModel(CLIPVisionConfig.vit_h14()), "clip_vision_keys.tsv", 520),
    "clip_text": (lambda: CLIPTextModel(CLIPTextConfig.sd15()), "clip_text_keys.tsv", 196),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_official_key_maps_to_one_param(case):
    make_model, tsv, n = CASES[case]
    model, keys = make_model(), read_tsv(tsv)
    assert len(keys) == n
    flat = traverse_util.flatten_dict(param_shapes(model))
    seen: dict[tuple[str, ...], str] = {}
    for key, shape in keys.items():
        path = names.key_to_path(key, len(shape))
        assert path in flat, f"{key} -> {'/'.join(path)} is not a param"
        assert path not in seen, f"{key} and {seen.get(path)} both map to {'/'.join(path)}"
        seen[path] = key
        assert names.official_shape(tuple(flat[path].shape), path[-1]) == shape, key
        assert names.path_to_key(path) == key
    uncovered = sorted("/".join(p) for p in set(flat) - set(seen))
    assert not uncovered, f"params no official key maps to: {uncovered[:20]}"
    # and the converters list exactly these keys
    assert {e.key: e.shape for e in official_entries(model.cfg)} == keys


def test_embedding_rule_and_logical_axes():
    assert names.key_to_path("text_model.embeddings.token_embedding.weight", 2) == \
        ("text_model", "embeddings", "token_embedding", "embedding")
    assert names.key_to_path("vision_model.embeddings.patch_embedding.weight", 4)[-1] == "kernel"
    assert names.key_to_path("vision_model.embeddings.class_embedding", 1)[-1] == "class_embedding"
    assert names.path_to_key(("text_model", "embeddings", "position_embedding", "embedding")) == \
        "text_model.embeddings.position_embedding.weight"
    axes = logical_axes(CLIPTextModel(CLIPTextConfig.tiny()))
    emb = axes["text_model"]["embeddings"]
    assert tuple(emb["token_embedding"]["embedding"]) == ("vocab", "embed_out")
    used = {n for spec in jax.tree.leaves(logical_axes(CLIPVisionModel(CLIPVisionConfig.tiny())),
                                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
            for n in spec}
    assert used == {"vocab", "embed_in", "embed_out", "conv_h", "conv_w", "norm", "bias"}
