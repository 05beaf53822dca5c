"""Config -> a ready :class:`Run`: the builders of :mod:`deepseek.train.assemble` plus the :class:`Trainer`.

This module sits above both the builders and the Trainer (``build -> trainer -> assemble``, no cycle);
the builders, and what reads trained weights back (:mod:`deepseek.runs`), are re-exported here under the
names callers already use.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn
from torch.utils.data import DataLoader

from deepseek.config import Config, ConfigError
from deepseek.data.datasets import DatasetSplits
from deepseek.runs import TrainedWeights, build_model, find_trained_weights, load_trained_weights
from deepseek.train.assemble import Assembled, assemble, build_loaders, save_resolved_config
from deepseek.train.trainer import Trainer

__all__ = ["Assembled", "Run", "TrainedWeights", "assemble", "build_loaders", "build_model", "build_run",
           "evaluate", "find_trained_weights", "load_trained_weights", "save_resolved_config",
           "trainer_from_config"]  # fmt: skip


@dataclass
class Run:
    """Everything a config builds; ``trainer.fit(train_loader, val_loader)`` runs it."""

    config: Config
    trainer: Trainer
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    splits: DatasetSplits | None = None  # the datasets the loaders read (one sample describes the inputs)


def build_run(
    cfg: Config, run_dir: str | Path | None = None, *, progress: str | None = None, save_config: bool = True
) -> Run:
    """Seed, then build model, data, optimizer, scheduler, loss, metrics, callbacks and the Trainer;
    with a ``run_dir`` and ``save_config``, write the resolved config to ``run_dir/config.yaml``."""
    parts = assemble(cfg, run_dir, progress=progress, save_config=save_config)
    trainer = parts.make_trainer(Trainer)
    return Run(cfg, trainer, parts.model, parts.train_loader, parts.val_loader, parts.splits)


def trainer_from_config(
    config: Config | str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None
) -> Trainer:
    """``ds.Trainer.from_config``: a Trainer whose ``fit()`` needs no arguments."""
    return Trainer.from_config(config, overrides, run_dir)


def evaluate(cfg: Config, checkpoint: str | Path | TrainedWeights) -> dict[str, float]:
    """Validation loss and metrics of a checkpoint (EMA weights when it has them), a run's ``final/``
    directory or a ``.safetensors`` file (see :func:`find_trained_weights` for which one it picks)."""
    run = build_run(cfg, None, progress="off")
    if run.val_loader is None:
        raise ConfigError([f"data: dataset '{cfg.data.name}' has no validation split (is data.val_fraction 0?)"])
    load_trained_weights(run.model, checkpoint)
    run.model.to(run.trainer.device)
    return run.trainer.validate(run.val_loader)
