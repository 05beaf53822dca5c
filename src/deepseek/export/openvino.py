"""OpenVINO IR export (``openvino.convert_model``), INT8 through NNCF post-training quantization, and an
``nn.Module`` that runs the IR on OpenVINO's CPU plugin.

::

    xml = export_openvino(model, (x,), "model.openvino.xml")            # model.openvino.xml + .bin, fp32
    diff = verify_openvino(xml, model, (x_other_batch,))                # max |openvino - torch|
    q = quantize_openvino(model, (x,), calib, "model.int8.openvino.xml")  # NNCF INT8, calib: list of inputs
    module = OpenVINOModule(xml)                                        # module(x) -> torch tensor, any batch

The IR keeps fp32 weights (``compress_to_fp16=False``) and the batch axis dynamic, so one file serves
every batch size. ds adds: dict-input models (MiniLM's ``{"input_ids", "attention_mask"}``) exported
positionally, the transformer preset of NNCF chosen from the model, verification against torch, and
fp32 inference by default.

Precision: OpenVINO's CPU plugin runs fp32 models in bf16 on CPUs with bf16 units (this machine's
default ``INFERENCE_PRECISION_HINT`` is bf16), which moved LeNet-5's logits by ~3e-4. :class:`OpenVINOModule`
asks for ``f32`` unless told otherwise, so fp32 matches torch within 1e-4 (max abs diff, CNN logits) /
cosine >= 0.9999; INT8 is checked by argmax agreement / cosine >= 0.99 instead.

Threads: OpenVINO's default count is kept (``PERFORMANCE_HINT=LATENCY``: one stream, one thread per
physical core), but not its CPU pinning (``ENABLE_CPU_PINNING=False``). Pinned threads oversubscribe
here: the process shares its cores with torch's intra-op pool (a server or ``compare()`` runs torch
models beside the IR) and with other processes, and a pinned thread waits for its own core while
another is idle. On this 2-core machine under load, unpinning took a quick-start CNN batch of 64 from
3.99 to 1.43 ms and MiniLM INT8 (32 x 48 tokens) from 219 to 159 ms (ONNX Runtime: 0.57 ms on the CNN).
``OpenVINOModule(path, config={...})`` passes any other CPU plugin property. A served model calls the
compiled model from one batching thread at a time; a lock guards the shared infer request, which is not
thread-safe.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from deepseek.export._variants import default_names, first_tensor, split_example
from deepseek.export.onnx import TensorInputs

EXTRA = "pip install 'deepseek-framework[openvino]'"


def _openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise ImportError(f"OpenVINO export needs the openvino package: {EXTRA}") from None
    _without_dataloader_sigchld_handler()
    return openvino


def _without_dataloader_sigchld_handler() -> None:
    """Keep torch's DataLoader from running its SIGCHLD handler in a process that has OpenVINO loaded.

    With both in one process (openvino 2026.4, torch 2.13), the first child process to exit after a DataLoader
    with workers has run (before or after OpenVINO was loaded) crashed the parent with SIGSEGV inside that
    Python-level handler: a ``subprocess.run`` in a test, or a forked rank. The handler is only torch's fast path
    for noticing a dead worker (a DataLoader still sees one through its queue timeouts), so it is removed, and
    torch's flag that it is installed is set so that later DataLoaders do not put it back.
    """
    import signal

    from torch.utils.data._utils import signal_handling

    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be changed from the main thread
    current = signal.getsignal(signal.SIGCHLD)
    if getattr(current, "__qualname__", "") == "_set_SIGCHLD_handler.<locals>.handler":
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal_handling._SIGCHLD_handler_set = True


def _nncf() -> Any:
    try:
        import nncf
    except ImportError:
        raise ImportError(f"OpenVINO INT8 quantization needs the nncf package: {EXTRA}") from None
    return nncf


def _names(inputs: Sequence[torch.Tensor], input_names: Sequence[str] | None) -> list[str]:
    names = list(input_names or default_names(len(inputs)))
    if len(names) != len(inputs):
        raise ValueError(f"input_names has {len(names)} names for {len(inputs)} inputs")
    return names


def _convert(model: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], dynamic_batch: bool) -> Any:
    """The in-memory ``openvino.Model`` of ``model`` traced on ``inputs``; inputs renamed to ``names``."""
    ov = _openvino()
    shapes = [ov.PartialShape([-1 if dynamic_batch else t.shape[0], *t.shape[1:]]) for t in inputs]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # nn.TransformerEncoder's eval fast path traces to nested-tensor ops OpenVINO has no conversion for
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # the tracer's TracerWarnings about shape-dependent Python code
            converted = ov.convert_model(model.eval(), example_input=tuple(inputs), input=shapes)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    for port, name in zip(converted.inputs, names):
        port.get_tensor().set_names({name})
    return converted


def export_openvino(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
    dynamic_batch: bool = True,
) -> Path:
    """Convert ``model`` (eval mode) traced on ``inputs`` to an fp32 OpenVINO IR at ``path`` (``.xml``; its
    weights go to the ``.bin`` beside it). ``dynamic_batch`` makes axis 0 of every input dynamic (the other
    axes keep ``inputs``' sizes). A model that takes a dict: wrap it in :class:`TensorInputs`."""
    ov = _openvino()
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"path '{path}': an OpenVINO IR path ends in .xml (the weights go beside it in .bin)")
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = tuple(inputs)
    converted = _convert(model, inputs, _names(inputs, input_names), dynamic_batch)
    ov.save_model(converted, str(path), compress_to_fp16=False)  # fp32 stays fp32
    return path


