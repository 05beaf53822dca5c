"""Scatter operations over segments of rows (the edges into one node, the nodes of one graph), as graph
attention and attention pooling need them. Both run in float32 whatever the input dtype: the scatter
buffers must match their source's dtype, and bf16/fp16 exp-sums over many rows lose precision; callers
cast the result back to their activations' dtype before their next layer."""

from __future__ import annotations

import torch


def segment_softmax(scores: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Softmax of ``scores (E, *)`` over the rows that share a ``segment (E,)`` id (int64 in
    ``[0, num_segments)``), stabilised by each segment's maximum -> float32 ``(E, *)``."""
    scores = scores.float()
    index = segment.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    peak = torch.full((num_segments, *scores.shape[1:]), float("-inf"), device=scores.device)
    peak = peak.scatter_reduce(0, index, scores, "amax")
    weight = (scores - peak[segment]).exp()
    total = segment_sum(weight, segment, num_segments)
    return weight / total[segment].clamp_min(1e-12)


def segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of the rows of ``values (E, *)`` per ``segment (E,)`` id -> float32 ``(num_segments, *)``;
    a segment with no rows sums to 0."""
    values = values.float()
    out = torch.zeros((num_segments, *values.shape[1:]), device=values.device)
    return out.index_add_(0, segment, values)
