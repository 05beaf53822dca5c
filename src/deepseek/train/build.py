"""Config -> objects: plain builder functions that turn a validated :class:`Config` into a model,
loaders, optimizer, scheduler and a :class:`Trainer` (torchtune style: no object knows the config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader

from deepseek import registry as reg
from deepseek.config import Config, ConfigError, load_config
from deepseek.data import DistributedDataset, Pipeline, build_dataset
from deepseek.data.datasets import DatasetSplits
from deepseek.optim import build_optimizer, build_scheduler
from deepseek.train.callbacks import EarlyStopping
from deepseek.train.checkpoint import MODEL_FILE, STATE_FILE, load_weights, resolve_checkpoint, write_text_atomic
from deepseek.train.distributed import DistInfo, init_distributed, resolve_device
from deepseek.train.rng import seed_everything
from deepseek.train.sinks import sink_problems
from deepseek.train.strategy import build_strategy
from deepseek.train.trainer import Trainer


@dataclass
class Run:
    """Everything a config builds; ``trainer.fit(train_loader, val_loader)`` runs it."""

    config: Config
    trainer: Trainer
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    splits: DatasetSplits | None = None  # the datasets the loaders read (one sample describes the inputs)


def build_model(cfg: Config) -> nn.Module:
    return reg.models.build(cfg.model.name, **cfg.model.kwargs)


def build_loaders(
    cfg: Config, dist: DistInfo, splits: DatasetSplits | None = None
) -> tuple[DataLoader, DataLoader | None]:
    d = cfg.data
    splits = splits if splits is not None else build_dataset(d.name, **d.kwargs)
    common = dict(seed=cfg.train.seed, rank=dist.rank, world_size=dist.world_size, num_workers=d.num_workers)
    steps = [*d.preprocess, *d.transforms]
    augment = Pipeline(steps, seed=cfg.train.seed) if steps else None
    train = DistributedDataset(
        splits.train, d.batch_size, collate_fn=augment, shuffle=d.shuffle, drop_last=d.drop_last, **common
    )
    val = None
    if splits.val is not None:
        prep = Pipeline(d.preprocess, seed=cfg.train.seed) if d.preprocess else None
        val = DistributedDataset(
            splits.val, d.val_batch_size or d.batch_size, collate_fn=prep, shuffle=False, pad=False, **common
        )
    return train, val


def build_run(
    cfg: Config, run_dir: str | Path | None = None, *, progress: str | None = None, save_config: bool = True
) -> Run:
    """Seed, then build model, data, optimizer, scheduler, loss, metrics, callbacks and the Trainer;
    with a ``run_dir`` and ``save_config``, write the resolved config to ``run_dir/config.yaml``."""
    t = cfg.train
    seed_everything(t.seed, t.deterministic)
    device = resolve_device(t.device)  # auto/cuda -> cuda:<LOCAL_RANK>: under torchrun each rank its own GPU
    dist = init_distributed(device)
    model = build_model(cfg)
    if t.gradient_checkpointing:
        if not callable(getattr(model, "gradient_checkpointing_enable", None)):
            raise ConfigError([f"train.gradient_checkpointing: model '{cfg.model.name}' has no gradient_checkpointing_enable(); "
                               "wrap its blocks with ds.nn.checkpoint_modules in Python instead"])  # fmt: skip
        model.gradient_checkpointing_enable()
    splits = build_dataset(cfg.data.name, **cfg.data.kwargs)
    train_loader, val_loader = build_loaders(cfg, dist, splits)
    optimizer = build_optimizer(cfg.optim.name, model.parameters(), **cfg.optim.kwargs)
    scheduler = None
    if cfg.scheduler is not None:
        s = cfg.scheduler

        def scheduler(opt: torch.optim.Optimizer, total: int) -> Any:
            try:
                return build_scheduler(s.name, opt, total, **s.kwargs)
            except ValueError as err:  # e.g. a warm-up longer than a run shortened by an override
                raise ConfigError([f"scheduler ({s.name}): {err}"]) from err

    early = EarlyStopping(**t.early_stopping.model_dump()) if t.early_stopping is not None else None
    sinks = cfg.logging.sink_specs()
    if sinks is not None and (problems := sink_problems(sinks)):
        raise ConfigError(problems)
    trainer = Trainer(
        model,
        optimizer,
        loss_fn=reg.losses.build(t.loss.name, **t.loss.kwargs),
        scheduler=scheduler,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        precision=t.precision,
        compile=t.compile,
        accumulate_grad_batches=t.accumulate_grad_batches,
        grad_clip_norm=t.grad_clip_norm,
        ema_decay=t.ema_decay,
        val_every_steps=t.val_every_steps,
        val_every_epochs=t.val_every_epochs,
        early_stopping=early,
        metrics=[reg.metrics.build(m.name, **m.kwargs) for m in t.metrics],
        callbacks=[reg.callbacks.build(c.name, **c.kwargs) for c in cfg.callbacks],
        device=device,
        run_dir=run_dir,
        checkpoint_every_steps=cfg.checkpoint.every_steps,
        checkpoint_every_minutes=cfg.checkpoint.every_minutes,
        keep_last=cfg.checkpoint.keep_last,
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_best=cfg.checkpoint.save_best,
        log_every_steps=cfg.logging.every_steps,
        tensorboard=cfg.logging.tensorboard,
        sinks=None if sinks is None else [{"name": s.name, **s.kwargs} for s in sinks],
        progress=progress or cfg.logging.progress,
        on_nonfinite=t.on_nonfinite,
        strategy=_strategy(cfg, dist),
    )
    trainer.train_data, trainer.val_data = train_loader, val_loader
    if run_dir is not None and dist.is_main and save_config:
        save_resolved_config(cfg, run_dir)
    return Run(cfg, trainer, model, train_loader, val_loader, splits)


def _strategy(cfg: Config, dist: DistInfo) -> Any:
    """``train.strategy`` built now, so that a wrong name or argument stops the run before training starts."""
    try:
        return build_strategy(cfg.train.strategy, dist)
    except (reg.RegistryError, ValueError) as exc:
        raise ConfigError([str(exc)]) from None


def trainer_from_config(
    config: Config | str | Path, overrides: list[str] | None = None, run_dir: str | Path | None = None
) -> Trainer:
    """``ds.Trainer.from_config``: a Trainer whose ``fit()`` needs no arguments."""
    cfg = config if isinstance(config, Config) else load_config(config, overrides or [])
    return build_run(cfg, run_dir).trainer


def save_resolved_config(cfg: Config, run_dir: str | Path) -> Path:
    """Write the resolved config (defaults filled in) to ``run_dir/config.yaml``, atomically."""
    path = Path(run_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path


def evaluate(cfg: Config, checkpoint: str | Path | TrainedWeights) -> dict[str, float]:
    """Validation loss and metrics of a checkpoint (EMA weights when it has them), a run's ``final/``
    directory or a ``.safetensors`` file (see :func:`find_trained_weights` for which one it picks)."""
    run = build_run(cfg, None, progress="off")
    if run.val_loader is None:
        raise ConfigError([f"data: dataset '{cfg.data.name}' has no validation split (is data.val_fraction 0?)"])
    load_trained_weights(run.model, checkpoint)
    run.model.to(run.trainer.device)
    return run.trainer.validate(run.val_loader)


@dataclass(frozen=True)
class TrainedWeights:
    """Where trained weights come from: ``path`` is a weights file or a verified checkpoint directory;
    ``ema`` says whether they are the EMA average (None: a bare file does not say); ``description``
    is one line for the user."""

    path: Path
    ema: bool | None
    description: str


def find_trained_weights(checkpoint: str | Path) -> TrainedWeights:
    """Resolve a ``.safetensors`` file, a directory holding ``model.safetensors`` (a run's ``final/``),
    a checkpoint, a checkpoints directory or a run directory (its newest valid checkpoint)."""
    path = Path(checkpoint)
    if path.is_dir() and (path / MODEL_FILE).is_file() and not (path / STATE_FILE).is_file():
        path = path / MODEL_FILE  # final/: weights alone, no training state
    if path.is_file():
        if path.parent.name == "final":  # the Trainer writes the EMA average there when EMA is on
            ema = _run_used_ema(path.parent.parent / "config.yaml")
            note = {True: "EMA weights", False: "raw weights (the run had no EMA)"}.get(
                ema, "the EMA average if the run trained with train.ema_decay"
            )  # fmt: skip
            return TrainedWeights(path, ema, f"{path}: the run's final weights, {note}")
        return TrainedWeights(path, None, f"{path}: the weights in this file")
    ckpt = resolve_checkpoint(path)
    # mmap: only the keys are read here, not the optimizer state's tensors
    has_ema = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True, mmap=True).get("ema") is not None
    kind = "its EMA weights (from state.pt)" if has_ema else "its raw weights (the run had no EMA)"
    return TrainedWeights(ckpt, has_ema, f"checkpoint {ckpt}: {kind}")


def _run_used_ema(run_config: Path) -> bool | None:
    """Whether the run whose resolved ``config.yaml`` this is trained with EMA (None: no readable config)."""
    try:
        return yaml.safe_load(run_config.read_text())["train"].get("ema_decay") is not None
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return None


def load_trained_weights(model: nn.Module, checkpoint: str | Path | TrainedWeights) -> nn.Module:
    """Load trained weights into ``model``: a checkpoint's EMA weights when it has them, else its raw ones;
    a weights file, or the ``model.safetensors`` of a run's ``final/`` directory, as stored."""
    found = checkpoint if isinstance(checkpoint, TrainedWeights) else find_trained_weights(checkpoint)
    if found.path.is_file():
        load_weights(model, found.path)
        return model
    load_weights(model, found.path / MODEL_FILE)
    ema = torch.load(found.path / STATE_FILE, map_location="cpu", weights_only=True).get("ema") if found.ema else None
    if ema is not None:
        model.load_state_dict({k.removeprefix("module."): v for k, v in ema.items() if k.startswith("module.")})
    return model