def is_transformer(model: nn.Module) -> bool:
    """Whether NNCF's transformer preset fits: the model has attention layers or takes a dict of inputs."""
    if isinstance(model, TensorInputs):
        return True
    return any(isinstance(m, nn.MultiheadAttention) or "attention" in type(m).__name__.lower() for m in model.modules())


def quantize_openvino(
    model: nn.Module,
    inputs: tuple[torch.Tensor, ...],
    calib: Sequence[Any],
    path: str | Path,
    *,
    input_names: Sequence[str] | None = None,
) -> Path:
    """NNCF post-training INT8 of ``model`` (converted as in :func:`export_openvino`), saved at ``path``.

    ``calib``: a non-empty list of inputs like ``inputs`` (each a tensor, a tuple of tensors in
    ``input_names`` order, or a dict by input name), typically a few training batches; every item is used
    (``subset_size=len(calib)`` batches). Transformers (:func:`is_transformer`) get
    ``nncf.ModelType.TRANSFORMER``, which keeps the accuracy-sensitive ops (softmax, layer norm) in
    floating point. NNCF's progress bars and log lines are kept off stdout.
    """
    ov, nncf = _openvino(), _nncf()
    path = Path(path)
    if path.suffix != ".xml":
        raise ValueError(f"path '{path}': an OpenVINO IR path ends in .xml (the weights go beside it in .bin)")
    if not calib:
        raise ValueError("calib: give at least one calibration input for INT8 quantization")
    inputs = tuple(inputs)
    names = _names(inputs, input_names)
    converted = _convert(model, inputs, names, dynamic_batch=True)
    samples = [_as_arrays(item, names) for item in calib]
    kwargs: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER} if is_transformer(model) else {}
    nncf_log = logging.getLogger("nncf")
    level, nncf_log.level = nncf_log.level, logging.ERROR
    try:  # NNCF draws rich progress bars on stdout/stderr
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            quantized = nncf.quantize(converted, nncf.Dataset(samples), subset_size=len(samples), **kwargs)
    finally:
        nncf_log.level = level
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def _as_arrays(item: Any, names: Sequence[str]) -> list[np.ndarray]:
    """One input (tensor, tuple of tensors or dict by name) as numpy arrays in ``names`` order."""
    if isinstance(item, dict):
        missing = [n for n in names if n not in item]
        if missing:
            raise ValueError(f"input dict lacks {missing}; the model takes {list(names)}")
        item = tuple(item[n] for n in names)
    elif isinstance(item, torch.Tensor):
        item = (item,)
    if len(item) != len(names):
        raise ValueError(f"got {len(item)} input tensors; the model takes {len(names)} ({list(names)})")
    return [t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t) for t in item]


def ir_weights_path(path: str | Path) -> Path:
    """The ``.bin`` file that holds an IR's weights, beside its ``.xml``."""
    return Path(path).with_suffix(".bin")


