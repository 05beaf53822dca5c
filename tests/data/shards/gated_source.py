"""A dataset builder for the kill -9 test of ``deepseek data shard``: with ``DS_SHARD_GATE`` naming a FIFO,
reading sample ``GATE_INDEX`` blocks on that FIFO, so the test knows exactly where the writer stands (shards
before the gate finished, the gate's shard partial) and kills it there; without the variable it never blocks."""

from __future__ import annotations

import os

import torch
from torch.utils.data import Dataset

from deepseek.data.datasets import DatasetSplits

GATE_ENV = "DS_SHARD_GATE"
SAMPLES, GATE_INDEX = 400, 24  # 512-byte shards hold 7 samples: the gate is in shard 3, after the probed 16


class GatedSamples(Dataset):
    """``(features (16,) float32, label)`` from a fixed seed; sample GATE_INDEX waits on the gate FIFO."""

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        gate = os.environ.get(GATE_ENV)
        if gate and i == GATE_INDEX:
            with open(gate, "rb") as fifo:  # blocks until the test opens the FIFO for writing
                fifo.read()  # then until it closes it; the test kills this process first
        return torch.randn(16, generator=torch.Generator().manual_seed(i)), i % 5


def gated() -> DatasetSplits:
    return DatasetSplits(GatedSamples(), None, 5, (16,), {})
