"""Registered validation metrics for sequence, speech and segmentation tasks.

Each keeps ``state = [numerator, denominator]`` sums (see :class:`deepseek.train.metrics.SumRatio`),
so validation under DDP reports the metric of the whole validation set.
"""

from __future__ import annotations

from typing import Any

import torch

from deepseek.registry import register_metric
from deepseek.train.losses import IGNORE_INDEX, ctc_targets
from deepseek.train.metrics import SumRatio


@register_metric("token_accuracy")
class TokenAccuracy(SumRatio):
    """Accuracy over target positions that are not ``ignore_index``; logits carry classes on ``class_dim``.

    Language models and seq2seq: logits (N, L, V), targets (N, L) (``class_dim=-1``).
    """

    name = "token_accuracy"

    def __init__(self, ignore_index: int = IGNORE_INDEX, class_dim: int = -1) -> None:
        super().__init__()
        self.ignore_index, self.class_dim = ignore_index, class_dim

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        real = target != self.ignore_index
        correct = ((output.argmax(dim=self.class_dim) == target) & real).sum()
        self.state += torch.stack([correct.double().cpu(), real.sum().double().cpu()])


@register_metric("pixel_accuracy")
def pixel_accuracy(ignore_index: int = IGNORE_INDEX) -> TokenAccuracy:
    """Segmentation accuracy over labelled pixels: logits (N, C, H, W), class ids (N, H, W)."""
    metric = TokenAccuracy(ignore_index, class_dim=1)
    metric.name = "pixel_accuracy"
    return metric


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance (substitutions, insertions, deletions) between two id sequences."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def ctc_greedy_decode(log_probs: torch.Tensor, blank: int = -1) -> list[list[int]]:
    """Best path per sample of (N, T, C) scores: argmax per frame, repeats merged, blanks dropped."""
    best = log_probs.argmax(-1).cpu()
    blank = blank % log_probs.shape[-1]
    out = []
    for path in best.tolist():
        merged = [c for t, c in enumerate(path) if t == 0 or c != path[t - 1]]
        out.append([c for c in merged if c != blank])
    return out


@register_metric("char_error_rate", aliases=("cer",))
class CharErrorRate(SumRatio):
    """Edit distance of the greedy CTC transcript to the target over the target length (lower is better).

    Outputs: per-frame scores (N, T, C); targets: ``(labels (N, S), lengths (N,))`` or negative-padded labels.
    """

    name = "char_error_rate"

    def __init__(self, blank: int = -1) -> None:
        super().__init__()
        self.blank = blank

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: Any) -> None:
        labels, lengths = ctc_targets(target)
        edits = 0
        for hyp, ref, n in zip(ctc_greedy_decode(output, self.blank), labels.tolist(), lengths.tolist()):
            edits += edit_distance(hyp, ref[:n])
        self.state += torch.tensor([float(edits), float(lengths.sum())], dtype=torch.float64)
