"""What the Trainer logs each logging step and returns at the end (kept out of ``trainer.py``)."""

from __future__ import annotations

import time
from typing import Any

from deepseek.jit_compile import jit_report
from deepseek.train.batching import mean_loss


def _scaled(trainer: Any) -> bool:
    """A loss scale is in play: fp16 autocast's GradScaler, or an optimizer that scales itself."""
    return trainer.policy.scaler is not None or hasattr(trainer.optimizer, "step_was_skipped")


def step_values(trainer: Any, now: float) -> dict[str, float]:
    """``train/loss``, ``lr``, ``samples_per_s`` and, where they apply, grad norm, loss scale,
    skipped steps and progressive precision's low-precision share and promotion counts."""
    values = {
        "train/loss": mean_loss(trainer._losses),
        "lr": float(trainer.optimizer.param_groups[0]["lr"]),
        "samples_per_s": trainer._samples / max(now - trainer._t_log, 1e-9),
    }
    if trainer.grad_clip_norm is not None:
        values["grad_norm"] = float(trainer._step.grad_norm)
    if trainer.policy.scaler is not None:
        values["loss_scale"] = float(trainer.policy.scaler.get_scale())
    if _scaled(trainer):
        values["skipped_steps"] = float(trainer._step.skipped_steps)
    if hasattr(trainer.policy, "metrics"):
        values.update(trainer.policy.metrics())
    if hasattr(trainer.strategy, "comm_metrics"):  # DDP: gradient communication per step and its share
        values.update(trainer.strategy.comm_metrics(len(trainer._losses), now - trainer._t_log))
    return values


def log_precision_events(trainer: Any) -> None:
    """Progressive precision promoted or demoted a module on this step: say so and log the metrics now."""
    for e in trainer._step.events:
        where = e["module"] or "model"
        trainer.logger.message(f"step {trainer.global_step}: {e['action']} {where} to {e['to']}: {e['reason']}")
    trainer.logger.log_step(trainer.global_step, trainer.epoch, trainer.policy.metrics())


def run_summary(trainer: Any) -> dict[str, Any]:
    now = time.monotonic()
    t = trainer
    stop_reason = t.stop_reason or (
        f"max_steps={t.max_steps}"
        if t.max_steps is not None and t.global_step >= t.max_steps
        else f"max_epochs={t.max_epochs}"
    )
    return {
        "val": {k.removeprefix("val/"): v for k, v in t.last_val_metrics.items()},
        "steps": t.global_step,
        "epochs": t.epoch,
        "wall_s": round(t._wall_before + now - t._t_start, 3),
        "samples_per_s": round(t._samples_total / max(now - t._t_start, 1e-9), 1),
        "precision": t.policy.precision,
        **({"skipped_steps": t._step.skipped_steps} if _scaled(t) else {}),
        **({"fp32_modules": t.policy.promoted} if hasattr(t.policy, "promoted") else {}),
        **({"compile": jit_report(t.model)} if t._jitted else {}),
        "device": str(t.device),
        "world_size": t.dist.world_size,
        "strategy": {"name": type(t.strategy).__name__.lower(),  # and what a sharding strategy was set to
                     **{k: getattr(t.strategy, k) for k in ("zero_stage", "meta_init") if hasattr(t.strategy, k)}},
        "best": {"monitor": t.best.monitor, "value": t.best.best, "checkpoint": t.best_checkpoint},
        "stop_reason": stop_reason,
    }
