"""Weights saved before the pooler was removed from the models that never use it (the BERT masked-LM
head, the MiniLM classifier) still load strictly: their ``pooler.*`` entries are dropped on load."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_model, save_model

import deepseek as ds
from deepseek.models.pretrained import MiniLMClassifier

BERT = {"vocab_size": 64, "dim": 16, "depth": 1, "heads": 2}


def old_mlm_bert() -> nn.Module:
    """An MLM Bert as it was built before: with an (unused) ``pooler`` Linear."""
    model = ds.models.build("bert_base", head="mlm", **BERT)
    model.pooler = nn.Linear(16, 16)
    return model


def test_mlm_bert_loads_a_state_dict_with_pooler_keys_strictly():
    old = old_mlm_bert().state_dict()
    assert {"pooler.weight", "pooler.bias"} <= set(old)
    model = ds.models.build("bert_base", head="mlm", **BERT)
    model.load_state_dict(old)  # strict
    assert not hasattr(model, "pooler")
    torch.testing.assert_close(model.word.weight, old["word.weight"])
    torch.testing.assert_close(model.mlm_decoder.weight, old["word.weight"])  # still tied


def test_mlm_bert_loads_an_old_safetensors_file_strictly(tmp_path):
    """Through ``safetensors.torch.load_model`` (what ``deepseek.train.checkpoint.load_weights`` uses)."""
    old = old_mlm_bert()
    save_model(old, str(tmp_path / "model.safetensors"))
    model = ds.models.build("bert_base", head="mlm", **BERT)
    missing, unexpected = load_model(model, str(tmp_path / "model.safetensors"), strict=True)
    assert not missing and not unexpected
    torch.testing.assert_close(model.blocks[0].ffn[0].weight, old.blocks[0].ffn[0].weight)


def test_bert_with_a_pooler_still_rejects_unknown_keys():
    model = ds.models.build("bert_base", head="classification", num_classes=2, **BERT)
    state = model.state_dict() | {"pooler.extra": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="pooler.extra"):
        model.load_state_dict(state)


def tiny_minilm(pooler: bool) -> MiniLMClassifier:
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)  # fmt: skip
    return MiniLMClassifier(BertModel(config, add_pooling_layer=pooler), num_classes=3)


def test_minilm_classifier_loads_weights_saved_with_the_pooler_strictly(tmp_path):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    old = tiny_minilm(pooler=True)
    assert any(k.startswith("encoder.pooler.") for k in old.state_dict())
    model = tiny_minilm(pooler=False)
    model.load_state_dict(old.state_dict())  # strict
    torch.testing.assert_close(model.head.weight, old.head.weight)
    save_model(old, str(tmp_path / "model.safetensors"))
    fresh = tiny_minilm(pooler=False)
    missing, unexpected = load_model(fresh, str(tmp_path / "model.safetensors"), strict=True)
    assert not missing and not unexpected
