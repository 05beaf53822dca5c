"""``deepseek export CKPT --format onnx|exported-program|openvino|executorch|litert|coreml``: the model of a
run, exported and verified in the target's own runtime.

The run's ``config.yaml`` (found beside or above CKPT, or given with ``--config``) rebuilds the
model; a validation batch from its data is the sample input, and the export is checked against
torch on it (and on a smaller batch with ``--dynamic-batch``). Exit code 1 when the largest
difference is above ``--atol``. ``--quantize int8`` also writes an INT8 file (ONNX Runtime dynamic;
OpenVINO NNCF, ExecuTorch and LiteRT calibrated on ``--calib-batches`` training batches; Core ML
weights only); its argmax agreement and cosine with torch are printed, not held to ``--atol``. Core ML
cannot predict off macOS: its program's inputs, outputs and ops are printed instead (see
:mod:`deepseek.cli.export_targets`). A ``config.yaml`` found beside CKPT came with the run: code it names
by import path is imported only with ``--trust-code`` (a ``--config`` the user gives may name any).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from deepseek.cli.errors import UsageError


def find_config(checkpoint: Path) -> Path:
    for folder in [checkpoint if checkpoint.is_dir() else checkpoint.parent, *checkpoint.resolve().parents][:5]:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise UsageError(f"no config.yaml beside or above '{checkpoint}'; pass --config")


def _sample(cfg: Any, calib_batches: int = 0) -> tuple[Any, list[Any]]:
    """A validation batch's inputs (the training set's when there is no validation split) and the inputs
    of the first ``calib_batches`` training batches (INT8 calibration)."""
    from itertools import islice

    from deepseek.train.batching import split_batch
    from deepseek.train.build import build_loaders
    from deepseek.train.distributed import DistInfo

    train, val = build_loaders(cfg, DistInfo())
    inputs, _ = split_batch(next(iter(val if val is not None else train)))
    return inputs, [split_batch(b)[0] for b in islice(train, calib_batches)]


def cmd_export(args: argparse.Namespace) -> int:
    from deepseek.cli.export_targets import TARGETS, require
    from deepseek.config import load_config
    from deepseek.config.trust import directory_code, load_directory_config
    from deepseek.export import (
        TensorInputs,
        export_onnx,
        export_program,
        external_data_path,
        onnx_size,
        optimize_onnx,
        quantize_onnx,
        verify_onnx,
    )  # fmt: skip
    from deepseek.train.build import build_model, load_trained_weights

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise UsageError(f"'{ckpt}': no such checkpoint, run directory or weights file")
    if args.quantize and args.format == "exported-program":
        raise UsageError("--quantize int8: not for --format exported-program; use onnx, openvino, executorch, litert "
                         "or coreml")  # fmt: skip
    if args.optimize and args.format != "onnx":
        raise UsageError(f"--optimize: ONNX Runtime's graph optimizations are for --format onnx, not {args.format}")
    if args.format in TARGETS:
        require(args.format, args.quantize)  # before the model and data are built
    trusted = bool(args.config) or args.trust_code  # the user's own --config, or the operator trusts the run's
    if args.config:
        cfg = load_config(args.config, args.overrides)
    else:
        cfg = load_directory_config(find_config(ckpt), args.overrides, trust_code=trusted)
    with directory_code(trusted):  # the model and the dataset of the sample batch
        model = load_trained_weights(build_model(cfg), ckpt).eval()
        calibrated = args.quantize and args.format in ("openvino", "executorch", "litert")
        inputs, calib = _sample(cfg, args.calib_batches if calibrated else 0)
    if isinstance(inputs, dict):  # e.g. MiniLM's {"input_ids", "attention_mask"}
        names = list(inputs)
        model, tensors = TensorInputs(model, names).eval(), tuple(inputs[n] for n in names)
        calib = [tuple(b[n] for n in names) for b in calib]
    else:
        names, tensors = ["input"], (inputs,)
        calib = [(b,) for b in calib]
    smaller = tuple(t[: max(1, t.shape[0] // 2 - 1)] for t in tensors)
    if args.format in TARGETS:
        return _export_target(args, ckpt, model, tensors, names, calib, smaller)
    suffix = ".onnx" if args.format == "onnx" else ".pt2"
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / f"model{suffix}"
    checks = [("sample batch", tensors)] + (
        [("batch of " + str(smaller[0].shape[0]), smaller)] if args.dynamic_batch else []
    )
    if args.format == "exported-program":
        export_program(
            model, tensors, out, dynamic={i: {0: "batch"} for i in range(len(names))} if args.dynamic_batch else None
        )
        program = torch.export.load(str(out)).module()
        diffs = {label: _max_diff(program(*x), model(*x)) for label, x in checks}
    else:
        dynamic = {n: {0: "batch"} for n in names} if args.dynamic_batch else None
        export_onnx(model, tensors, out, input_names=names, dynamic=dynamic, opset=args.opset)
        diffs = {label: verify_onnx(out, model, x) for label, x in checks}
        if args.optimize:
            optimized = optimize_onnx(out, out.with_suffix(".opt.onnx"))
            diffs.update({f"optimized, {label}": verify_onnx(optimized, model, x) for label, x in checks})
    size = onnx_size(out) if args.format == "onnx" else out.stat().st_size
    data = external_data_path(out)
    if args.format == "onnx" and data.exists():  # over ONNX's 2 GB single-file limit
        print(f"exported {out} with its weights in {data.name} ({size / 2**20:.2f} MiB): copy both files together")
    else:
        print(f"exported {out} ({size / 2**20:.2f} MiB, one self-contained file)")
    for label, diff in diffs.items():
        print(f"  max |export - torch| on the {label}: {diff:.2e}")
    if args.format == "onnx" and args.quantize:
        q = quantize_onnx(out, out.with_suffix(".int8.onnx"), model, tensors)
        tried = ", ".join(f"{k} {v:.2e}" for k, v in q["tried"].items())
        print(f"int8 {q['path']} ({q['path'].stat().st_size / 2**20:.2f} MiB): weights {q['weight_type']} "
              f"per channel (max |diff| tried: {tried})")  # fmt: skip
    worst = max(diffs.values())
    if worst > args.atol:
        print(f"error: the export differs from torch by {worst:.2e} > --atol {args.atol:g}")
        return 1
    return 0


def _export_target(
    args: argparse.Namespace, ckpt: Path, model: Any, tensors: tuple, names: list[str], calib: list, smaller: tuple
) -> int:
    """OpenVINO, ExecuTorch, LiteRT or Core ML: export, verify in the target's runtime, optionally INT8."""
    from deepseek.cli import export_targets as targets

    fmt = args.format
    out = Path(args.out) if args.out else (ckpt if ckpt.is_dir() else ckpt.parent) / targets.TARGETS[fmt].filename
    try:
        path = targets.export_target(fmt, model, tensors, out, names, dynamic_batch=args.dynamic_batch)
    except RuntimeError as exc:  # the converter refused the model: its reason, not a traceback
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"exported {path} ({targets.artifact_size(path) / 2**20:.2f} MiB)")
    checks = [("sample batch", tensors)] + (
        [(f"batch of {smaller[0].shape[0]}", smaller)] if args.dynamic_batch else []
    )
    diffs: dict[str, float] = {}
    with torch.no_grad():
        if fmt == "coreml":
            print("\n".join(targets.describe(fmt, path)))
        else:
            runtime = targets.load_runtime(fmt, path)
            diffs = {label: targets.max_diff(runtime(*x), model(*x)) for label, x in checks}
        for label, diff in diffs.items():
            print(f"  max |export - torch| on the {label}: {diff:.2e}")
        if args.quantize:
            if calib:
                rows = sum(x[0].shape[0] for x in calib)
                print(f"int8: calibrating on {rows} samples ({len(calib)} training batches)")
            try:
                q = targets.quantize_target(fmt, model, tensors, calib, targets.int8_path(path), names)
            except RuntimeError as exc:  # the quantizer or converter refused the model
                print(f"error: int8: {str(exc).splitlines()[0]}", file=sys.stderr)
                return 1
            print(f"int8 {q} ({targets.artifact_size(q) / 2**20:.2f} MiB)")
            if fmt == "coreml":
                print("\n".join(targets.describe(fmt, q)))
            else:
                close = targets.agreement(targets.load_runtime(fmt, q)(*tensors), model(*tensors))
                print(f"  on the sample batch: {close}")
    worst = max(diffs.values(), default=0.0)
    if worst > args.atol:
        print(f"error: the export differs from torch by {worst:.2e} > --atol {args.atol:g}")
        return 1
    return 0


