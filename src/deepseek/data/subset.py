"""``subset``: a seeded, fixed handful of another registered dataset's samples.

For quick experiments and for checking that a model can fit a few batches at all (Lightning's
``overfit_batches``): ``data: {name: subset, dataset: mnist, train_size: 64, val_size: 64}``; every
other key goes to the wrapped dataset (``val_fraction``, ``source``...). With ``data.shuffle: false``
and ``data.batch_size`` equal to ``train_size`` every step sees the same batch.
"""

from __future__ import annotations

from typing import Annotated, Any

import torch
from annotated_types import Gt
from torch.utils.data import Dataset, Subset

from deepseek.components import ComponentErrors, validate_kwargs
from deepseek.data.datasets import DatasetSplits
from deepseek.errors import ConfigError
from deepseek.registry import datasets, register_dataset


def pick(dataset: Dataset, size: int, seed: int) -> Subset:
    """``size`` samples of ``dataset`` chosen from ``seed`` (all of them when it has fewer), in index order."""
    n = len(dataset)  # type: ignore[arg-type]
    chosen = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[: min(size, n)]
    return Subset(dataset, sorted(chosen.tolist()))


@register_dataset("subset")
def subset(
    dataset: str,
    train_size: Annotated[int, Gt(0)],
    val_size: Annotated[int, Gt(0)] | None = None,
    subset_seed: int = 0,
    **dataset_kwargs: Any,
) -> DatasetSplits:
    """A fixed, seeded subset of a registered dataset: ``train_size`` (and ``val_size``) of its samples, as they are.

    ``val_size`` null keeps the whole validation split; other keys are the wrapped dataset's arguments.
    """
    try:
        checked = validate_kwargs(datasets, dataset, dataset_kwargs)
    except ComponentErrors as exc:  # the wrapped dataset's own argument errors, named as config keys
        raise ConfigError([_problem(e, dataset, exc.allowed) for e in exc.errors]) from None
    inner = datasets.build(dataset, **checked)
    val = inner.val
    if val is not None and val_size is not None:
        val = pick(val, val_size, subset_seed + 1)
    return DatasetSplits(
        pick(inner.train, train_size, subset_seed), val, inner.num_classes, inner.input_shape,
        {**inner.info, "subset_of": dataset},
    )  # fmt: skip


def _problem(error: Any, dataset: str, allowed: list[str]) -> str:
    key = ".".join(str(p) for p in error.path)
    if error.kind == "extra_forbidden":
        mine = ["dataset", "train_size", "val_size", "subset_seed"]
        return f"data.{key}: unknown key for dataset '{dataset}'; allowed keys: {', '.join(mine + allowed)}"
    return f"data.{key}: {error.message} (got {error.value!r}; dataset '{dataset}')"
