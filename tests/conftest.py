"""Shared test helpers: run the CLI in a real subprocess, write small configs and user modules."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import process_tree

REPO = Path(__file__).resolve().parents[1]


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """``python -m deepseek ARGS`` in a fresh process (what a user's shell runs).

    A timeout raises ``subprocess.TimeoutExpired`` after killing the whole process tree (``deepseek launch``:
    torchrun and its ranks), and so does a test interrupted while it waits (pytest-timeout).
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return process_tree.run([sys.executable, "-m", "deepseek", *args], timeout, cwd=cwd or REPO, env=full_env)


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def user_module(tmp_path: Path):
    """Write a Python module into tmp_path (on PYTHONPATH for subprocesses); returns its env."""

    def write(name: str, source: str) -> dict[str, str]:
        (tmp_path / f"{name}.py").write_text(source)
        return {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}

    return write


@pytest.fixture
def one_rank_group():
    """A gloo group of one rank in this process, on a port the OS picked; yields its ``DistInfo``."""
    import torch
    import torch.distributed as dist

    from deepseek.train.distributed import DistInfo

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, 1, is_master=True, timeout=timedelta(seconds=30))
    dist.init_process_group("gloo", store=store, rank=0, world_size=1, timeout=timedelta(seconds=30))
    try:
        yield DistInfo(0, 0, 1, torch.device("cpu"))
    finally:
        dist.destroy_process_group()


@pytest.fixture
def one_torch_thread():
    """Tiny models and forwards: on a loaded 2-core machine two intra-op threads spend longer waiting than
    working. ``pytestmark = pytest.mark.usefixtures("one_torch_thread")`` in a module turns it on."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Tests that share an expensive session fixture stay on one pytest-xdist worker (``-n 2 --dist loadgroup``, the
# README's test command), so the fixture is built once: tests/serve's model directory (a trained CNN, its ONNX
# export and a gpt2) takes about 15 s. Without xdist the marker does nothing.
SHARED_FIXTURE_GROUPS = {"serve": "serve"}


def pytest_report_header(config: pytest.Config) -> str:
    """The free disk where the tests write, first in every log: a CI machine once ran out of it mid-suite."""
    tmp = tempfile.gettempdir()
    return f"free disk: {shutil.disk_usage(tmp).free / 2**30:.1f} GiB in {tmp}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tests_dir = Path(__file__).resolve().parent
    for item in items:
        parts = Path(str(item.fspath)).resolve().relative_to(tests_dir).parts
        group = SHARED_FIXTURE_GROUPS.get(parts[0]) if len(parts) > 1 else None
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
