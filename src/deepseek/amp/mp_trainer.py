"""``MixedPrecisionTrainer`` (document 003): a small step-wise fp16 trainer with adaptive clipping.

::

    trainer = MixedPrecisionTrainer(model, optimizer=AdamW(model.parameters(), lr=5e-4),
                                    scaler=GradScaler(), fp16_enable=True)
    losses = trainer.fit(loader, epochs=3)      # or trainer.step(batch) in your own loop

- Dynamic loss scaling: ``deepseek.amp.GradScaler`` starting at 65536 (2**16), doubling after
  2000 overflow-free steps and halving (with the step skipped) on inf/NaN gradients.
- FP32 master weights: the model's parameters stay fp32 and are what the optimizer updates;
  autocast runs the forward in fp16 from them. (For parameters *stored* in fp16/bf16 with
  separate fp32 masters, use :class:`deepseek.amp.MixedPrecision` as the optimizer.)
- Adaptive gradient clipping (``clip="adaptive"``): unit-wise AGC as in NFNets (Brock et al.,
  2021). Each output unit's gradient is clipped to ``clip_factor`` times that unit's weight norm.
  Chosen over a running-percentile threshold because it needs no warm-up history or state to
  checkpoint, one exploding unit does not shrink every other gradient, and the threshold scales
  with the weights instead of a global norm. ``clip=1.0`` clips the global norm instead;
  ``clip=None`` turns clipping off.

For full runs (validation, checkpoints, logging, DDP) use ``ds.Trainer``; this class is the
document's minimal loop, and the optimizer, scaler and model stay plain torch objects.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn as nn

from deepseek.amp import GradScaler


def _unitwise_norm(x: torch.Tensor) -> torch.Tensor:
    """L2 norm per output unit (dim 0) for matrices and conv kernels; the whole norm for vectors/scalars."""
    if x.ndim <= 1:
        return x.norm()
    return x.norm(dim=tuple(range(1, x.ndim)), keepdim=True)


@torch.no_grad()
def adaptive_clip_grad_(parameters: Iterable[torch.Tensor], clip_factor: float = 0.01, eps: float = 1e-3) -> int:
    """Unit-wise adaptive gradient clipping (NFNets), in place; returns how many units were clipped.

    A unit's gradient ``g`` is rescaled to ``clip_factor * max(|w|, eps) / |g| * g`` when
    ``|g| / max(|w|, eps) > clip_factor``. ``eps`` keeps freshly zero-initialised weights trainable.
    """
    clipped: int | torch.Tensor = 0
    for p in parameters:
        if p.grad is None:
            continue
        max_norm = _unitwise_norm(p.detach().float()).clamp(min=eps) * clip_factor
        g_norm = _unitwise_norm(p.grad.detach().float())
        over = g_norm > max_norm
        factor = torch.where(over, max_norm / g_norm.clamp(min=1e-6), torch.ones_like(g_norm))
        p.grad.mul_(factor.to(p.grad.dtype))
        clipped = clipped + over.sum()
    return int(clipped)  # one device sync for all parameters


class MixedPrecisionTrainer:
    """``step(batch, loss_fn=None) -> loss`` and ``fit(loader, epochs=1) -> losses``; see the module docstring.

    Batches are ``(inputs, targets)``; ``loss_fn(outputs, targets)`` defaults to cross-entropy.
    ``skipped_steps`` counts steps skipped for inf/NaN gradients, ``clipped_units`` the units AGC
    clipped on the last step.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scaler: torch.amp.GradScaler | None = None,
        fp16_enable: bool = True,
        clip: str | float | None = "adaptive",
        *,
        clip_factor: float = 0.01,
        loss_fn: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        if not (clip is None or clip == "adaptive" or (isinstance(clip, (int, float)) and clip > 0)):
            raise ValueError(f"clip must be 'adaptive', a positive max norm or None; got {clip!r}")
        param = next(model.parameters())
        self.device = param.device
        self.model = model
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=5e-4)
        self.fp16_enable = fp16_enable
        self.scaler = scaler or GradScaler(init_scale=2.0**16, growth_factor=2.0, device=self.device.type)
        if not fp16_enable:  # fp32 needs no loss scale
            self.scaler = GradScaler(enabled=False, device=self.device.type)
        self.clip, self.clip_factor = clip, clip_factor
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.steps = self.skipped_steps = self.clipped_units = 0

    def step(self, batch: Any, loss_fn: Callable[..., torch.Tensor] | None = None) -> float:
        """One optimizer step on ``batch``; returns the (unscaled) loss."""
        inputs, targets = (t.to(self.device, non_blocking=True) for t in batch)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.fp16_enable):
            loss = (loss_fn or self.loss_fn)(self.model(inputs), targets)
        self.scaler.scale(loss).backward()
        if self.clip is not None:
            self.scaler.unscale_(self.optimizer)
            if self.clip == "adaptive":
                self.clipped_units = adaptive_clip_grad_(self.model.parameters(), self.clip_factor)
            else:
                nn.utils.clip_grad_norm_(self.model.parameters(), float(self.clip))
        self.scaler.step(self.optimizer)
        if self.scaler.is_enabled():  # the scaler's own inf check, already on the host after step()
            self.skipped_steps += any(v.item() for v in self.scaler._found_inf_per_device(self.optimizer).values())
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        return float(loss.detach())

    def fit(
        self,
        loader: Iterable[Any],
        epochs: int = 1,
        loss_fn: Callable[..., torch.Tensor] | None = None,
        max_steps: int | None = None,
    ) -> list[float]:
        """Train for ``epochs`` passes over ``loader`` (or ``max_steps`` steps); returns every step's loss."""
        losses: list[float] = []
        for _ in range(epochs):
            for batch in loader:
                losses.append(self.step(batch, loss_fn))
                if max_steps is not None and len(losses) >= max_steps:
                    return losses
        return losses
