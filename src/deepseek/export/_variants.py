"""Small pieces shared by the file-format exports (ExecuTorch, LiteRT, OpenVINO, ONNX) and their runtime modules.

Every format takes the same kinds of example input (a tensor, a tuple of tensors or a dict of tensors), checks
its file against torch's first output, names the pip line of a missing optional package, and wraps the file in
an ``nn.Module`` that reports its size and copies it. These were once written out in each format's module; they
live here once so that the formats cannot drift apart. Nothing here imports an optional package.
"""

from __future__ import annotations

import importlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch


def require(module: str, message: str) -> ModuleType:
    """Import ``module`` (a dotted name) and return it, or raise an ImportError saying ``message`` (what needs the
    package and the pip line that installs it) followed by the original error in parentheses."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{message} ({e})") from None


def as_tuple(example: Any, names: Sequence[str] | None = None) -> tuple[torch.Tensor, ...]:
    """A tensor, a tuple/list of tensors or a dict of tensors (in ``names`` order, else the dict's) -> a tuple of
    tensors, each as given ((N, ...), batch first, by the formats' convention)."""
    if isinstance(example, dict):
        return tuple(example[n] for n in (names or list(example)))
    if isinstance(example, torch.Tensor):
        return (example,)
    return tuple(example)


def default_names(count: int) -> list[str]:
    """Names for ``count`` positional inputs: ``["input"]`` for one, else ``["input_0", "input_1", ...]``."""
    return ["input"] if count == 1 else [f"input_{i}" for i in range(count)]


def split_example(example: Any) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    """An example input as (input names, tensors): a dict's keys and values (MiniLM's ``input_ids`` and
    ``attention_mask``, each (N, L)), else :func:`default_names` and the tensor or tuple of tensors, each (N, ...).
    A dict model must then be wrapped so that it takes the tensors positionally (``onnx.TensorInputs``)."""
    if isinstance(example, dict):
        return list(example), tuple(example.values())
    tensors = example if isinstance(example, tuple) else (example,)
    return default_names(len(tensors)), tensors


def first_tensor(out: Any) -> torch.Tensor:
    """A model's first output: the first leaf of nested tuples/lists, or the first value of a dict (e.g. the
    (N, classes) logits of a model returning ``(logits, aux)`` or ``{"logits": ...}``)."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


class SingleFileModule:
    """Mixin for a runtime ``nn.Module`` whose whole model is the one file at ``self.path`` (``.pte``,
    ``.tflite``): its size on disk and a copy of it. Formats with a second file (OpenVINO's ``.bin``, ONNX's
    external data) or an in-memory model keep their own methods."""

    path: Path

    def size_bytes(self) -> int:
        """Bytes on disk of the model file."""
        return self.path.stat().st_size

    def save(self, path: str | Path) -> Path:
        """Copy the model file to ``path`` (a file, or a folder to copy it into); returns the copy's path.
        Saving onto the file itself leaves it as it is."""
        path = Path(path)
        if path.resolve() == self.path.resolve():  # shutil.copy refuses to copy a file onto itself
            return path
        return Path(shutil.copy(self.path, path))
