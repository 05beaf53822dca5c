"""A real ``deepseek-serve`` process on 127.0.0.1 over a model directory built once per session.

The directory holds a digits CNN trained by ``deepseek train`` (served from its run directory and,
exported, from ONNX), a small gpt2 with the MiniLM tokenizer for streaming, and ``probe``: a model that
reports the batch it ran in, raises on a sample starting with 13 and sleeps on one starting with -1.
"""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import process_tree
from tests.conftest import REPO, run_cli, write_yaml

PROBE = '''
import time
import torch
import torch.nn as nn

class Probe(nn.Module):
    """(N, 4) -> (N, 2): [the sample's sum, N]. x[0] == 13 raises; x[0] == -1 sleeps x[1] seconds."""
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
    def forward(self, x):
        if (x[:, 0] == 13).any():
            raise ValueError("unlucky 13")
        slow = x[x[:, 0] == -1]
        if len(slow):
            time.sleep(float(slow[:, 1].max()))
        return torch.stack([x.sum(1) * self.scale, torch.full((x.shape[0],), float(x.shape[0]))], 1)
'''


def save_code_model(
    directory: Path, module: str, class_name: str, source: str, weights: str, input_shape: Sequence[int]
) -> dict[str, Any]:
    """Write ``source`` as ``directory/<module>.py`` and save a fresh ``class_name`` from it to ``directory/<weights>``.

    Returns the model's serve.yaml entry less its name: the weights, ``<module>:<class_name>`` (served with
    ``--trust-code`` and ``directory`` on PYTHONPATH) and one float32 input ``x`` of shape ``(N, *input_shape)``.
    """
    from safetensors.torch import save_model

    (directory / f"{module}.py").write_text(source)
    sys.path.insert(0, str(directory))
    importlib.invalidate_caches()  # the file is new: a finder that listed the directory before must look again
    try:
        model_class = getattr(importlib.import_module(module), class_name)
    finally:
        sys.path.remove(str(directory))
        sys.modules.pop(module, None)  # another directory may hold a module of the same name
    save_model(model_class(), directory / weights)
    return {"path": weights, "model": {"name": f"{module}:{class_name}"},
            "inputs": {"x": {"shape": list(input_shape), "dtype": "float32"}}}  # fmt: skip


def digits_samples(n: int) -> tuple[list, list[int]]:
    """The first ``n`` validation digits as nested lists ``(1, 8, 8)``, and their labels."""
    from deepseek.data.datasets import build_dataset

    val = build_dataset("digits", val_fraction=0.2).val
    return [val[i][0].tolist() for i in range(n)], [int(val[i][1]) for i in range(n)]


