"""The CLIP-specific naming rules (embedding tables) and logical axes.

Full-size key coverage of the CLIP encoders is in ``tests/test_porting_names.py`` with the other models.
"""
from __future__ import annotations

import jax

from xdyna_jax.models import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModel, logical_axes
from xdyna_jax.porting import names


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
