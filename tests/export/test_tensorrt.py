"""TensorRT's refusals on a machine without it (the engine itself is tested in tests/gpu/test_tensorrt.py)."""

from __future__ import annotations

import sys

import pytest
import torch

from deepseek.export.tensorrt import export_tensorrt


def test_without_a_gpu_the_error_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs an NVIDIA GPU") as err:
        export_tensorrt(torch.nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path / "x.ep")
    assert "\n" not in str(err.value)


def test_without_torch_tensorrt_the_error_names_the_matching_version(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch_tensorrt", None)  # import fails as if not installed
    with pytest.raises(ValueError, match=r"torch-tensorrt 2\.13\.x") as err:
        export_tensorrt(torch.nn.Linear(2, 2), (torch.randn(1, 2),), tmp_path / "x.ep")
    assert "\n" not in str(err.value)
