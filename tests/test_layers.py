"""The layer rules of docs/architecture.md hold: ``lint-imports`` (the contracts in pyproject.toml) passes on
this checkout and fails on a copy of it with an upward import or an import cycle planted in it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# the console script installed beside this interpreter by the dev extra (import-linter)
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the ``deepseek`` package under ``root/src``, with ``root/pyproject.toml``'s contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}  # before site-packages: the copy, not the checkout
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """A copy of the package and its contracts, to plant wrong imports in."""
    shutil.copytree(REPO / "src" / "deepseek", tmp_path / "src" / "deepseek", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def plant(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code + "\n")


def test_the_checkout_keeps_every_contract() -> None:
    out = lint_imports(REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_planted_upward_import_breaks_the_layers_contract(tree_copy: Path) -> None:
    assert lint_imports(tree_copy).returncode == 0  # the copy itself is clean: the plant below is what breaks it
    # a late (function-level) import: import-linter sees it, so it cannot hide an upward import
    plant(tree_copy / "src/deepseek/data/loader.py", "def _planted():\n    from deepseek.train import Trainer\n\n    return Trainer")
    out = lint_imports(tree_copy)
    assert out.returncode != 0
    assert "Each layer imports only the layers below it BROKEN" in out.stdout
    assert "deepseek.data.loader -> deepseek.train" in out.stdout


def test_a_planted_cycle_breaks_the_acyclic_contract(tree_copy: Path) -> None:
    # cli.main imports cli.serve_cmd; this makes serve_cmd import main back (the cycle issue 14 removed)
    plant(tree_copy / "src/deepseek/cli/serve_cmd.py", "def _planted():\n    from deepseek.cli.main import main\n\n    return main")
    out = lint_imports(tree_copy)
    assert out.returncode != 0
    assert "No import cycles between sibling modules (at any depth) BROKEN" in out.stdout
    assert ".serve_cmd -> .main" in out.stdout


def test_no_contract_ignores_an_import() -> None:
    # every known exception was fixed (train.build <-> train.trainer was the last): none may hide behind ignore_imports
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        contracts = tomllib.load(f)["tool"]["importlinter"]["contracts"]
    assert [c["id"] for c in contracts if c.get("ignore_imports")] == []


def test_a_planted_serve_to_train_import_breaks_the_forbidden_contract(tree_copy: Path) -> None:
    # serve sits above train in the layers, so only the forbidden contract stops it importing train: serving reads
    # runs through deepseek.runs, below both
    plant(tree_copy / "src/deepseek/serve/repository.py", "def _planted():\n    from deepseek.train.checkpoint import CheckpointManager\n\n    return CheckpointManager")
    out = lint_imports(tree_copy)
    assert out.returncode != 0
    assert "Serving does not import the training layer BROKEN" in out.stdout
    assert "deepseek.serve.repository -> deepseek.train.checkpoint" in out.stdout
