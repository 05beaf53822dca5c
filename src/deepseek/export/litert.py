"""LiteRT (TFLite) export (``.tflite``) through ``litert-torch``, fp32 or INT8, verified in the ``ai-edge-litert``
interpreter.

::

    path = export_litert(model, (x,), "model.tflite")                                   # fp32
    path = export_litert(model, (x,), "model.int8.tflite", quantize="int8", calib=[x1, x2])
    module = LiteRTModule(path)          # runs in ai_edge_litert.interpreter, never in torch
    logits = module(x_any_batch)

The converter is litert-torch's own: ``litert_torch.convert(model, sample_args).export(path)``. INT8 takes one
of two routes (``dynamic_activations``; by default static for a CNN given ``calib``, dynamic otherwise):

- static: litert-torch's ``PT2EQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True)``
  through torchao's pt2e flow (``prepare_pt2e``, calibration on ``calib``, ``convert_pt2e``), handed to the
  converter as a ``QuantConfig``: weights and activations INT8, the fastest CNN file. Such a model takes and
  returns INT8 tensors; :class:`LiteRTModule` quantizes float inputs and dequantizes the outputs with the scale
  and zero point stored in the file, so callers always pass and get floats.
- dynamic: ai-edge-quantizer's ``dynamic_wi8_afp32`` recipe on the converted fp32 file (:func:`quantize_litert`):
  weights INT8 per channel, activations quantized at run time, no calibration. On MiniLM the static route kept a
  cosine of only 0.93 to torch and litert-torch's dynamic PT2E config gave a file the interpreter refused
  (EMBEDDING_LOOKUP with a non-zero zero point), while this recipe kept 0.998, so transformers take this route.

Installing: the interpreter is ``ai-edge-litert`` (``pip install 'deepseek-framework[litert]'``). The converter
``litert-torch`` 0.10.0 (the releases that accept torch 2.13 are 0.10.0 and 0.9.4, which also needs
ai-edge-litert<2.3; 0.9.3 and older need torch<2.13) requires ``litert-converter==0.5.*`` and
``ai-edge-litert[model-utils]``, both of which require ``xdsl==0.28.0``, which requires ``typing-extensions<4.13``
(0.9.4's ``litert-converter==0.4.*`` too); pip therefore downgrades typing_extensions to 4.12.2 and pydantic to
2.11.10 (pydantic 2.14 requires typing-extensions>=4.16). Without the converter,
:class:`LiteRTModule` and :func:`quantize_litert` (ai-edge-quantizer needs no xdsl) still work on an existing
``.tflite``; export raises an ImportError naming the install.

Batch size: ``litert_torch.convert(..., dynamic_shapes=...)`` failed on LeNet-5 under torch 2.13 (a JAX tracer
error: "Shapes must be 1D sequences of concrete values"), so models are exported with the example's fixed batch.
:class:`LiteRTModule` runs any batch in chunks of that size, zero-padding the last chunk and dropping the padding
rows. It does not use ``resize_tensor_input``: on such a file the XNNPACK delegate then fails to prepare.
Tolerances (tests): fp32 max |LiteRT - torch| <= 1e-4 on CNN logits; INT8 argmax agreement and cosine >= 0.99.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from deepseek.export._variants import SingleFileModule, as_tuple, require
from deepseek.export.onnx import TensorInputs
from deepseek.export.openvino import is_transformer

INSTALL_HINT = "pip install 'deepseek-framework[litert]'"
CONVERTER_HINT = (
    "pip install litert-torch==0.10.0 (it pins xdsl==0.28.0 -> typing-extensions<4.13, so pip downgrades "
    "typing_extensions to 4.12.2 and pydantic to 2.11.10; use a separate environment)"
)
QUANTIZER_HINT = "pip install ai-edge-quantizer==0.10.* (it installs beside the project's pins)"
QUANTIZE_CHOICES = (None, "int8")


def _interpreter_class() -> Any:
    interpreter = require("ai_edge_litert.interpreter", f"LiteRT needs the ai-edge-litert interpreter: {INSTALL_HINT}")
    return interpreter.Interpreter


def _converter() -> Any:
    return require("litert_torch", f"LiteRT export needs the litert-torch converter: {CONVERTER_HINT}")


@contextlib.contextmanager
def _quiet_converter(litert_torch: Any) -> Iterator[None]:
    """Hide the converter's per-stage progress lines; print them only if conversion fails."""
    shown = litert_torch.config.show_progress
    litert_torch.config.show_progress = False
    progress = io.StringIO()
    # a pt2e-converted GraphModule cannot be put in eval mode (torch raises), so the converter warns through the
    # root logger that it is "converted in training mode"; it was traced from the model in eval mode
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR
    try:
        with contextlib.redirect_stdout(progress):
            yield
    except Exception:
        print(progress.getvalue(), end="")
        raise
    finally:
        litert_torch.config.show_progress = shown
        root.level = level


