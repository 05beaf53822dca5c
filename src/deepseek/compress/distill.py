"""Knowledge distillation: a student learns from a frozen teacher's soft labels (and features).

::

    distiller = Distiller(teacher, student, temperature=4.0, alpha=0.7,
                          feature_pairs=[("features.3", "layer2")])
    ds.Trainer(student, optimizer, step_fn=distiller.step).fit(train, val)

The loss per batch (Hinton et al., 2015), with ``T`` the temperature:
``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(student, y)``
plus ``feature_weight * MSE(student feature, teacher feature)`` summed over ``feature_pairs``
(``(student module name, teacher module name)``; their outputs must have the same shape). ``T^2``
keeps the soft term's gradients on the scale of the hard term's as ``T`` changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F


class Distiller:
    """Holds the frozen teacher; ``step(student, batch) -> (loss, student logits, targets)`` is a Trainer ``step_fn``."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        temperature: float = 4.0,
        alpha: float = 0.7,
        feature_pairs: Sequence[tuple[str, str]] | None = None,
        feature_weight: float = 1.0,
    ) -> None:
        if temperature <= 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"need temperature > 0 and 0 <= alpha <= 1; got {temperature}, {alpha}")
        self.teacher, self.student = teacher.eval().requires_grad_(False), student
        self.temperature, self.alpha, self.feature_weight = temperature, alpha, feature_weight
        self.pairs = list(feature_pairs or [])
        self._features: dict[str, torch.Tensor] = {}
        for s_name, t_name in self.pairs:
            student.get_submodule(s_name).register_forward_hook(self._keep(f"s:{s_name}"))
            teacher.get_submodule(t_name).register_forward_hook(self._keep(f"t:{t_name}"))

    def _keep(self, key: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._features[key] = output[0] if isinstance(output, tuple) else output

        return hook

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The distillation loss of one batch (features, if any, from the last forward passes)."""
        t = self.temperature
        soft = F.kl_div(
            F.log_softmax(student_logits.float() / t, dim=-1),
            F.log_softmax(teacher_logits.float() / t, dim=-1),
            log_target=True,
            reduction="batchmean",
        )
        loss = self.alpha * t * t * soft + (1 - self.alpha) * F.cross_entropy(student_logits.float(), targets)
        for s_name, t_name in self.pairs:
            s_feat, t_feat = self._features[f"s:{s_name}"], self._features[f"t:{t_name}"]
            if s_feat.shape != t_feat.shape:
                raise ValueError(
                    f"feature pair ({s_name!r}, {t_name!r}): shapes {tuple(s_feat.shape)} and {tuple(t_feat.shape)} "
                    "differ; pick layers of the same shape or add a projection to the student"
                )
            loss = loss + self.feature_weight * F.mse_loss(s_feat.float(), t_feat.float())
        return loss

    def step(self, student: nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        inputs, targets = batch
        device = next(student.parameters()).device
        if next(self.teacher.parameters()).device != device:
            self.teacher.to(device)
        with torch.no_grad():
            teacher_logits = self.teacher(inputs)
        student_logits = student(inputs)
        return self.loss(student_logits, teacher_logits, targets), student_logits, targets
