"""``Quantizer``: fp16/bf16, INT8 (static with calibration, or dynamic) and INT4 weight-only.

::

    quantized = Quantizer(model, method="kl", bit_width=8, calib_data=val_loader).compress()
    quantized = Quantizer(model, method="KL", bit_width=8, symmetric=False).compress()  # document 003
    Quantizer(model, act_quant="per_tensor", wt_quant="per_channel", calib_data=loader)  # document 001

Levels and the machinery under them:

- ``bit_width=16``: a copy cast to fp16 (``dtype="bf16"`` for bf16); inputs cast in, outputs out.
- ``bit_width=8`` with ``calib_data``: static INT8 through torchao's pt2e flow with
  ``X86InductorQuantizer`` (uint8 activations, int8 weights per channel or per tensor), the
  activation ranges chosen by :mod:`deepseek.compress.calibration` (``method``), then compiled by
  inductor (``ds.jit``, eager fallback) into int8 kernels.
- ``bit_width=8`` without ``calib_data``: activations quantized dynamically (per batch), and a
  message says so: pt2e's dynamic config when example inputs are known, else torchao's
  ``Int8DynamicActivationInt8WeightConfig``.
- ``backend="torchao"``: torchao's INT8 weight-only config (smaller, not faster on CPUs).
- ``backend="onnxruntime"``: exported and quantized by ONNX Runtime (dynamic INT8, per-channel
  weights); the result is an ``OnnxModule`` (an ORT session called like a module; ``.save(path)``).
- ``backend="openvino"``: exported to OpenVINO IR and quantized by NNCF post-training INT8, calibrated on
  ``calib_data`` (needs it or ``example_inputs``; transformers get NNCF's transformer preset); the result is
  an ``OpenVINOModule`` (``module(x)``, ``.save(path.xml)``; its files live in a temporary directory until
  the module is garbage-collected, so keep it with ``.save``, not by pickling). Needs the ``openvino`` extra.
- ``bit_width=4``: group-wise INT4 weight-only with packed storage (:mod:`deepseek.compress.int4`).
- ``bit_width=2`` / ``1``: ternary / binary weights, experimental (:mod:`deepseek.compress.lowbit`).

``backend="auto"`` (INT8) builds every candidate that applies (OpenVINO among them when openvino and
nncf are installed and inputs are known), times each against fp32 eager on a
calibration batch, and keeps the fastest whose relative output error stays within
``max_rel_error``; ``quantizer.report`` holds what was measured.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import torch
import torch.nn as nn

from deepseek.compress.calibration import METHODS, CalibrationObserver
from deepseek.compress.int4 import quantize_int4
from deepseek.compress.lowbit import quantize_lowbit
from deepseek.jit_compile import jit

BACKENDS = ("auto", "pt2e", "torchao", "onnxruntime", "openvino")


class LowPrecision(nn.Module):
    """``model`` in fp16/bf16; floating inputs are cast to that dtype and outputs back to fp32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model.to(dtype), dtype

    def forward(self, *args: Any) -> Any:
        cast = [a.to(self.dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
        out = self.model(*cast)
        return out.float() if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def size_bytes(model: nn.Module) -> int:
    """Bytes of the model's serialized ``state_dict`` (what a checkpoint of it takes on disk), or of
    its ONNX file for an ONNX Runtime module."""
    if callable(getattr(model, "size_bytes", None)):
        return int(model.size_bytes())
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def _inputs(batch: Any) -> Any:
    return batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else batch


class Quantizer:
    """See the module docstring. ``compress()`` returns a new model; ``model`` is not modified."""

    def __init__(
        self,
        model: nn.Module,
        method: str = "minmax",
        bit_width: int = 8,
        symmetric: bool = False,
        granularity: str = "per_channel",
        calib_data: Iterable[Any] | None = None,
        backend: str = "auto",
        *,
        dtype: str = "fp16",
        act_quant: str = "per_tensor",
        wt_quant: str | None = None,
        group_size: int = 32,
        example_inputs: Any = None,
        calib_batches: int = 8,
        max_rel_error: float = 0.05,
    ) -> None:
        method = method.lower()
        if method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if bit_width not in (16, 8, 4, 2, 1):
            raise ValueError(
                f"bit_width must be 16, 8, 4, or 2 / 1 (ternary / binary, experimental); got {bit_width!r}"
            )
        granularity = wt_quant or granularity
        if granularity not in ("per_tensor", "per_channel"):
            raise ValueError(f"granularity (wt_quant) must be 'per_tensor' or 'per_channel'; got {granularity!r}")
        if act_quant != "per_tensor":
            raise ValueError(f"act_quant must be 'per_tensor' (activations have one scale); got {act_quant!r}")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
        if dtype not in ("fp16", "bf16"):
            raise ValueError(f"dtype (for bit_width=16) must be 'fp16' or 'bf16'; got {dtype!r}")
        self.model, self.method, self.bit_width, self.symmetric = model, method, bit_width, symmetric
        self.per_channel, self.backend, self.dtype, self.group_size = (
            granularity == "per_channel",
            backend,
            dtype,
            group_size,
        )
        self.calib = [_inputs(b) for b in islice(calib_data, calib_batches)] if calib_data is not None else []
        self.example = example_inputs if example_inputs is not None else (self.calib[0] if self.calib else None)
        self.max_rel_error = max_rel_error
        self.report: dict[str, Any] = {}

    def compress(self) -> nn.Module:
        """The quantized model (a new object, in eval mode); the caller's model keeps its weights and
        each module's training flag."""
        with eval_mode(self.model):  # copies made inside are in eval mode; the flags come back after
            return self._compress()

    def _compress(self) -> nn.Module:
        if self.bit_width == 16:
            self.report = {"level": self.dtype, "backend": "torch"}
            return LowPrecision(copy.deepcopy(self.model), torch.float16 if self.dtype == "fp16" else torch.bfloat16)
        if self.bit_width == 4:
            self.report = {"level": "int4 weight-only", "backend": "torch (packed)", "group_size": self.group_size}
            return quantize_int4(copy.deepcopy(self.model), self.group_size)
        if self.bit_width in (1, 2):
            kind = "binary" if self.bit_width == 1 else "ternary"
            self.report = {"level": f"{kind} weights (experimental)", "backend": "torch (packed)"}
            return quantize_lowbit(copy.deepcopy(self.model), binary=self.bit_width == 1)
        candidates = self._int8_candidates()
        if len(candidates) == 1 or self.example is None:
            name, build = next(iter(candidates.items()))
            self.report = {"level": "int8", "backend": name}
            return build()
        return self._fastest(candidates)

    # ----------------------------------------------------------------------------------- int8
    def _int8_candidates(self) -> dict[str, Any]:
        weight_only = {"torchao int8 weight-only": self._torchao_weight_only}
        onnx = {"onnxruntime dynamic": self._onnxruntime} if self.example is not None else {}
        openvino = {"openvino nncf": self._openvino} if self.example is not None and openvino_installed() else {}
        if self.backend == "torchao":
            return weight_only
        if self.backend in ("onnxruntime", "openvino"):
            if self.example is None:
                raise ValueError(f"backend={self.backend!r} exports the model: pass calib_data or example_inputs")
            return onnx if self.backend == "onnxruntime" else {"openvino nncf": self._openvino}
        if not self.calib:
            note = f"; method {self.method!r} needs calibration data" if self.method != "minmax" else ""
            print(
                f"ds.compress: no calibration data: INT8 activations are quantized dynamically{note}", file=sys.stderr
            )
            dynamic = {"pt2e dynamic": lambda: self._pt2e(dynamic=True)} if self.example is not None else {}
            found = {**dynamic, "torchao dynamic": self._torchao_dynamic}
        else:
            found = {f"pt2e static ({self.method})": lambda: self._pt2e(dynamic=False)}
        if self.backend == "pt2e":
            return {k: v for k, v in found.items() if k.startswith("pt2e")} or found
        return {**found, **weight_only, **onnx, **openvino}

    def _pt2e(self, dynamic: bool) -> nn.Module:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.observer import MinMaxObserver
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        config = xiq.get_default_x86_inductor_quantization_config(is_dynamic=dynamic)
        if not dynamic:
            observer = CalibrationObserver.with_args(method=self.method, symmetric=self.symmetric, eps=2**-12)
            act = dataclasses.replace(config.input_activation, observer_or_fake_quant_ctr=observer)
            config = dataclasses.replace(config, input_activation=act, output_activation=act)
        if not self.per_channel:
            weight = dataclasses.replace(config.weight, qscheme=torch.per_tensor_symmetric, ch_axis=None,
                                         observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2**-12))  # fmt: skip
            config = dataclasses.replace(config, weight=weight)
        quantizer = xiq.X86InductorQuantizer().set_global(config)
        args = self.example if isinstance(self.example, tuple) else (self.example,)
        with torch.no_grad():
            graph = torch.export.export(
                copy.deepcopy(self.model).eval(), args, dynamic_shapes=batch_dynamic_shapes(args)
            ).module()
            try:
                prepared = prepare_pt2e(graph, quantizer)
            except (IndexError, KeyError, AssertionError) as err:  # torchao's pattern matcher, on some graphs
                raise RuntimeError(
                    f"torchao's X86InductorQuantizer could not annotate this model's graph ({type(err).__name__}: "
                    f"{err}); use backend='torchao', or ONNX Runtime INT8 (deepseek export --quantize int8)"
                ) from err
            for x in self.calib or [self.example]:
                prepared(*(x if isinstance(x, tuple) else (x,)))
            converted = drop_unused_weights(convert_pt2e(prepared))
        return jit(converted)  # inductor turns the quantize/dequantize pairs into int8 kernels

    def _onnxruntime(self) -> nn.Module:
        """Exported, ORT dynamic INT8, held in memory (an ``OnnxModule``: ``module(x)``, ``.save(path)``)."""
        from deepseek.export import OnnxModule, onnx_variant

        with tempfile.TemporaryDirectory() as tmp:
            variant = onnx_variant(self.model, self.example, tmp, "int8")
            return OnnxModule(variant.path.read_bytes())

    def _openvino(self) -> nn.Module:
        """Exported to OpenVINO IR, NNCF INT8 calibrated on the calibration inputs (an ``OpenVINOModule``)."""
        from deepseek.export.openvino import openvino_variant

        workdir = tempfile.TemporaryDirectory(prefix="ds-openvino-")  # removed when the module is collected
        variant = openvino_variant(self.model, self.example, workdir.name, "int8", calib=self.calib or [self.example])
        variant.workdir = workdir  # the compiled model reads nothing back, but size_bytes() and save() do
        return variant

    def _torchao_weight_only(self) -> nn.Module:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_

        model = copy.deepcopy(self.model)
        quantize_(model, Int8WeightOnlyConfig())
        return model

    def _torchao_dynamic(self) -> nn.Module:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

        model = copy.deepcopy(self.model)
        quantize_(model, Int8DynamicActivationInt8WeightConfig())
        return model

    # ---------------------------------------------------------------------------------- auto
    @torch.no_grad()
    def _fastest(self, candidates: dict[str, Any]) -> nn.Module:
        x = self.example if isinstance(self.example, tuple) else (self.example,)
        reference = self.model(*x)
        base_ms = median_ms(lambda: self.model(*x))
        measured: dict[str, dict[str, float]] = {}
        built: dict[str, nn.Module] = {}
        for name, build in candidates.items():
            try:
                model = build()
                out = model(*x)  # compiles, where it compiles
            except Exception as err:  # noqa: BLE001 - a backend that cannot run here is reported, not fatal
                measured[name] = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}  # type: ignore[dict-item]
                continue
            error = float((out.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-12))
            ms = median_ms(lambda m=model: m(*x))
            measured[name] = {"ms": ms, "speedup": base_ms / ms, "rel_error": error, "size_bytes": size_bytes(model)}
            built[name] = model
        if not built:
            raise RuntimeError(f"no INT8 backend ran here: {measured}")
        within = [n for n in built if measured[n]["rel_error"] <= self.max_rel_error]
        pick = (
            min(within, key=lambda n: measured[n]["ms"])
            if within
            else min(built, key=lambda n: measured[n]["rel_error"])
        )
        self.report = {"level": "int8", "backend": pick, "fp32_ms": base_ms, "candidates": measured}
        return built[pick]


def openvino_installed() -> bool:
    """Whether OpenVINO INT8 can run here: openvino and nncf are importable (checked without importing them)."""
    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "nncf"))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block, then every module's own training flag restored."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def drop_unused_weights(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Delete the fp32 weights that conversion replaced by int8 constants (no node reads them)."""
    graph.graph.eliminate_dead_code()
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name in [n for n, _ in [*graph.named_parameters(), *graph.named_buffers()] if n not in used]:
        owner, _, attr = name.rpartition(".")
        module = graph.get_submodule(owner) if owner else graph
        delattr(module, attr)
    graph.recompile()
    return graph


def batch_dynamic_shapes(args: tuple) -> tuple:
    """Any batch size: axis 0 of every tensor input (and of every tensor in a dict input) is dynamic."""

    def spec(a: Any) -> Any:
        if isinstance(a, dict):
            return {k: spec(v) for k, v in a.items()}
        return {0: torch.export.Dim.DYNAMIC} if isinstance(a, torch.Tensor) else None

    return tuple(spec(a) for a in args)


def median_ms(fn: Any, repeats: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)
