"""Config -> the Trainer's arguments: plain builder functions that turn a validated :class:`Config` into a
model, loaders, optimizer, scheduler and everything else ``Trainer(...)`` takes (torchtune style: no object
knows the config).

This module never imports the Trainer: ``Trainer.from_config`` (in :mod:`deepseek.train.trainer`) and
``build_run`` (in :mod:`deepseek.train.build`, above both) construct it from :class:`Assembled`, so there is
no ``build <-> trainer`` import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn as nn
import yaml
from torch.utils.data import DataLoader

from deepseek import registry as reg
from deepseek.config import Config, ConfigError
from deepseek.data import DistributedDataset, Pipeline, build_dataset
from deepseek.data.datasets import DatasetSplits
from deepseek.optim import build_optimizer, build_scheduler
from deepseek.runs import CONFIG_FILE, build_model
from deepseek.train.callbacks import EarlyStopping
from deepseek.train.checkpoint import write_text_atomic
from deepseek.train.distributed import DistInfo, init_distributed, resolve_device
from deepseek.train.mesh_layout import data_parallel_index
from deepseek.train.meta_init import build_on_meta
from deepseek.train.plan import check_model_degrees, resolve_degrees, strategy_spec
from deepseek.train.rng import seed_everything
from deepseek.train.sinks import sink_problems
from deepseek.train.strategy import build_strategy

T = TypeVar("T")


@dataclass
class Assembled:
    """What a config builds before the Trainer exists: ``trainer_kwargs`` are ``Trainer(**trainer_kwargs)``'s
    arguments (model and optimizer included); :meth:`make_trainer` constructs it."""

    config: Config
    model: nn.Module
    train_loader: DataLoader
    val_loader: DataLoader | None
    splits: DatasetSplits | None
    trainer_kwargs: dict[str, Any]
    save_config_to: Path | None = None  # where make_trainer writes the resolved config (None: nowhere)

    def make_trainer(self, trainer_cls: type[T]) -> T:
        """``trainer_cls(**trainer_kwargs)`` holding the config's loaders (its ``fit()`` needs no data);
        then the resolved config is written to the run directory, if asked."""
        trainer = trainer_cls(**self.trainer_kwargs)
        trainer.train_data, trainer.val_data = self.train_loader, self.val_loader  # type: ignore[attr-defined]
        if self.save_config_to is not None:
            save_resolved_config(self.config, self.save_config_to)
        return trainer


def build_loaders(
    cfg: Config, dist: DistInfo, splits: DatasetSplits | None = None
) -> tuple[DataLoader, DataLoader | None]:
    """The train and validation loaders of this rank's data shard: one shard per data-parallel index, so the
    ranks of one tensor-parallel group (and of one pipeline) read the same batches (see :func:`data_shard`)."""
    d = cfg.data
    splits = splits if splits is not None else build_splits(cfg)
    index, shards = data_shard(cfg, dist)
    if d.shards is not None:
        return _streaming_loaders(cfg, splits, index, shards)
    common = dict(seed=cfg.train.seed, rank=index, world_size=shards, num_workers=d.num_workers)
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


def build_splits(cfg: Config) -> DatasetSplits:
    """The config's datasets: the shard set ``data.shards`` names (opened, read as the loaders go), else
    ``data.name``'s splits built."""
    d = cfg.data
    if d.shards is None:
        return build_dataset(d.name, **d.kwargs)
    from deepseek.data.shards.reader import open_shard_splits  # pyarrow (the data extra): only for shard sets

    s = d.streaming
    try:
        return open_shard_splits(d.shards, cache_dir=s.cache_dir, cache_limit=s.cache_limit, on_corrupt=s.on_corrupt)
    except (OSError, ValueError) as exc:  # a shard set that is not there or does not read: the user's input
        raise ConfigError([f"data.shards: '{d.shards}' cannot be read: {str(exc).splitlines()[0]}"]) from None


def _streaming_loaders(
    cfg: Config, splits: DatasetSplits, index: int, shards: int
) -> tuple[DataLoader, DataLoader | None]:
    """StreamingLoaders over the shard sets (train shuffled, validation in order): the global order does not
    depend on the world size, so a resume keeps its position at another one. ``data.preprocess`` that the
    index records as applied at shard time is not applied again; ``data.transforms`` run per sample, seeded
    by the sample's global index."""
    from deepseek.data.shards.stream import StreamingLoader

    d, seed = cfg.data, cfg.train.seed
    recorded = getattr(getattr(splits.train, "index", None), "preprocess", None)
    preprocess = [] if recorded else list(d.preprocess)
    common = dict(seed=seed, rank=index, world_size=shards, num_workers=d.num_workers,
                  shuffle_window=d.streaming.shuffle_window, prefetch=d.streaming.prefetch)  # fmt: skip
    steps = [*preprocess, *d.transforms]
    train = StreamingLoader(splits.train, d.batch_size, shuffle=d.shuffle, drop_last=d.drop_last,
                            collate_fn=Pipeline(steps, seed=seed) if steps else None, **common)  # fmt: skip
    val = None
    if splits.val is not None:
        prep = Pipeline(preprocess, seed=seed) if preprocess else None
        val = StreamingLoader(splits.val, d.val_batch_size or d.batch_size, shuffle=False, collate_fn=prep, **common)
    return train, val