def _rebatch(calib: Sequence[Any], rows: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The calibration rows in batches of exactly ``rows`` (the exported program's fixed batch), the last one
    filled up cyclically from the first rows: calibration batches often differ in size from the example."""
    items = [as_tuple(c) for c in calib]
    tensors = [torch.cat([item[i] for item in items]) for i in range(len(items[0]))]
    total = tensors[0].shape[0]
    for start in range(0, total, rows):
        index = torch.arange(start, start + rows) % total
        yield tuple(t[index] for t in tensors)


def _quantized_pt2e(model: nn.Module, inputs: tuple[torch.Tensor, ...], calib: Sequence[Any]) -> tuple[Any, Any]:
    """``model`` through torchao's pt2e flow with litert-torch's PT2EQuantizer (static INT8, per-channel weights),
    calibrated on ``calib``. Returns (the converted GraphModule, the quantizer)."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, inputs).module(), quantizer)
    with torch.no_grad():
        for batch in _rebatch(calib, inputs[0].shape[0]):
            prepared(*batch)
    converted = convert_pt2e(prepared, fold_quantize=False)
    return move_exported_model_to_eval(converted), quantizer


def export_litert(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    quantize: str | None = None,
    calib: Sequence[Any] | None = None,
    input_names: Sequence[str] | None = None,
    dynamic_activations: bool | None = None,
) -> Path:
    """Convert ``model`` (eval mode) called on ``inputs`` (each (B, ...)) to a ``.tflite`` file at ``path``.

    The file has a fixed batch B (see the module docstring). ``quantize="int8"``: static INT8 calibrated on
    ``calib`` (a list of inputs like ``inputs``), or with ``dynamic_activations`` INT8 weights and run-time
    activation quantization (ai-edge-quantizer); None picks dynamic for a transformer or when ``calib`` is None.
    ``input_names`` only orders a dict ``inputs`` (the file's inputs are ``args_0``, ``args_1``, ... in order).
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported; choose one of {list(QUANTIZE_CHOICES)}")
    litert_torch = _converter()
    model = model.eval()
    inputs = as_tuple(inputs, input_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if dynamic_activations is None:
        dynamic_activations = not calib or is_transformer(model)
    if quantize == "int8" and dynamic_activations:
        fp32 = export_litert(model, inputs, path.with_name(path.stem + ".fp32.tflite"))
        quantize_litert(fp32, path)
        fp32.unlink()
        return path
    with _quiet_converter(litert_torch):
        if quantize == "int8":
            from litert_torch.quantize.quant_config import QuantConfig

            converted, quantizer = _quantized_pt2e(model, inputs, calib or [inputs])
            edge = litert_torch.convert(converted, inputs, quant_config=QuantConfig(pt2e_quantizer=quantizer))
        else:
            edge = litert_torch.convert(model, inputs)
        edge.export(str(path))
    return path


def quantize_litert(src: str | Path, dst: str | Path, recipe: str = "dynamic_wi8_afp32") -> Path:
    """Quantize a ``.tflite`` file with an ai-edge-quantizer recipe (default: INT8 weights per channel, activations
    quantized at run time; ``weight_only_wi8_afp32``: INT8 weights dequantized to fp32) and write it to ``dst``."""
    needs = f"LiteRT INT8 needs ai-edge-quantizer: {QUANTIZER_HINT}"
    quantizer, recipes = require("ai_edge_quantizer.quantizer", needs), require("ai_edge_quantizer.recipe", needs)
    allowed = ("dynamic_wi8_afp32", "weight_only_wi8_afp32")
    if recipe not in allowed:
        raise ValueError(f"recipe={recipe!r} is not supported; choose one of {list(allowed)}")
    engine = quantizer.Quantizer(str(src))
    engine.load_quantization_recipe(getattr(recipes, recipe)())
    chatter = io.StringIO()  # a size summary on stdout, progress bars on stderr
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
        engine.quantize().export_model(str(dst), overwrite=True)
    return Path(dst)


def _arg_order(name: str) -> tuple[int, str]:
    """``args_10`` after ``args_9``: the converter names positional inputs ``args_<i>``."""
    match = re.fullmatch(r"args_(\d+)", name)
    return (int(match.group(1)), name) if match else (1 << 30, name)


def _to_runtime(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A float/int array as the interpreter's input wants it: quantized with the file's scale and zero point
    for an INT8 input, else cast to its dtype."""
    dtype = detail["dtype"]
    scale, zero = detail["quantization"]
    if scale and np.issubdtype(dtype, np.integer) and np.issubdtype(array.dtype, np.floating):
        info = np.iinfo(dtype)
        return np.clip(np.round(array / scale) + zero, info.min, info.max).astype(dtype)
    return array.astype(dtype, copy=False)


def _from_runtime(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if scale and np.issubdtype(array.dtype, np.integer):
        return (array.astype(np.float32) - zero) * np.float32(scale)
    return array


class LiteRTModule(SingleFileModule, nn.Module):
    """A ``.tflite`` file run by ``ai_edge_litert.interpreter.Interpreter`` behind an ``nn.Module`` call.

    ``module(*tensors)`` (each (N, ...)) or ``module({name: tensor})`` (names in ``input_names`` order, else the
    dict's order) -> the first output as a CPU float tensor (N, ...). The file has a fixed batch B: any N runs in
    chunks of B rows, the last one zero-padded and the padding rows dropped. INT8 inputs and outputs are
    (de)quantized with the file's own scale and zero point. ``num_threads``: torch's thread count by default.
    """

    def __init__(
        self, path: str | Path, input_names: Sequence[str] | None = None, num_threads: int | None = None
    ) -> None:
        super().__init__()
        self.path, self.input_names = Path(path), list(input_names) if input_names else None
        self.num_threads = num_threads or torch.get_num_threads()
        self._load()

    def _load(self) -> None:
        interpreter = _interpreter_class()(model_path=str(self.path), num_threads=self.num_threads)
        signatures = interpreter.get_signature_list()
        key = next(iter(signatures))
        self._runner = interpreter.get_signature_runner(key)
        self._inputs = sorted(signatures[key]["inputs"], key=_arg_order)
        self._output = signatures[key]["outputs"][0]
        self._input_details = self._runner.get_input_details()
        self._output_detail = self._runner.get_output_details()[self._output]
        self.batch = int(self._input_details[self._inputs[0]]["shape"][0])

    def _run(self, arrays: list[np.ndarray]) -> np.ndarray:
        feeds = {n: _to_runtime(a, self._input_details[n]) for n, a in zip(self._inputs, arrays)}
        return _from_runtime(self._runner(**feeds)[self._output], self._output_detail)

    def forward(self, *inputs: Any) -> torch.Tensor:
        tensors = as_tuple(inputs[0], self.input_names) if len(inputs) == 1 else as_tuple(inputs)
        if len(tensors) != len(self._inputs):
            raise ValueError(f"{self.path.name} takes {len(self._inputs)} inputs, got {len(tensors)}")
        arrays = [t.detach().cpu().numpy() for t in tensors]
        rows, outputs = arrays[0].shape[0], []
        for start in range(0, rows, self.batch):
            chunk = [a[start : start + self.batch] for a in arrays]
            short = self.batch - chunk[0].shape[0]
            if short:  # the file's batch is fixed: pad with zero rows, drop their outputs below
                chunk = [np.concatenate([c, np.zeros((short, *c.shape[1:]), c.dtype)]) for c in chunk]
            outputs.append(self._run(chunk)[: self.batch - short])
        return torch.from_numpy(np.concatenate(outputs).astype(np.float32, copy=False))

    def __getstate__(self) -> dict[str, Any]:  # the interpreter does not pickle: reload from the file
        return {"path": self.path, "input_names": self.input_names, "num_threads": self.num_threads}

    def __setstate__(self, state: dict[str, Any]) -> None:
        nn.Module.__init__(self)
        self.path, self.input_names, self.num_threads = state["path"], state["input_names"], state["num_threads"]
        self._load()


def litert_variant(
    model: nn.Module,
    example: Any,
    workdir: str | Path,
    quantize: str | None = None,
    calib: Sequence[Any] | None = None,
) -> LiteRTModule:
    """``model`` converted to LiteRT (fp32, or ``quantize="int8"`` calibrated on ``calib``) and loaded in the
    interpreter. ``example``: a tensor, a tuple of tensors or a dict of tensors (MiniLM's inputs); its batch is
    the file's fixed batch."""
    names = list(example) if isinstance(example, dict) else None
    if names:
        model = TensorInputs(model, names).eval()
    tensors = as_tuple(example, names)
    calib_tuples = [as_tuple(c, names) for c in calib] if calib else None
    name = "model.int8.tflite" if quantize == "int8" else "model.tflite"
    path = export_litert(model, tensors, Path(workdir) / name, quantize=quantize, calib=calib_tuples)
    return LiteRTModule(path, input_names=names)
