"""TensorRT (Torch-TensorRT) on a GPU: LeNet-5's engine matches torch at two batch sizes, in fp32 and fp16.

Skipped without CUDA or without torch-tensorrt (its libraries come from NVIDIA's index, so CI does not install
it); benchmarks/device_suite.sh runs it on a GPU machine."""

from __future__ import annotations

import pytest
import torch

import deepseek as ds
from deepseek.export.tensorrt import export_tensorrt, verify_tensorrt

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("fp16, atol", [(False, 1e-3), (True, 5e-2)])
def test_lenet_engine_matches_torch_on_two_batch_sizes(tmp_path, fp16, atol):
    pytest.importorskip("torch_tensorrt", reason="torch-tensorrt is not installed (pypi.nvidia.com)")
    torch.manual_seed(0)
    model = ds.models.build("lenet5", num_classes=10).eval()
    x = torch.randn(16, 1, 28, 28)
    path = export_tensorrt(model, (x,), tmp_path / "lenet.trt.ep", max_batch=32, fp16=fp16)
    assert path.stat().st_size > 0
    # TF32 and fp16 kernels round differently from torch's: a tolerance on the logits, and the same classes
    assert verify_tensorrt(path, model, (x,), fp16=fp16) < atol
    assert verify_tensorrt(path, model, (torch.randn(5, 1, 28, 28),), fp16=fp16) < atol