class ServerProcess:
    """``deepseek serve`` on a free port; a thread drains its output (stdout and stderr) for its whole life.

    A pipe holds 64 KB: a server whose output nobody reads blocks in its next write. The drain keeps the
    last ``TAIL_LINES`` lines for failure messages (``output_tail``) and notes the URL it listens on.
    """

    TAIL_LINES = 200

    def __init__(self, model_dir: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.model_dir, self.args, self.env = model_dir, args, env or {}
        self.proc: subprocess.Popen | None = None
        self.url = ""
        self._tail: deque[str] = deque(maxlen=self.TAIL_LINES)
        self._listening = threading.Event()
        self._new_output = threading.Condition()
        self._drain: threading.Thread | None = None

    def start(self, timeout: float = 180) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(self.model_dir), **self.env}
        # --trust-code: the fixture's serve.yaml names the test's own probe_model:Probe
        cmd = [sys.executable, "-m", "deepseek", "serve", "--model_dir", str(self.model_dir), "--port", "0",
               "--trust-code", *self.args]  # fmt: skip
        self.proc = process_tree.popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True, errors="replace")  # fmt: skip
        self._drain = threading.Thread(target=self._drain_output, args=(self.proc.stdout,), daemon=True)
        self._drain.start()
        deadline = time.monotonic() + timeout
        # the drain sets the event on the listening line, or at EOF (the server exited)
        if not self._listening.wait(timeout) or not self.url:
            self.kill()
            raise RuntimeError("server exited or never listened:\n" + self.output_tail())
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/readyz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)  # polling /readyz, not synchronising: the loop ends on the server's answer
        self.kill()
        raise RuntimeError("server not ready in time:\n" + self.output_tail())

    def _drain_output(self, stream) -> None:
        for line in stream:
            with self._new_output:
                self._tail.append(line)
                self._new_output.notify_all()
            if not self.url and (m := re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)):
                self.url = m.group(1)
                self._listening.set()
        self._listening.set()  # EOF: the server is gone; start() must not wait out its timeout

    def output_tail(self) -> str:
        """The server's last ``TAIL_LINES`` lines of output (stdout and stderr interleaved)."""
        return "".join(list(self._tail))

    def wait_for_output(self, text: str, timeout: float = 60) -> bool:
        """Whether ``text`` shows in the output tail within ``timeout`` seconds: the drain thread reads the
        server's pipe on its own schedule, behind what the server has written (seen in CI under load)."""
        with self._new_output:
            return self._new_output.wait_for(lambda: text in self.output_tail(), timeout)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the server; if it is still running 30 s later, kill it and what it started."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        process_tree.kill_tree(self.proc)
        if self._drain is not None:
            self._drain.join(30)

    def client(self, api_key: str | None = None):
        import deepseek as ds

        return ds.serve.Client(self.url, api_key=api_key, timeout=60)  # ds.serve loads on first use


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from safetensors.torch import save_model

    root = tmp_path_factory.mktemp("models")
    cfg = write_yaml(
        root / "digits.yaml",
        {
            "model": {"name": "simple_cnn", "in_channels": 1, "num_classes": 10, "width": 16},
            "data": {"name": "digits", "val_fraction": 0.2, "batch_size": 64},
            "optim": {"name": "adamw", "lr": 3e-3},
            "train": {"max_epochs": 2, "seed": 0},
            "logging": {"progress": "off", "tensorboard": False},
            "checkpoint": {"every_minutes": None, "save_best": False},
        },
    )
    r = run_cli("train", str(cfg), "--run-dir", str(root / "digits"))
    assert r.returncode == 0, r.stderr
    r = run_cli(
        "export",
        str(root / "digits" / "final" / "model.safetensors"),
        "--dynamic-batch",
        "--quantize",
        "int8",
        "--out",
        str(root / "digits" / "model.onnx"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    (root / "programs").mkdir()
    weights = str(root / "digits" / "final" / "model.safetensors")
    program = str(root / "programs" / "digits.pt2")
    r = run_cli("export", weights, "--format", "exported-program", "--dynamic-batch", "--out", program)
    assert r.returncode == 0, r.stdout + r.stderr
    from deepseek.registry import models

    torch.manual_seed(0)
    save_model(
        models.build("gpt2", vocab_size=30522, max_positions=64, dim=32, depth=2, heads=2), root / "gpt2.safetensors"
    )
    probe = save_code_model(root, "probe_model", "Probe", PROBE, "probe.safetensors", input_shape=[4])
    gpt2 = {"name": "gpt2", "vocab_size": 30522, "max_positions": 64, "dim": 32, "depth": 2, "heads": 2}
    write_yaml(
        root / "serve.yaml",
        {
            "models": [
                {"name": "digits", "path": "digits"},
                {
                    "name": "digits",
                    "version": "onnx",
                    "path": "digits/model.onnx",
                    "labels": [str(i) for i in range(10)],
                },
                {
                    "name": "gpt2",
                    "path": "gpt2.safetensors",
                    "model": gpt2,
                    "tokenizer": "minilm",
                    "max_new_tokens": 32,
                },
                {"name": "probe", **probe, "max_delay_ms": 100, "max_batch_size": 16},
                {"name": "slow", **probe, "max_queue": 2, "max_batch_size": 1},
            ]
        },
    )
    return root


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    jobs = tmp_path_factory.mktemp("jobs") / "jobs.sqlite"
    s = ServerProcess(model_dir, "--jobs-db", str(jobs), "--max-body-mb", "0.25").start()
    yield s
    s.kill(signal.SIGTERM)
