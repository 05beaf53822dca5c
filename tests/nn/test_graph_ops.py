"""Segment softmax and sum: per-segment results equal torch.softmax / sum over each segment's rows."""

from __future__ import annotations

import torch

from deepseek.nn.graph_ops import segment_softmax, segment_sum


def test_segment_softmax_and_sum_match_each_segment_alone():
    gen = torch.Generator().manual_seed(0)
    scores = torch.randn(7, 2, generator=gen) * 30  # large scores: the per-segment maximum keeps exp finite
    segment = torch.tensor([2, 0, 2, 2, 0, 3, 3])  # segment 1 has no rows
    weight = segment_softmax(scores.to(torch.bfloat16), segment, 4)
    assert weight.dtype == torch.float32 and weight.shape == (7, 2)
    for s in (0, 2, 3):
        rows = segment == s
        torch.testing.assert_close(weight[rows], scores[rows].to(torch.bfloat16).float().softmax(0))
    sums = segment_sum(weight, segment, 4)
    torch.testing.assert_close(sums, torch.tensor([[1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]]))
