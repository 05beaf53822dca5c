"""The serve fixture itself: a server that logs a lot keeps answering, and its last lines reach failures."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import write_yaml
from tests.serve.conftest import ServerProcess, save_code_model

CHATTY = '''
import sys
import torch
import torch.nn as nn

class Chatty(nn.Module):
    """(N, 4) -> (N, 4); every forward writes about 200 KB of log lines to stdout."""
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
    def forward(self, x):
        for i in range(1000):
            print(f"chatty line {i:04d} " + "x" * 180, file=sys.stdout)
        return x * self.scale
'''


@pytest.fixture
def chatty_dir(tmp_path: Path) -> Path:
    spec = save_code_model(tmp_path, "chatty_model", "Chatty", CHATTY, "chatty.safetensors", input_shape=[4])
    write_yaml(tmp_path / "serve.yaml", {"models": [{"name": "chatty", **spec}]})
    return tmp_path


@pytest.mark.slow  # a server of its own: about 15 s
def test_a_server_that_logs_megabytes_keeps_answering(chatty_dir: Path):
    # A pipe holds 64 KB: if the fixture stops reading after the readiness line, the server's next
    # write blocks the forward pass and the request never returns (httpx's timeout fails the test).
    s = ServerProcess(chatty_dir).start()
    try:
        for i in range(10):  # 10 x 200 KB = 2 MB of output
            r = httpx.post(s.url + "/v1/models/chatty/predict", json={"instances": [[i, 1, 2, 3]]}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["predictions"][0] == [i, 1, 2, 3]
        assert s.wait_for_output("chatty line 0999"), s.output_tail()[-300:]
    finally:
        s.kill(signal.SIGTERM)
