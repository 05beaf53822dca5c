"""``deepseek.compress`` without torchao (Distiller needs none), and torchao's import noise kept out of stderr."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO


def _python(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.slow  # a fresh interpreter importing torch and torchao
def test_distiller_works_when_torchao_cannot_be_imported():
    r = _python("""
        import sys
        sys.modules["torchao"] = None  # importing torchao now raises ImportError
        import torch, torch.nn as nn
        import deepseek.compress.prune  # the submodule named like the function must not shadow it
        from deepseek.compress import Distiller, prune, quantize_int4
        assert callable(prune) and callable(quantize_int4)
        teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
        loss, logits, targets = Distiller(teacher, student).step(student, (torch.randn(2, 4), torch.tensor([0, 2])))
        loss.backward()
        assert logits.shape == (2, 3) and student.weight.grad is not None
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


@pytest.mark.slow  # a fresh interpreter importing torch and torchao
def test_importing_the_quantizer_shows_no_third_party_noise():
    pytest.importorskip("torchao")
    r = _python("""
        from deepseek.compress import Quantizer
        import torchao.quantization.pt2e.quantize_pt2e
        print("ok")
    """)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    for noise in ("Failed to load", "register_constant"):
        assert noise not in r.stderr
