"""Registered optimizer and scheduler builders: what ``optim:`` and ``scheduler:`` in a config name.

Builders take plain, typed keyword arguments so that a config's keys are checked against their
signatures. Schedulers are stepped once per optimizer step, so every period here is in steps.
``total_steps`` is supplied by the Trainer, never by the config.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from typing import Annotated, Any

import torch
from annotated_types import Ge, Gt, Lt
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from deepseek.optim.schedulers import WarmupCosine
from deepseek.registry import optimizers, schedulers

Params = Iterable[Any]
# Bounds are checked when a config is validated, so a bad value is a config error, not a traceback.
LR = Annotated[float, Gt(0)]
Decay = Annotated[float, Ge(0)]
Steps = Annotated[int, Gt(0)]


@optimizers.register("adamw")
def adamw(
    params: Params,
    lr: LR = 1e-3,
    weight_decay: Decay = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    """torch.optim.AdamW (decoupled weight decay)."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


@optimizers.register("adam")
def adam(
    params: Params,
    lr: LR = 1e-3,
    weight_decay: Decay = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> Optimizer:
    """torch.optim.Adam."""
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


@optimizers.register("sgd")
def sgd(
    params: Params,
    lr: LR = 0.1,
    momentum: Annotated[float, Ge(0)] = 0.9,
    weight_decay: Decay = 0.0,
    nesterov: bool = False,
) -> Optimizer:
    """torch.optim.SGD with momentum."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)


@schedulers.register("warmup_cosine", aliases=("cosine",))
def warmup_cosine(
    optimizer: Optimizer,
    total_steps: int,
    warmup_steps: Annotated[int, Ge(0)] = 0,
    min_lr_ratio: Annotated[float, Ge(0)] = 0.0,
) -> LRScheduler:
    """Linear warm-up then cosine decay to min_lr_ratio * lr over the run (ds.optim.WarmupCosine)."""
    return WarmupCosine(optimizer, total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)


@schedulers.register("cosine_restarts", aliases=("cosineannealingwarmrestarts",))
def cosine_restarts(
    optimizer: Optimizer, total_steps: int, T_0: Steps, T_mult: Annotated[int, Ge(1)] = 1, eta_min: Decay = 0.0
) -> LRScheduler:
    """torch CosineAnnealingWarmRestarts; T_0 is the first period in optimizer steps."""
    return torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(optimizer, T_0=T_0, T_mult=T_mult, eta_min=eta_min)


@schedulers.register("step", aliases=("steplr",))
def step(
    optimizer: Optimizer, total_steps: int, step_size: Steps, gamma: Annotated[float, Gt(0), Lt(1.0001)] = 0.1
) -> LRScheduler:
    """torch StepLR: multiply the LR by gamma every step_size optimizer steps."""
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=step_size, gamma=gamma)


def build_optimizer(name: str, params: Params, **kwargs: Any) -> Optimizer:
    """Build a registered optimizer (or one named by import path) over ``params``."""
    return optimizers.build(name, params, **kwargs)


def build_scheduler(name: str, optimizer: Optimizer, total_steps: int, **kwargs: Any) -> LRScheduler:
    """Build a registered scheduler (or one named by import path, e.g. a torch scheduler class).

    ``total_steps`` (optimizer steps in the run) is passed only to builders that take it.
    """
    builder = schedulers.get(name)
    if "total_steps" in inspect.signature(builder).parameters:
        kwargs["total_steps"] = total_steps
    return builder(optimizer, **kwargs)