def data_shard(cfg: Config, dist: DistInfo) -> tuple[int, int]:
    """``(this rank's data-parallel index, the data-parallel world)``: the world divided by ``tp x pp``, from
    ``parallel`` (resolved for this world) or else the ``tp`` / ``pp`` arguments of ``train.strategy``."""
    if cfg.parallel is not None:
        degrees = resolve_degrees(cfg.parallel, dist.world_size)
        tp, dp = degrees.tp, degrees.dp
    else:
        kwargs = cfg.train.strategy.kwargs
        tp, pp = int(kwargs.get("tp", 1)), int(kwargs.get("pp", 1))
        if tp < 1 or pp < 1 or dist.world_size % (tp * pp):
            raise ConfigError([f"train.strategy: tp {tp} x pp {pp} does not divide the world size "
                               f"{dist.world_size}; allowed: positive degrees whose product divides it"])  # fmt: skip
        dp = dist.world_size // (tp * pp)
    return data_parallel_index(dist.rank, tp=tp, dp=dp), dp


def assemble(
    cfg: Config, run_dir: str | Path | None = None, *, progress: str | None = None, save_config: bool = True
) -> Assembled:
    """Seed, then build model, data, optimizer, scheduler, loss, metrics, callbacks and the Trainer's other
    arguments; with a ``run_dir`` and ``save_config``, the Trainer's maker writes the resolved config to
    ``run_dir/config.yaml`` (on the main rank)."""
    t = cfg.train
    seed_everything(t.seed, t.deterministic)
    device = resolve_device(t.device)  # auto/cuda -> cuda:<LOCAL_RANK>: under torchrun each rank its own GPU
    dist = init_distributed(device)
    strategy = _strategy(cfg, dist)
    # fsdp meta_init: parameters on the meta device, given memory and their init shard by shard (meta_init.py)
    model = build_on_meta(lambda: build_model(cfg)) if getattr(strategy, "meta_init", False) else build_model(cfg)
    check_model_degrees(cfg, model)  # tp/pp/ep against the model's heads, blocks, experts: before any collective
    if t.gradient_checkpointing:
        if not callable(getattr(model, "gradient_checkpointing_enable", None)):
            raise ConfigError([f"train.gradient_checkpointing: model '{cfg.model.name}' has no gradient_checkpointing_enable(); "
                               "wrap its blocks with ds.nn.checkpoint_modules in Python instead"])  # fmt: skip
        model.gradient_checkpointing_enable()
    splits = build_splits(cfg)
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
    kwargs = dict(
        model=model,
        optimizer=optimizer,
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
        callbacks=[reg.callbacks.build(c.name, **c.kwargs) for c in cfg.callbacks] + _observers(cfg, run_dir),
        device=device,
        run_dir=run_dir,
        checkpoint_every_steps=cfg.checkpoint.every_steps,
        checkpoint_every_minutes=cfg.checkpoint.every_minutes,
        keep_last=cfg.checkpoint.keep_last,
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_best=cfg.checkpoint.save_best,
        sharded_checkpoint=cfg.checkpoint.sharded,
        async_checkpoint=cfg.checkpoint.async_save,
        log_every_steps=cfg.logging.every_steps,
        tensorboard=cfg.logging.tensorboard,
        sinks=None if sinks is None else [{"name": s.name, **s.kwargs} for s in sinks],
        progress=progress or cfg.logging.progress,
        on_nonfinite=t.on_nonfinite,
        strategy=strategy,
    )
    save_to = Path(run_dir) if run_dir is not None and dist.is_main and save_config else None
    return Assembled(cfg, model, train_loader, val_loader, splits, kwargs, save_to)


def _observers(cfg: Config, run_dir: str | Path | None) -> list[Any]:
    """The callbacks of ``logging.stats`` (a StatsRecorder) and ``train.profile`` (a ProfilerCallback)."""
    observers: list[Any] = []
    if cfg.logging.stats is not None:
        from deepseek.train.stats import StatsRecorder

        observers.append(StatsRecorder(**cfg.logging.stats.model_dump()))
    if cfg.train.profile is not None:
        from deepseek.profiler import ProfilerCallback

        observers.append(ProfilerCallback(**cfg.train.profile.model_dump()))
    return observers


def _strategy(cfg: Config, dist: DistInfo) -> Any:
    """The strategy ``parallel`` selects (or ``train.strategy`` names), built now: degrees that do not fit the
    world size, or a wrong name or argument, stop the run before its first step."""
    spec = strategy_spec(cfg, dist.world_size)  # ConfigError when the degrees do not multiply to the world
    try:
        return build_strategy(spec, dist)
    except (reg.RegistryError, ValueError) as exc:
        raise ConfigError([str(exc)]) from None


def save_resolved_config(cfg: Config, run_dir: str | Path) -> Path:
    """Write the resolved config (defaults filled in) to ``run_dir/config.yaml``, atomically."""
    path = Path(run_dir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
