"""Quantization-aware training: ``prepare_qat`` inserts fake quantization, ``convert`` makes it INT8.

::

    qat_model = ds.compress.prepare_qat(model, example_inputs=x)
    ds.Trainer(qat_model, ...).fit(train, val)          # trains with INT8 rounding in the loop
    int8_model = ds.compress.convert(qat_model)

Built on torchao's pt2e QAT flow with ``X86InductorQuantizer`` (the same quantizer as static
INT8), so the converted model runs through the same int8 inductor kernels. The exported graph
cannot switch train/eval mode by itself; :class:`QATModel` does it with torchao's helpers, so the
Trainer's ``model.train()`` / ``model.eval()`` work.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from deepseek.compress.quantizer import batch_dynamic_shapes, drop_unused_weights
from deepseek.jit_compile import jit


class QATModel(nn.Module):
    """An exported, fake-quantized model that the Trainer can put in train and eval mode."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True) -> QATModel:
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

        (move_exported_model_to_train if mode else move_exported_model_to_eval)(self.graph)
        self.training = mode
        return self

    def forward(self, *args: Any) -> Any:
        return self.graph(*args)


def prepare_qat(model: nn.Module, example_inputs: Any) -> QATModel:
    """Export ``model`` (any batch size) and insert fake quantization for training."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    graph = torch.export.export(model.train(), args, dynamic_shapes=batch_dynamic_shapes(args)).module()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=True))
    return QATModel(prepare_qat_pt2e(graph, quantizer)).train()


def convert(model: QATModel) -> nn.Module:
    """The trained QAT model as INT8 (compiled by inductor, eager fallback)."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model.eval()
    return jit(drop_unused_weights(convert_pt2e(model.graph)))
