"""Precision lives under ``deepseek.amp``; the documented names elsewhere are aliases of the same objects."""

from __future__ import annotations

import ast
from pathlib import Path

import deepseek
import deepseek.amp as amp
import deepseek.optim as optim
import deepseek.optimizer as optimizer
import deepseek.train as train

SRC = Path(deepseek.__file__).parent
# Implementations that must exist once, in deepseek/amp/ (deepseek/protocols.py holds only typing.Protocols).
PRECISION_NAMES = {"MixedPrecision", "MixedPrecisionTrainer", "ProgressivePrecision", "PrecisionPolicy",
                   "resolve_precision", "adaptive_clip_grad_", "GradScaler", "auto_cast"}  # fmt: skip


def test_precision_classes_are_defined_in_amp_modules():
    assert amp.MixedPrecision.__module__ == "deepseek.amp.mixed_precision"
    assert amp.MixedPrecisionTrainer.__module__ == "deepseek.amp.mp_trainer"
    assert amp.adaptive_clip_grad_.__module__ == "deepseek.amp.mp_trainer"
    assert amp.PrecisionPolicy.__module__ == "deepseek.amp.policy"
    assert amp.resolve_precision.__module__ == "deepseek.amp.policy"
    assert amp.ProgressivePrecision.__module__ == "deepseek.amp.progressive"


def test_documented_import_paths_are_aliases_of_the_amp_objects():
    assert optimizer.MixedPrecision is optim.MixedPrecision is amp.MixedPrecision
    assert optim.MixedPrecisionTrainer is amp.MixedPrecisionTrainer
    assert optim.adaptive_clip_grad_ is amp.adaptive_clip_grad_
    assert train.resolve_precision is amp.resolve_precision


def test_no_precision_implementation_outside_amp():
    found = []
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC).as_posix()
        if rel.startswith("amp/") or rel == "protocols.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            defines = isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            if defines and node.name in PRECISION_NAMES:
                found.append(f"{rel}:{node.lineno} {node.name}")
    assert not found, f"precision code outside deepseek/amp/: {found}"
