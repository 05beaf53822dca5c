"""A candidate's score: a short proxy training with the framework's Trainer, or the user's evaluator function.

Proxy training: the base run config with ``model:`` replaced by the candidate's spec, ``train.max_epochs`` set
to the proxy epochs (``max_steps`` cleared), TensorBoard off, and, when ``evaluation.train_size`` /
``val_size`` are given, the data wrapped in the ``subset`` dataset (a seeded fixed subset). It runs as one
ordinary run in ``OUT/candidates/<n>/`` (config.yaml, metrics.jsonl, checkpoints), inside
:func:`deepseek.train.isolation.isolated_run` so that its seeds, flags and process group end with it; the score
is the run's last validation ``metric`` (default ``val/accuracy``).

An evaluator is any function named by import path (``my_pkg.bench:lookup``, imported because the user named
it) called as ``fn(candidate, model_spec) -> float`` (higher is better): for example a lookup in a tabular
benchmark, which trains nothing.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deepseek import registry as reg
from deepseek.config import load_config
from deepseek.errors import ConfigError
from deepseek.train.build import build_run
from deepseek.train.isolation import isolated_run

Evaluator = Callable[[dict[str, Any], dict[str, Any]], float]


def load_evaluator(path: str) -> Evaluator:
    """The function ``pkg.module:fn`` names (standard-library paths are refused before anything is imported)."""
    try:
        fn = reg.import_object(path)
    except reg.RegistryError as exc:
        raise ConfigError([f"evaluation.evaluator: {exc}"]) from None
    if not callable(fn) or inspect.isclass(fn):
        raise ConfigError([f"evaluation.evaluator: {path!r} is a {type(fn).__name__}; allowed: a function "
                           f"fn(candidate, model_spec) -> float"])  # fmt: skip
    return fn


def candidate_config(base: dict[str, Any], spec: dict[str, Any], *, epochs: int | None = None,
                     train_size: int | None = None, val_size: int | None = None) -> dict[str, Any]:  # fmt: skip
    """The base run config (a raw mapping) with the candidate's model; with ``epochs``, a proxy run's settings."""
    raw = copy.deepcopy(base)
    raw["model"] = copy.deepcopy(spec)
    train = raw.setdefault("train", {})
    if epochs is not None:
        train["max_epochs"], train["max_steps"] = epochs, None
        train.pop("early_stopping", None)  # a proxy run is already short
        raw.setdefault("logging", {})["tensorboard"] = False
    if train_size is not None or val_size is not None:
        data = dict(raw.get("data") or {})
        name = data.pop("name", None)
        if name is None:
            raise ConfigError(["evaluation.train_size: the base config has no data.name to take a subset of"])
        loader_keys = {k: data.pop(k) for k in list(data) if k in _LOADER_KEYS}
        subset = {"name": "subset", "dataset": name, **data, **loader_keys}
        if train_size is not None:
            subset["train_size"] = train_size
        if val_size is not None:
            subset["val_size"] = val_size
        if name == "subset":  # already a subset: only the sizes change
            subset = {**raw["data"], **{k: v for k, v in subset.items() if k in ("train_size", "val_size")}}
        raw["data"] = subset
    return raw


# data: keys that belong to the loader, not to the dataset (they stay beside the subset's name)
_LOADER_KEYS = ("batch_size", "val_batch_size", "num_workers", "shuffle", "drop_last", "preprocess", "transforms",
                "shards", "streaming")  # fmt: skip


def proxy_train(raw: dict[str, Any], run_dir: Path, metric: str = "val/accuracy") -> float:
    """Train the run config ``raw`` in ``run_dir`` (started over if it holds an interrupted attempt) and return its
    last validation ``metric``."""
    with isolated_run():
        cfg = load_config(None, data=raw)
        run = build_run(cfg, run_dir, progress="off")
        run.trainer.fit(run.train_loader, run.val_loader, overwrite=True)
        values = dict(run.trainer.last_val_metrics)
    if metric not in values:
        raise ConfigError([f"evaluation.metric: {metric!r} is not among the run's validation values; allowed: "
                           f"{', '.join(sorted(values)) or '(none: the data has no validation split)'}"])  # fmt: skip
    return float(values[metric])
