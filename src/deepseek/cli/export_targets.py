"""The runtimes ``deepseek export --format`` writes for besides ONNX and ``torch.export``: OpenVINO IR,
ExecuTorch ``.pte``, LiteRT ``.tflite`` and Core ML ``.mlpackage``.

Each :class:`Target` names its packages (checked before any work, so a missing one is one ``error:``
line with the extra to install), how it exports fp32 and INT8, and the module that runs the file in its
own runtime for verification. Core ML has no runtime off macOS: its converted program is described
instead (inputs, outputs, op counts). The exporters live in ``deepseek.export.*`` and are imported only
when their format is asked for.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepseek.cli.errors import UsageError
from deepseek.export.openvino import is_transformer

Tensors = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Target:
    """One ``--format``: default file name, packages (import names) and the ``deepseek.export`` functions."""

    filename: str  # default output beside the checkpoint; INT8 goes to int8_path(filename)
    packages: tuple[str, ...]
    int8_packages: tuple[str, ...]  # needed only with --quantize int8
    extra: str  # pip install 'deepseek-framework[extra]' installs them
    module: str  # deepseek.export submodule holding the functions below
    export: str  # export(model, inputs, path, *, input_names=..., [quantize=, calib=]) -> Path
    runtime: str | None  # class(path) -> nn.Module running the file; None: no runtime on this OS


TARGETS: dict[str, Target] = {
    "openvino": Target("model.openvino.xml", ("openvino",), ("nncf",), "openvino", "openvino", "export_openvino",
                       "OpenVINOModule"),
    "executorch": Target("model.pte", ("executorch",), (), "executorch", "executorch", "export_executorch",
                         "ExecuTorchModule"),
    "litert": Target("model.tflite", ("ai_edge_litert", "litert_torch"), (), "litert", "litert", "export_litert",
                     "LiteRTModule"),
    "coreml": Target("model.mlpackage", ("coremltools",), (), "coreml", "coreml", "export_coreml", None),
}  # fmt: skip


def require(fmt: str, quantize: str | None) -> None:
    """Refuse, before any work, a format whose packages are not installed: one line naming the extra."""
    target = TARGETS[fmt]
    needed = target.packages + (target.int8_packages if quantize else ())
    missing = [p for p in needed if importlib.util.find_spec(p) is None]
    if missing == ["litert_torch"]:  # the converter does not install beside this torch's pins (see its module)
        raise UsageError(f"--format litert needs the litert-torch converter: {LITERT_CONVERTER}")
    if missing:
        raise UsageError(f"--format {fmt} needs {', '.join(missing)}: pip install 'deepseek-framework[{target.extra}]'")


LITERT_CONVERTER = ("pip install litert-torch==0.10.0, in an environment of its own: it downgrades typing_extensions "
                    "and pydantic (see deepseek.export.litert)")  # fmt: skip


def _function(target: Target, name: str) -> Callable[..., Any]:
    """``deepseek.export.<module>.<name>``; an ImportError it raises (a package it needs) becomes a usage error."""
    from deepseek.compress.quiet import quiet_third_party_noise

    quiet_third_party_noise()  # torchao (loaded by the pt2e quantizers) logs lines that say nothing about the export
    try:
        function = getattr(importlib.import_module(f"deepseek.export.{target.module}"), name)
    except ImportError as exc:
        raise UsageError(f"--format {target.module}: {exc}") from None

    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except ImportError as exc:
            raise UsageError(f"--format {target.module}: {str(exc).splitlines()[0]}") from None

    return call


def int8_path(path: Path) -> Path:
    """``model.openvino.xml`` -> ``model.int8.openvino.xml``, ``model.pte`` -> ``model.int8.pte``: the INT8
    file beside the fp32 one, named as serving reads it (label ``int8-openvino``, ``int8``)."""
    first, _, rest = path.name.partition(".")
    return path.with_name(f"{first}.int8.{rest}" if rest else f"{first}.int8")


def artifact_size(path: Path) -> int:
    """Bytes on disk: an OpenVINO IR is its .xml and .bin, an .mlpackage a directory."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.exists() else 0)


def export_target(
    fmt: str, model: nn.Module, tensors: Tensors, out: Path, names: Sequence[str], *, dynamic_batch: bool
) -> Path:
    """Write the fp32 file of ``fmt`` to ``out``."""
    target = TARGETS[fmt]
    export = _function(target, target.export)
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "openvino":
        return export(model, tensors, out, input_names=names, dynamic_batch=dynamic_batch)
    if fmt == "coreml":  # its batch range must hold the sample batch
        return export(model, tensors, out, input_names=names, max_batch=max(32, tensors[0].shape[0]))
    return export(model, tensors, out, input_names=names)


def quantize_target(
    fmt: str, model: nn.Module, tensors: Tensors, calib: list[Tensors], out: Path, names: Sequence[str]
) -> Path:
    """Write the INT8 file of ``fmt`` to ``out``, calibrated on ``calib`` (inputs in ``names`` order)."""
    target = TARGETS[fmt]
    if fmt == "openvino":
        return _function(target, "quantize_openvino")(model, tensors, calib, out, input_names=names)
    export = _function(target, target.export)
    if fmt == "coreml":  # weights only: no calibration data
        return export(model, tensors, out, quantize="int8", input_names=names, max_batch=max(32, tensors[0].shape[0]))
    if fmt == "executorch" and is_transformer(model):  # fixed activation scales: cosine 0.87 on MiniLM; per batch 0.999
        return export(model, tensors, out, quantize="int8", calib=calib, input_names=names, dynamic_activations=True)
    return export(model, tensors, out, quantize="int8", calib=calib, input_names=names)


def load_runtime(fmt: str, path: Path) -> nn.Module:
    """The module that runs ``path`` in the format's own runtime."""
    target = TARGETS[fmt]
    assert target.runtime is not None
    return _function(target, target.runtime)(path)


@torch.no_grad()
def max_diff(got: Any, expected: Any) -> float:
    """Largest absolute difference between two first outputs."""
    got, expected = (x[0] if isinstance(x, (tuple, list)) else x for x in (got, expected))
    if got.shape != expected.shape:
        raise ValueError(f"the export's output shape {tuple(got.shape)} differs from torch's {tuple(expected.shape)}")
    return float((got.float() - expected.float()).abs().max())


@torch.no_grad()
def agreement(got: torch.Tensor, expected: Any) -> str:
    """How close an INT8 output (N, ...) is to torch's: argmax agreement (logits) and the worst row's cosine."""
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    got, expected = got.float().flatten(1), expected.float().flatten(1)
    cosine = float(F.cosine_similarity(got, expected, dim=1).min())
    same = float((got.argmax(1) == expected.argmax(1)).float().mean())
    return f"argmax agreement with torch {same:.1%}, cosine min {cosine:.4f}"


def describe(fmt: str, path: Path) -> list[str]:
    """Core ML: the converted program's inputs, outputs and op counts, as printed lines."""
    info = _function(TARGETS[fmt], "describe_coreml")(path)
    lines = []
    for kind in ("inputs", "outputs"):
        for io in info[kind]:
            lines.append(f"  {kind[:-1]} {io['name']}: shape {list(io['shape'])} {io['dtype']}")
    ops = info["ops"]
    top = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: -kv[1])[:8])
    lines.append(f"  {sum(ops.values())} ops ({top})")
    lines.append("  not run here: Core ML prediction needs macOS (the program's spec was checked instead)")
    return lines
