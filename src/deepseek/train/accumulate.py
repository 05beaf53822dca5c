"""Exact gradient accumulation for hand-written training loops (document 004's ``GradientAccumulator``).

Each micro-batch's mean loss is back-propagated weighted by its sample count and the summed gradients
are divided by the window's sample count (over all ranks) just before the optimizer steps, so the
update equals that of one big batch -- also when the last micro-batch is short, which a plain
``loss / accum_steps`` gets wrong. Under DDP the gradient all-reduce runs on the window's last
micro-step only: the others run inside the model's ``no_sync()``::

    accumulator = ds.GradientAccumulator(accum_steps=4)
    for i, (x, y) in enumerate(loader):
        with accumulator.accumulate(model, final=i == len(loader) - 1):
            accumulator.backward(loss_fn(model(x), y), batch_size=len(y))
        accumulator.step(model, optimizer)  # steps and zeroes the gradients once the window is full
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn as nn


class GradientAccumulator:
    """Accumulates ``accum_steps`` micro-batches per optimizer step (fewer when a micro-step is ``final``)."""

    def __init__(self, accum_steps: int) -> None:
        if not isinstance(accum_steps, int) or isinstance(accum_steps, bool) or accum_steps < 1:
            raise ValueError(f"accum_steps: {accum_steps!r} is not allowed; it must be an integer >= 1")
        self.accum_steps = accum_steps
        self.micro_steps = 0  # micro-batches back-propagated in the current window
        self.samples = 0  # their samples on this rank
        self._closing = False  # the window ends with the micro-step now running

    def _closes_window(self, final: bool) -> bool:
        return final or self.micro_steps + 1 >= self.accum_steps

    @contextlib.contextmanager
    def accumulate(self, model: nn.Module, *, final: bool = False) -> Iterator[None]:
        """Run one micro-step's forward and backward in here. Except on the window's last micro-step
        (the ``accum_steps``-th, or one marked ``final``: the end of the data), the model's sync
        context (DDP's ``no_sync``) is entered, so gradients are all-reduced once per window."""
        self._closing = self._closes_window(final)
        no_sync = getattr(model, "no_sync", None)
        with contextlib.nullcontext() if self._closing or no_sync is None else no_sync():
            yield

    def backward(self, loss: torch.Tensor, batch_size: int) -> None:
        """Back-propagate a micro-batch's mean ``loss`` (a scalar) over its ``batch_size`` samples."""
        if loss.dim() != 0:
            raise ValueError(f"loss: expected a scalar (the micro-batch mean), got shape {tuple(loss.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} is not allowed; it must be >= 1")
        (loss * batch_size).backward()  # a sum over samples; step() divides by the window's count
        self.micro_steps += 1
        self.samples += batch_size
        self._closing = self._closing or self.micro_steps >= self.accum_steps

    def step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
        """Step ``optimizer`` and zero the gradients if the window is complete; returns whether it stepped."""
        if not self._closing or self.micro_steps == 0:
            return False
        params = [p for p in model.parameters() if p.grad is not None]
        total, world = float(self.samples), 1
        if hasattr(model, "no_sync") and dist.is_available() and dist.is_initialized():
            # DDP averaged the per-rank sums over `world` ranks: divide by the mean count per rank
            device = params[0].device if params else torch.device("cpu")
            count = torch.tensor([total], dtype=torch.float64, device=device)
            dist.all_reduce(count)
            total, world = count.item(), dist.get_world_size()
        for p in params:
            p.grad.mul_(world / total)
        optimizer.step()
        optimizer.zero_grad()
        self.micro_steps, self.samples, self._closing = 0, 0, False
        return True
