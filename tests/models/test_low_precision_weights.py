"""Models whose WEIGHTS are bf16/fp16 (``model.to(dtype)``, as the compress fp16/bf16 levels make them)
run forward: float32 internals (scatter buffers, softmax) are cast back before the next layer."""

from __future__ import annotations

import copy

import pytest
import torch

import deepseek as ds
from deepseek.data.graph import Graph, collate_graphs


def two_graphs(in_features: int) -> Graph:
    g = torch.Generator().manual_seed(0)
    return collate_graphs([
        Graph(torch.randn(4, in_features, generator=g), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 0]])),
        Graph(torch.randn(3, in_features, generator=g), torch.tensor([[0, 1], [1, 2]])),
    ])  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_graph_transformer_with_low_precision_weights_runs_forward(dtype):
    torch.manual_seed(0)
    model = ds.models.build("graph_transformer", in_features=8, dim=16, depth=2, heads=2, num_classes=3).eval()
    graph = two_graphs(8)
    with torch.no_grad():
        expected = model(graph)
        low = copy.deepcopy(model).to(dtype)(graph.replace(x=graph.x.to(dtype)))
    assert low.shape == (2, 3) and low.dtype == dtype
    torch.testing.assert_close(low.float(), expected, rtol=0.05, atol=0.05)