class OpenVINOModule(nn.Module):
    """An OpenVINO IR compiled once for the CPU plugin behind an ``nn.Module`` call.

    ``module(*tensors)`` (in the IR's input order) or ``module({name: tensor})`` -> the first output as a
    CPU float torch tensor (N, ...). Any batch size when the IR was exported with a dynamic batch (the
    default of :func:`export_openvino`). ``precision="f32"`` (default) keeps OpenVINO from running fp32
    models in bf16; ``None`` leaves the plugin's choice. ``config``: further CPU plugin properties (they
    override ours: ``{"ENABLE_CPU_PINNING": True}``, ``{"INFERENCE_NUM_THREADS": 1}``). One call runs at a
    time (a lock guards the infer request).
    """

    def __init__(
        self, path_xml: str | Path, *, precision: str | None = "f32", config: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        ov = _openvino()
        self.path = Path(path_xml)
        if not self.path.is_file() or not ir_weights_path(self.path).is_file():
            raise FileNotFoundError(f"'{self.path}': an OpenVINO IR needs the .xml and its .bin beside it")
        self.precision, self.config = precision, dict(config or {})
        self._compile(ov)

    def _compile(self, ov: Any) -> None:
        config: dict[str, Any] = {"ENABLE_CPU_PINNING": False}  # see the module docstring: pinning oversubscribes
        if self.precision:
            config["INFERENCE_PRECISION_HINT"] = self.precision
        self.compiled = ov.Core().compile_model(str(self.path), "CPU", {**config, **self.config})
        self.input_names = [port.get_any_name() for port in self.compiled.inputs]
        self._request = self.compiled.create_infer_request()
        self._lock = threading.Lock()

    def forward(self, *inputs: Any) -> torch.Tensor:
        item = inputs[0] if len(inputs) == 1 and isinstance(inputs[0], dict) else tuple(inputs)
        arrays = _as_arrays(item, self.input_names)
        with self._lock:
            result = self._request.infer(arrays)
            out = np.array(result[self.compiled.outputs[0]])  # copied: the request reuses its output buffer
        return torch.from_numpy(out).float()

    def extra_repr(self) -> str:
        return f"'{self.path}', precision={self.precision!r}"

    def size_bytes(self) -> int:
        """Bytes on disk: the ``.xml`` graph plus the ``.bin`` weights."""
        return self.path.stat().st_size + ir_weights_path(self.path).stat().st_size

    def save(self, path: str | Path) -> Path:
        """Copy the IR to ``path`` (``.xml``) and its weights to the ``.bin`` beside it."""
        path = Path(path)
        if path.suffix != ".xml":
            raise ValueError(f"path '{path}': an OpenVINO IR path ends in .xml (the weights go beside it in .bin)")
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(self.path, path)
        shutil.copy(ir_weights_path(self.path), ir_weights_path(path))
        return path

    def __getstate__(self) -> dict[str, Any]:  # compiled models do not pickle: reload from the files
        return {k: v for k, v in self.__dict__.items() if k not in ("compiled", "_request", "_lock")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._compile(_openvino())


@torch.no_grad()
def verify_openvino(path: str | Path, model: nn.Module, inputs: Sequence[torch.Tensor]) -> float:
    """Largest absolute difference between OpenVINO's first output (fp32 inference) and torch's on ``inputs``."""
    expected = first_tensor(model.eval()(*inputs)).float().cpu()
    got = OpenVINOModule(path)(*inputs)
    if got.shape != expected.shape:
        raise ValueError(f"OpenVINO output shape {tuple(got.shape)} differs from torch's {tuple(expected.shape)}")
    return float((got - expected).abs().max())


def openvino_variant(
    model: nn.Module, example: Any, workdir: str | Path, quantize: str | None = None, calib: Sequence[Any] | None = None
) -> OpenVINOModule:
    """``model`` exported to ``workdir/model.openvino.xml`` (any batch size) and compiled for OpenVINO's CPU
    plugin; with ``quantize="int8"`` NNCF INT8 (``workdir/model.int8.openvino.xml``) calibrated on ``calib``
    (a list of inputs like ``example``; ``[example]`` when not given). ``example``: a tensor, a tuple of
    tensors or a dict of tensors (MiniLM's inputs)."""
    if quantize not in (None, "int8"):
        raise ValueError(f"quantize={quantize!r}: OpenVINO takes None (fp32) or 'int8'")
    workdir = Path(workdir)
    names, tensors = split_example(example)
    if isinstance(example, dict):  # export takes the tensors positionally
        model = TensorInputs(model, names).eval()
    if quantize == "int8":
        path = quantize_openvino(model, tensors, list(calib or [example]), workdir / "model.int8.openvino.xml",
                                 input_names=names)  # fmt: skip
    else:
        path = export_openvino(model, tensors, workdir / "model.openvino.xml", input_names=names)
    return OpenVINOModule(path)
