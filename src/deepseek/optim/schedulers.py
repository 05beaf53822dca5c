"""LR schedules that torch lacks in one piece.

:class:`WarmupCosine` is written here rather than chained from ``LinearLR`` + ``CosineAnnealingLR``
with ``SequentialLR``: that chain calls ``step(epoch)`` internally at the milestone (deprecated,
warns) and its LR is a product of two recurrences, so a resumed run can drift from an
uninterrupted one. This one is a closed form of the step count, hence exact after resume.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


class WarmupCosine(LRScheduler):
    """Linear warm-up from ``warmup_start_factor * base_lr`` to ``base_lr`` over ``warmup_steps``,
    then cosine decay to ``min_lr_ratio * base_lr`` at ``total_steps``; constant after that.

    Step it once per optimizer step.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        total_steps: int,
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.0,
        warmup_start_factor: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.min_lr_ratio = min_lr_ratio
        self.warmup_start_factor = warmup_start_factor
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The LR multiplier after ``step`` optimizer steps."""
        if step < self.warmup_steps:
            start = self.warmup_start_factor
            return start + (1.0 - start) * step / self.warmup_steps
        decay_steps = self.total_steps - self.warmup_steps
        if decay_steps == 0:
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * cosine

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]
