"""The Trainer's validation side: ``validate()``, the evaluation step, and tracking the best monitored value.

Kept apart from ``trainer.py`` so that the training loop stays short; :class:`~deepseek.train.trainer.Trainer`
is the only class that mixes this in, and it provides every attribute used here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn as nn

from deepseek.amp.policy import PrecisionPolicy
from deepseek.train.batching import split_batch
from deepseek.train.distributed import DistInfo
from deepseek.train.evaluate import evaluate


class TrainerValidation:
    """``validate`` of a Trainer, and the per-validation bookkeeping its loop does (logging, callbacks, best)."""

    def _validate_and_track(self, val_data: Iterable[Any]) -> bool:
        """Validate, log, tell the callbacks; whether the monitored value beat the best so far (save it then)."""
        metrics = self.validate(val_data)
        self._last_val_step = self.global_step
        if self.logger:
            self.logger.log_validation(self.global_step, self.epoch, metrics)
        self.callbacks("on_validation_end", self, metrics)
        if not self.save_best or self.best.monitor not in metrics:
            return False
        return self.best.improved(metrics[self.best.monitor])

    def validate(self, val_data: Iterable[Any]) -> dict[str, float]:
        """``val/loss`` and ``val/<metric>`` over ``val_data`` (EMA weights when EMA is on), over all ranks."""
        info: DistInfo = getattr(self, "dist", DistInfo())
        if info.enabled and not torch.distributed.is_initialized():
            raise RuntimeError(
                f"validate() over {info.world_size} ranks needs a process group: fit() left the one it created; "
                "create it yourself (torch.distributed.init_process_group) before fit() to keep it afterwards"
            )
        ema = getattr(self, "ema", None)
        if ema is not None:  # the average swapped into the model's own (maybe sharded) weights meanwhile
            with ema.swapped_in():
                self.ema = None
                try:
                    return self.validate(val_data)
                finally:
                    self.ema = ema
        if self.__dict__.get("_strategy_set_up"):  # during fit()
            model = self.strategy.eval_module(self.model, self.train_model)
        else:
            model = self.model
        policy = getattr(self, "policy", None)
        if policy is None:  # before fit(); progressive precision has promoted nothing yet, so fp32
            precision = "fp32" if self.precision_arg == "progressive" else self.precision_arg
            policy = PrecisionPolicy.create(precision, self.device)
        self.last_val_metrics = evaluate(
            model,
            val_data,
            self._eval_step,
            self.metrics,
            device=self.device,
            autocast=policy.autocast,
            dist=info,
        )
        return self.last_val_metrics

    def _eval_step(self, model: nn.Module, batch: Any) -> tuple[torch.Tensor, Any, Any]:
        """``(loss, outputs, targets)`` of one validation batch; outputs and targets are None when a
        ``step_fn`` returns the loss alone."""
        if self.step_fn is not None:
            out = self.step_fn(model, batch)
            return (out[0], out[1], out[2]) if isinstance(out, tuple) else (out, None, None)
        inputs, targets = split_batch(batch)
        outputs = model(inputs)
        return self.loss_fn(outputs, targets), outputs, targets
