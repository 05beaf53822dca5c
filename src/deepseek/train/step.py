"""One optimizer step over an accumulation window: the Trainer's hot path.

Gradient accumulation is exact: each micro-batch's mean loss is weighted by its share of the
samples in the whole window over all ranks, so 4 micro-batches of 8 give the gradients of one batch
of 32, also when the last micro-batch is short. Gradients sync on the final micro-step only: the
others run in the strategy's ``no_sync`` context (DDP's own). A window of one micro-batch on one process takes a lean
path: this is where framework overhead per step would show.

Non-finite losses: with ``on_nonfinite`` ``stop`` or ``skip`` every micro-batch's loss is checked, and a
window with a nan/inf loss on any rank (a flag all-reduced over the ranks, so all decide alike) does not
step the optimizer; the Trainer then stops or counts the skip. That check reads one flag per step from the
device (a sync on GPUs); ``ignore`` keeps the step sync-free. A forward overflow that progressive precision
answers by promoting a module is its normal start, not a failure: the loss scaler skips that step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn

from deepseek.amp.policy import PrecisionPolicy
from deepseek.train.batching import move_to, split_batch
from deepseek.train.distributed import DistInfo, all_reduce_sum
from deepseek.train.metrics import batch_size_of
from deepseek.train.strategy import SingleDevice

ON_NONFINITE = ("stop", "skip", "ignore")


class NonFiniteLossError(RuntimeError):
    """The loss became nan or inf and ``on_nonfinite`` is ``stop``; ``str()`` is one line."""


class OptimizerStep:
    """``step(window) -> (mean loss on this rank, sample count on this rank)``.

    The loss is a Python float on CPU and a detached device scalar elsewhere (no per-step sync).

    ``model`` is the bare module (clipping, EMA); ``train_model`` is what runs forward (what
    ``strategy.setup`` wrapped ``model`` in); ``strategy`` (default: single device) gives the
    no-sync context and gradient clipping. ``before_optimizer_step(optimizer)`` runs once per
    optimizer step, with the gradients unscaled and not yet clipped.
    """

    def __init__(
        self,
        model: nn.Module,
        train_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        loss_fn: Callable[..., torch.Tensor],
        step_fn: Callable[[nn.Module, Any], Any] | None,
        policy: PrecisionPolicy,
        dist: DistInfo,
        device: torch.device,
        grad_clip_norm: float | None = None,
        scheduler: Any = None,
        ema: Any = None,
        on_nonfinite: str = "stop",
        strategy: Any = None,
        before_optimizer_step: Callable[[torch.optim.Optimizer], None] | None = None,
    ) -> None:
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite: {on_nonfinite!r} is not allowed; use one of {', '.join(ON_NONFINITE)}")
        self.on_nonfinite = on_nonfinite
        self.nonfinite_loss: float | None = None  # the window's bad loss when the last call did not step
        self._bad_losses = torch.zeros(())  # nan/inf micro-batch losses of the window being accumulated
        self.model, self.train_model, self.optimizer = model, train_model, optimizer
        self.loss_fn, self.step_fn = loss_fn, step_fn
        self.policy, self.dist, self.device = policy, dist, device
        self.grad_clip_norm, self.scheduler, self.ema = grad_clip_norm, scheduler, ema
        # The callbacks' on_before_optimizer_step, or None when no callback has it (then it costs one test).
        self.before_optimizer_step = before_optimizer_step
        self._autocast, self._on_cpu, self._fp32 = policy.autocast, device.type == "cpu", policy.dtype is None
        # Modules that publish an auxiliary loss (ds.nn.MoE's load balancing) have it added to the loss.
        self._aux = [m for m in model.modules() if hasattr(m, "aux_loss")]
        self.grad_norm: torch.Tensor | None = None
        # Loss scaling: the precision policy's GradScaler, or an optimizer that scales itself
        # (deepseek.optim.MixedPrecision); progressive precision observes gradients before the step.
        scaler = policy.scaler
        self._scale_loss = scaler.scale if scaler is not None else getattr(optimizer, "scale_loss", None)
        self._observe = getattr(policy, "observe", None)
        # Looked up once, not per step: MixedPrecision clips its fp32 masters and reports its own skips.
        strategy = strategy if strategy is not None else SingleDevice()
        self._no_sync = strategy.no_sync
        self._loss_context = getattr(strategy, "loss_context", None) or contextlib.nullcontext  # loss_parallel
        self._clip = getattr(optimizer, "clip_grad_norm_", None) or (
            lambda max_norm: strategy.clip_grad_norm(model, max_norm)
        )
        self._reports_skips = hasattr(optimizer, "step_was_skipped")
        # A strategy whose schedule owns forward and backward (``pipeline``) runs the whole window itself.
        self._run_window = getattr(strategy, "run_window", None)
        if self._run_window is not None and hasattr(strategy, "check_step"):
            strategy.check_step(step_fn, model)
        self.events: list[dict[str, Any]] = []
        self.skipped_steps = 0
        self.nonfinite_steps = 0  # steps skipped for a nan/inf loss (on_nonfinite="skip")

    def __call__(self, window: list[Any]) -> tuple[float | torch.Tensor, int]:
        """Forward/backward every micro-batch of ``window``, then one optimizer step.

        Returns the window's mean loss on this rank and its sample count. When a loss was nan/inf and
        ``on_nonfinite`` is not ``ignore``, the optimizer does not step and ``nonfinite_loss`` holds the loss.
        """
        scaler = self.policy.scaler
        check = self.on_nonfinite != "ignore"
        self.nonfinite_loss = None
        if self._run_window is not None:  # the strategy's schedule: forward and backward of every batch
            with self._autocast():
                logged, local = self._run_window(window, self.loss_fn, self.device, self._scale_loss)
            self._bad_losses = (~torch.isfinite(logged)).float()
            logged = logged.item() if self._on_cpu else logged
            bad = check and self._any_rank_bad()
        elif len(window) == 1 and not self.dist.enabled:  # the common case, kept lean
            batch = window[0] if self._on_cpu else move_to(window[0], self.device)
            default = self.step_fn is None and type(batch) in (tuple, list) and len(batch) == 2 and not self._aux
            if default and self._fp32:  # even a null context costs ~4 us a step here
                loss = self.loss_fn(self.train_model(batch[0]), batch[1])
            else:
                with self._autocast():
                    loss = (
                        self.loss_fn(self.train_model(batch[0]), batch[1])
                        if default
                        else self.loss(self.train_model, batch)
                    )
            local = batch[0].shape[0] if default and isinstance(batch[0], torch.Tensor) else batch_size_of(batch)
            (self._scale_loss(loss) if self._scale_loss is not None else loss).backward()
            logged = loss.item() if self._on_cpu else loss.detach()  # .item() is free on CPU, a sync on GPUs
            bad = check and not (math.isfinite(logged) if self._on_cpu else bool(torch.isfinite(logged).item()))
        else:
            logged, local = self.accumulate(window, check=check)
            logged = logged.item() if self._on_cpu else logged
            bad = check and self._any_rank_bad()
        if self._observe is not None:
            self.events = self._observe()
        if bad and not any(e.get("action") == "promote" for e in self.events):
            self.nonfinite_loss = float(logged)
            self.optimizer.zero_grad(set_to_none=True)
            return logged, local
        if self.grad_clip_norm is not None or self.before_optimizer_step is not None:
            if scaler is not None:  # callbacks and clipping see true gradients (unscale_ runs once per step)
                scaler.unscale_(self.optimizer)
            if self.before_optimizer_step is not None:  # before clipping, as in Lightning
                self.before_optimizer_step(self.optimizer)
            if self.grad_clip_norm is not None:
                self.grad_norm = self._clip(self.grad_clip_norm)
        skipped = False
        if scaler is not None:
            scaler.step(self.optimizer)
            # Read the scaler's own inf check (torch's fused optimizers use this method too); it is
            # already on the host after step(), so this costs no extra device sync.
            skipped = any(v.item() for v in scaler._found_inf_per_device(self.optimizer).values())
            scaler.update()
        else:
            self.optimizer.step()
            skipped = self._reports_skips and self.optimizer.step_was_skipped
        if skipped:
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if skipped:  # like Accelerate: a skipped step does not advance the schedule or the EMA
            return logged, local
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        return logged, local

    def refuse_nonfinite(self, step: int, logger: Any = None) -> int:
        """After a call that did not step for a nan/inf loss: ``stop`` raises :class:`NonFiniteLossError` (before
        the Trainer saves anything, so earlier checkpoints stay as they are); ``skip`` counts the step and logs a
        warning through ``logger``. Returns the steps skipped so far."""
        loss = self.nonfinite_loss
        if self.on_nonfinite == "stop":
            raise NonFiniteLossError(
                f"training stopped: the loss is {loss} at step {step}; checkpoints saved before it are kept. "
                "Lower optim.lr (or clip gradients), or set train.on_nonfinite: skip to skip such steps"
            )
        self.nonfinite_steps += 1
        if logger is not None:
            logger.message(f"warning: the loss is {loss} at step {step}: skipped that optimizer step "
                           f"({self.nonfinite_steps} so far, train.on_nonfinite: skip)")  # fmt: skip
        return self.nonfinite_steps

    def accumulate(self, window: list[Any], check: bool = False) -> tuple[torch.Tensor, int]:
        """Backward over several micro-batches (and/or ranks), each loss weighted by its share of
        the window's samples over all ranks; gradients sync on the last micro-batch only. With
        ``check``, counts the micro-batches whose loss is nan/inf (see :meth:`_any_rank_bad`).

        The totals are summed over ALL ranks, so under tensor parallelism (``tp`` ranks reading one batch) both
        ``total`` and ``world`` count each sample ``tp`` times: the weights equal data parallelism's alone. Each
        loss and its backward run in the strategy's ``loss_context()`` (``loss_parallel``), when it has one."""
        sizes = [batch_size_of(b) for b in window]
        local = sum(sizes)
        total, world = float(local), self.dist.world_size
        if self.dist.enabled:
            total = all_reduce_sum(torch.tensor([total], dtype=torch.float64, device=self.device), self.dist).item()
        last = len(window) - 1
        logged = torch.zeros((), device=self.device)
        self._bad_losses = torch.zeros((), device=self.device)
        for i, batch in enumerate(window):
            if not self._on_cpu:
                batch = move_to(batch, self.device)
            sync = self._no_sync(self.train_model) if i < last else contextlib.nullcontext()
            with sync, self._loss_context():
                with self._autocast():
                    loss = self.loss(self.train_model, batch)
                weight = sizes[i] * world / total
                # An empty batch (a rank's share of an uneven epoch end) still runs backward so that DDP's
                # collectives match the other ranks'; its mean loss is 0/0 = nan, weighted by 0 its gradients are 0.
                scaled = loss if weight == 1.0 else (loss.nan_to_num() if sizes[i] == 0 else loss) * weight
                (self._scale_loss(scaled) if self._scale_loss is not None else scaled).backward()
            if sizes[i] == 0:  # adds nothing to the logged loss, and its nan is not a nan/inf step
                continue
            loss = loss.detach()
            if hasattr(loss, "full_tensor"):  # a DTensor (loss_parallel): its value, replicated on the tp ranks
                loss = loss.full_tensor()
            logged += loss.float() * (sizes[i] / local)
            if check:  # every micro-batch: a later one must not hide an earlier one (no sync here)
                self._bad_losses += ~torch.isfinite(loss).all()
        return logged, local

    def _any_rank_bad(self) -> bool:
        """Whether any rank's window had a nan/inf micro-batch loss; every rank gets the same answer (one
        all-reduce), so all of them skip or stop together and none waits in a collective for the others."""
        bad = self._bad_losses.reshape(1).float()
        return bool(all_reduce_sum(bad, self.dist).item())

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        if self.step_fn is not None:
            out = self.step_fn(model, batch)
            loss = out[0] if isinstance(out, tuple) else out
        else:
            inputs, targets = split_batch(batch)
            loss = self.loss_fn(model(inputs), targets)
        for m in self._aux:
            if isinstance(m.aux_loss, torch.Tensor):
                loss = loss + m.aux_loss
        return loss
