"""What one sample of a dataset looks like, as JSON: the input spec a server checks requests against.

``deepseek train`` writes it beside the run (``RUN/input_spec.json``), keyed by the SHA-256 of the run's
``config.yaml``, so serving a run directory never builds its dataset, not even on the first start. The
file is plain JSON (data, never code)::

    {"config_sha256": "...", "inputs": {"input": {"shape": [1, 8, 8], "dtype": "float32"}},
     "text": false, "labels": ["0", "1", ...]}

``shape`` is one sample's shape without the batch axis; ``null`` marks an axis that may vary (every token
axis of a text model). ``labels`` are the class names, or ``null`` when the task has none.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from deepseek.data.datasets import DatasetSplits

log = logging.getLogger("deepseek.data")
SPEC_FILE = "input_spec.json"


def describe_sample(splits: DatasetSplits, preprocess: Callable[[str], Any] | None) -> dict[str, Any]:
    """``{"inputs", "text", "labels"}`` from the first validation sample (the first training one without
    a validation split). Text goes through ``preprocess`` (the config's ``data.preprocess``) first.

    Raises ``ValueError`` for a text dataset without a tokenizer and ``TypeError`` for a sample that is
    not a tensor or a ``{name: tensor}`` mapping (a graph, a tuple): such runs need a ``serve.yaml``.
    """
    source = splits.val if splits.val is not None and len(splits.val) else splits.train
    x = source[0][0]
    text = isinstance(x, str)
    if text and preprocess is None:
        raise ValueError("the dataset gives text but data.preprocess has no tokenizer")
    sample = preprocess(x) if text else x
    sample = sample if isinstance(sample, dict) else {"input": sample}
    if not all(isinstance(t, torch.Tensor) for t in sample.values()):
        kinds = sorted({type(t).__name__ for t in sample.values()})
        raise TypeError(f"a sample is not a tensor or a mapping of tensors ({', '.join(kinds)})")
    inputs = {
        name: {"shape": [None if text else d for d in t.shape], "dtype": str(t.dtype).removeprefix("torch.")}
        for name, t in sample.items()
    }
    classes = (splits.info or {}).get("classes") or (
        [str(i) for i in range(splits.num_classes)] if splits.num_classes else None
    )
    return {"inputs": inputs, "text": text, "labels": classes}


def config_sha256(run_dir: str | Path) -> str:
    return hashlib.sha256((Path(run_dir) / "config.yaml").read_bytes()).hexdigest()


def write_input_spec(run_dir: str | Path, spec: dict[str, Any]) -> Path | None:
    """Save ``spec`` for the run's current ``config.yaml``, atomically. Best effort: returns None (and
    logs why) where the directory is read-only; the server then reads one sample of the dataset instead."""
    path = Path(run_dir) / SPEC_FILE
    try:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config_sha256": config_sha256(run_dir), **spec}, indent=2))
        tmp.replace(path)  # a concurrent reader sees the old file or the new one, never half of one
    except OSError as exc:
        log.info("could not save the input spec to %s (%s)", path, exc)
        return None
    return path


def read_input_spec(run_dir: str | Path) -> dict[str, Any] | None:
    """The spec saved for the run's current ``config.yaml``, or None (absent, stale or malformed)."""
    try:
        saved = json.loads((Path(run_dir) / SPEC_FILE).read_text())
        current = config_sha256(run_dir)
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("config_sha256") != current:
        return None
    labels = saved.get("labels")
    if not isinstance(saved.get("inputs"), dict) or not isinstance(saved.get("text"), bool):
        return None
    if labels is not None and not (isinstance(labels, list) and all(isinstance(x, str) for x in labels)):
        return None
    return saved
