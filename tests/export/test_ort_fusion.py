"""ONNX Runtime's transformer fusions: Attention, SkipLayerNormalization... fused, outputs match torch (cosine >= 0.9999)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

pytest.importorskip("onnxruntime.transformers.optimizer")
transformers = pytest.importorskip("transformers")

from deepseek.export import export_onnx  # noqa: E402
from deepseek.export.ort_fusion import (  # noqa: E402
    attention_dims,
    fuse_transformer_onnx,
    fused_onnx_variant,
    fused_ops,
)


class TinyBert(nn.Module):
    """A 2-layer BERT (hidden 32, 4 heads), untrained: ``{"input_ids", "attention_mask"}`` (N, L) -> (N, 32)."""

    def __init__(self) -> None:
        super().__init__()
        config = transformers.BertConfig(vocab_size=100, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                                         intermediate_size=64, max_position_embeddings=64)  # fmt: skip
        self.bert = transformers.BertModel(config, add_pooling_layer=False)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.bert(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state[:, 0]


def _inputs(batch: int, length: int = 16) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, length // 2 :] = 0  # padding: the fused Attention must apply the mask
    return {"input_ids": torch.randint(1, 100, (batch, length)), "attention_mask": mask}


@torch.no_grad()
def _min_cosine(model: nn.Module, fused: nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    return float(nn.functional.cosine_similarity(model(inputs), fused(inputs), dim=-1).min())


def test_fused_variant_has_attention_kernels_and_matches_torch_at_another_batch(tmp_path):
    torch.manual_seed(0)
    model = TinyBert().eval()
    fused = fused_onnx_variant(model, _inputs(4), tmp_path)
    assert attention_dims(model) == (4, 32)
    assert fused.exporter == "torchscript"
    assert fused.fused_ops["Attention"] == 2 and fused.fused_ops["SkipLayerNormalization"] == 4
    assert fused.fused_ops["EmbedLayerNormalization"] == 1
    assert _min_cosine(model, fused, _inputs(7)) >= 0.9999  # fp32 tolerance; any batch size
    assert model.bert.config._attn_implementation != "eager"  # switched for the export only, then back
    assert fused.size_bytes() == (tmp_path / "model.fused.onnx").stat().st_size


@pytest.mark.slow  # a dynamo export: ~7 s
def test_fusing_a_dynamo_export_fuses_layer_norms_and_counts_them(tmp_path):
    torch.manual_seed(0)
    model = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True, dropout=0.0), 2).eval()
    x = torch.randn(2, 8, 32)
    src = export_onnx(model, (x,), tmp_path / "enc.onnx", dynamic={"input": {0: "batch"}})
    dst = fuse_transformer_onnx(src, tmp_path / "enc.fused.onnx", num_heads=4, hidden_size=32)
    assert fused_ops(src) == {}  # a plain export holds standard ONNX ops only
    assert fused_ops(dst).get("SkipLayerNormalization", 0) >= 2  # residual add + layer norm, per layer


@pytest.mark.slow  # the pretrained MiniLM: ~10 s to export and fuse
def test_minilm_fuses_every_attention_layer(tmp_path):
    import deepseek as ds

    class Embed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = ds.models.build("minilm", num_classes=2)

        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return self.classifier.embed(inputs)

    model = Embed().eval()
    inputs = {"input_ids": torch.randint(1000, 20000, (4, 48)), "attention_mask": torch.ones(4, 48, dtype=torch.long)}
    inputs["attention_mask"][1, 30:] = 0
    fused = fused_onnx_variant(model, inputs, tmp_path)
    assert fused.fused_ops["Attention"] == 6 and fused.fused_ops["SkipLayerNormalization"] == 12
    assert _min_cosine(model, fused, inputs) >= 0.9999
