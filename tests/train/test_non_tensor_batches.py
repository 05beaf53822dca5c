"""Outputs and batches that are not one tensor: a VAE's ``(recon, mu, logvar)`` in validation, graph batches."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from deepseek.data.graph import Graph, collate_graphs
from deepseek.train.batching import move_to
from deepseek.train.evaluate import evaluate


class TupleOut(nn.Module):
    """``x (N, 4) -> (x @ W (N, 4), mean (N,))``: a model whose output is a tuple, like the VAE."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.lin(x)
        return y.to(torch.bfloat16), y.mean(-1).to(torch.bfloat16)


class Recorder:
    name = "seen"

    def __init__(self) -> None:
        self.outputs: list = []

    def reset(self) -> None:
        self.outputs.clear()

    def update(self, output, target) -> None:
        self.outputs.append(output)

    def compute(self) -> float:
        return float(len(self.outputs))


def test_validation_hands_tuple_outputs_to_metrics_as_float32():
    data = [(torch.randn(3, 4), torch.randn(3, 4)) for _ in range(2)]
    recorder = Recorder()
    step = lambda model, batch: (torch.tensor(0.5), model(batch[0]), batch[1])  # noqa: E731
    result = evaluate(TupleOut(), data, step, [recorder], device=torch.device("cpu"), autocast=contextlib.nullcontext)
    assert result["val/seen"] == 2.0 and result["val/loss"] == 0.5
    recon, mean = recorder.outputs[0]
    assert recon.dtype == mean.dtype == torch.float32 and recon.shape == (3, 4) and mean.shape == (3,)


def test_graph_batches_move_to_the_device_with_their_labels():
    g = Graph(torch.randn(3, 2), torch.tensor([[0, 1], [1, 2]]))
    batch = (collate_graphs([g, g]), torch.tensor([0, 1]))
    moved = move_to(batch, torch.device("meta"))
    assert moved[0].x.device.type == "meta" and moved[0].edge_index.device.type == "meta"
    assert moved[0].batch.device.type == "meta" and moved[1].device.type == "meta"
