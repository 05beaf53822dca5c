"""Per-run isolation: several training runs (search trials) one after another in one process.

A run sets process-wide state: ``seed_everything`` reseeds Python's, NumPy's and torch's global RNGs and
(``train.deterministic``) turns on deterministic algorithms and sets ``CUBLAS_WORKSPACE_CONFIG``; the CLI and
config import paths add directories to ``sys.path`` and import the user's modules from them; a run under
torchrun creates the default process group. Left behind, these change the next trial (a stale user module,
deterministic kernels it did not ask for) and the search driver itself (its own ``random`` draws repeat after
every trial's reseed). :func:`isolated_run` scopes all of them to one run::

    import deepseek as ds

    for params in search_space:                  # the driver's RNG is not reseeded by the trials
        with ds.train.isolated_run():
            trainer = ds.Trainer.from_config("cfg.yaml", overrides=params)
            score = trainer.fit()["best"]
"""

from __future__ import annotations

import importlib
import os
import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["GlobalState", "added_to_sys_path", "isolated_run"]


@dataclass
class GlobalState:
    """The process-wide state a run may change (see the module docstring); ``capture()`` then ``restore()``."""

    python_rng: Any
    numpy_rng: dict[str, Any]
    torch_rng: torch.Tensor
    cuda_rng: list[torch.Tensor] | None
    deterministic: bool
    deterministic_warn_only: bool
    cudnn_benchmark: bool
    cudnn_deterministic: bool
    environ: dict[str, str]
    sys_path: list[str]
    modules: frozenset[str]

    @classmethod
    def capture(cls) -> GlobalState:
        # CUDA's RNG only once CUDA is initialised: reading it would initialise CUDA (and forbid a later fork)
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        return cls(
            python_rng=random.getstate(),
            numpy_rng=np.random.get_state(legacy=False),
            torch_rng=torch.get_rng_state(),
            cuda_rng=cuda,
            deterministic=torch.are_deterministic_algorithms_enabled(),
            deterministic_warn_only=torch.is_deterministic_algorithms_warn_only_enabled(),
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            cudnn_deterministic=torch.backends.cudnn.deterministic,
            environ=dict(os.environ),
            sys_path=list(sys.path),
            modules=frozenset(sys.modules),
        )

    def restore(self) -> None:
        """Put every captured global back; modules the run imported from directories it added to ``sys.path``
        are forgotten, so the next run imports its own module of that name."""
        _forget_modules_from(set(sys.path) - set(self.sys_path), self.modules)
        sys.path[:] = self.sys_path
        importlib.invalidate_caches()
        for key in set(os.environ) - set(self.environ):
            del os.environ[key]
        for key, value in self.environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)
        torch.use_deterministic_algorithms(self.deterministic, warn_only=self.deterministic_warn_only)
        torch.backends.cudnn.benchmark = self.cudnn_benchmark
        torch.backends.cudnn.deterministic = self.cudnn_deterministic


def _forget_modules_from(added_paths: set[str], before: frozenset[str]) -> None:
    """Drop from ``sys.modules`` the modules imported since ``before`` whose file lies under an added path."""
    roots = [Path(p or os.curdir).resolve() for p in added_paths]
    if not roots:
        return
    for name in set(sys.modules) - before:
        file = getattr(sys.modules.get(name), "__file__", None)
        if file and any(Path(file).resolve().is_relative_to(root) for root in roots):
            del sys.modules[name]


@contextmanager
def added_to_sys_path(directory: str) -> Iterator[None]:
    """``directory`` first on ``sys.path`` inside; on exit it is removed and the modules imported from it are
    forgotten (the CLI's cwd, so that configs may name the user's own modules by import path)."""
    before = frozenset(sys.modules)
    sys.path.insert(0, directory)
    try:
        yield
    finally:
        if directory in sys.path:
            sys.path.remove(directory)
        if directory not in sys.path:  # it was not on the path before either: what came from it goes
            _forget_modules_from({directory}, before)
        importlib.invalidate_caches()


@contextmanager
def isolated_run() -> Iterator[None]:
    """Scope what one run sets: global RNG states (Python, NumPy, torch, CUDA), deterministic-algorithm flags
    (and ``warn_only``), ``cudnn.benchmark``/``deterministic``, environment variables, ``sys.path`` additions
    (and the user modules imported through them), and a default process group the run created (destroyed on
    exit; a group that existed before is left alone). Everything is restored whether the run returns or raises.
    """
    saved = GlobalState.capture()
    had_group = dist.is_available() and dist.is_initialized()
    try:
        yield
    finally:
        try:
            if not had_group and dist.is_available() and dist.is_initialized():
                dist.destroy_process_group()  # the run's own group; one it found stays the caller's
        finally:
            saved.restore()