@torch.no_grad()
def _max_diff(a: Any, b: Any) -> float:
    a, b = (x[0] if isinstance(x, (tuple, list)) else x for x in (a, b))
    return float((a.float() - b.float()).abs().max())


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, got {text!r}")
    return int(text)


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained model (ONNX, torch.export, OpenVINO, ExecuTorch, LiteRT, "
        "Core ML), verified in the target's runtime",
    )
    p.add_argument("checkpoint", help="a checkpoint, a run directory, its final/ directory or a .safetensors file")
    p.add_argument(
        "--format", default="onnx", choices=("onnx", "exported-program", "openvino", "executorch", "litert", "coreml")
    )
    p.add_argument("--config", help="the run's config (default: config.yaml beside or above CKPT)")
    p.add_argument("--trust-code", action="store_true",
                   help="import code (module:Class) named by the config.yaml found beside CKPT")  # fmt: skip
    p.add_argument("--dynamic-batch", action="store_true", help="any batch size (checked on a second one)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    p.add_argument(
        "--out",
        help="output file (default: model.onnx, model.pt2, model.openvino.xml, model.pte, "
        "model.tflite or model.mlpackage beside the checkpoint)",
    )
    p.add_argument("--optimize", action="store_true", help="also save ORT's graph-optimized model (.opt.onnx)")
    p.add_argument(
        "--quantize",
        choices=("int8",),
        help="also save an INT8 model beside the fp32 one (model.int8.onnx, model.int8.openvino.xml, ...)",
    )
    p.add_argument(
        "--calib-batches",
        type=_positive,
        default=8,
        help="training batches that calibrate INT8 for openvino, executorch and litert (default 8)",
    )
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed difference from torch (default 1e-4)")
    p.set_defaults(fn=cmd_export, overrides=[])
