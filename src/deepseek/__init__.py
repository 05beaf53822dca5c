"""deepseek-framework: a PyTorch-native framework from data to a trained, checkpointed model.

``import deepseek as ds``: ``ds.nn`` is :mod:`torch.nn` plus ds's layers, ``ds.optim`` is
:mod:`torch.optim` plus its schedulers, ``ds.Module is torch.nn.Module``, and tensor functions
(``ds.cat``, ``ds.tensor``, ``ds.float16``...) are torch's own. ds adds the Trainer, configs,
registries, data loading and checkpoints; it never wraps a model, optimizer or tensor.
"""

from __future__ import annotations

from typing import Any

import torch as _torch

from deepseek import (  # noqa: F401
    amp,
    config,
    data,
    models,
    nn,
    optim,
    peft,
    registry,
    train,  # noqa: F401  (after its dependencies: registers callbacks, metrics, losses)
)
from deepseek.config import Config, ConfigError, load_config
from deepseek.jit_compile import jit, jit_report, unjit
from deepseek.registry import Registry, register_model
from deepseek.train import Trainer, seed_everything
from deepseek.train.accumulate import GradientAccumulator

__version__ = "0.1.0"

Module = _torch.nn.Module

__all__ = [
    "amp",
    "Config",
    "ConfigError",
    "GradientAccumulator",
    "Module",
    "Registry",
    "Trainer",
    "config",
    "data",
    "jit",
    "jit_report",
    "load_config",
    "models",
    "nn",
    "optim",
    "peft",
    "register_model",
    "registry",
    "seed_everything",
    "train",
    "unjit",
]


def __getattr__(name: str) -> Any:
    """Tensor functions and dtypes the reference documents use (``ds.cat``, ``ds.tensor``) are torch's."""
    if name in ("compress", "distributed", "export", "multimodal", "serve"):  # heavier stages load on first use: ds.serve.Client
        import importlib

        return importlib.import_module(f"deepseek.{name}")
    if not name.startswith("__") and hasattr(_torch, name):
        return getattr(_torch, name)
    raise AttributeError(f"module 'deepseek' has no attribute '{name}' (nor has torch)")
