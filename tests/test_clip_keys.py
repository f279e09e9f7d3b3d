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
    assert tuple(emb["token_embedding"]["embedding"]) == ("vocab", "embed")
    used = {n for spec in jax.tree.leaves(logical_axes(CLIPVisionModel(CLIPVisionConfig.tiny())),
                                          is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
            for n in spec}
    assert used == {"vocab", "embed", "heads", "mlp", "conv_h", "conv_w", "conv_in", "conv_out", "norm"}
    layer = logical_axes(CLIPVisionModel(CLIPVisionConfig.tiny()))["vision_model"]["encoder"]["layers_0"]
    assert tuple(layer["self_attn"]["q_proj"]["kernel"]) == ("embed", "heads")
    assert tuple(layer["self_attn"]["q_proj"]["bias"]) == ("heads",)
    assert tuple(layer["self_attn"]["out_proj"]["kernel"]) == ("heads", "embed")
    assert tuple(layer["mlp"]["fc1"]["kernel"]) == ("embed", "mlp") and tuple(layer["mlp"]["fc1"]["bias"]) == ("mlp",)
    assert tuple(layer["mlp"]["fc2"]["kernel"]) == ("mlp", "embed")
