"""Registered metrics and losses.

A metric is any object with ``update(output, target)``, ``compute() -> float`` and ``reset()``.
If it also has a ``state`` tensor of sums, the Trainer all-reduces it across ranks before
``compute()``, so validation under DDP reports the metric of the whole validation set.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from annotated_types import Ge, Lt

from deepseek.registry import register_loss, register_metric

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class SumRatio:
    """Base for metrics of the form sum(numerator) / sum(denominator); ``state = [num, den]``."""

    def __init__(self) -> None:
        self.state = torch.zeros(2, dtype=torch.float64)

    def reset(self) -> None:
        self.state.zero_()

    def compute(self) -> float:
        num, den = self.state.tolist()
        return num / den if den else float("nan")


@register_metric("accuracy", aliases=("acc",))
class Accuracy(SumRatio):
    """Top-k classification accuracy from logits ``(N, C)`` and integer targets ``(N,)``."""

    name = "accuracy"

    def __init__(self, top_k: int = 1) -> None:
        super().__init__()
        self.top_k = top_k

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        if self.top_k == 1:
            correct = (output.argmax(dim=-1) == target).sum()
        else:
            top = output.topk(self.top_k, dim=-1).indices
            correct = (top == target.unsqueeze(-1)).any(dim=-1).sum()
        self.state += torch.stack([correct.double().cpu(), torch.tensor(float(target.numel()), dtype=torch.float64)])


@register_metric("mae")
class MeanAbsoluteError(SumRatio):
    """Mean absolute error between outputs and targets of the same shape."""

    name = "mae"

    @torch.no_grad()
    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        err = (output.float() - target.float()).abs()
        self.state += torch.stack([err.sum().double().cpu(), torch.tensor(float(err.numel()), dtype=torch.float64)])


# Losses are plain functions, not nn.Module instances: a module call costs ~5 us more per step.
@register_loss("cross_entropy")
def cross_entropy(label_smoothing: Annotated[float, Ge(0), Lt(1)] = 0.0) -> LossFn:
    """Softmax cross-entropy on logits (N, C) and class indices (N,)."""
    return functools.partial(F.cross_entropy, label_smoothing=label_smoothing) if label_smoothing else F.cross_entropy


@register_loss("mse")
def mse() -> LossFn:
    """Mean squared error."""
    return F.mse_loss


@register_loss("l1")
def l1() -> LossFn:
    """Mean absolute error."""
    return F.l1_loss


def batch_size_of(batch: Any) -> int:
    """Number of samples in a batch: dim 0 of its first tensor (tuple, list, dict or tensor)."""
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, (tuple, list)):
        for item in batch:
            if isinstance(item, torch.Tensor):
                return item.shape[0]
            if isinstance(item, (tuple, list, dict)):
                return batch_size_of(item)
    if isinstance(batch, dict):
        for item in batch.values():
            return batch_size_of(item)
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}: it holds no tensor")
