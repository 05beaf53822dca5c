"""``deepseek compress CONFIG --checkpoint CKPT --levels fp32,fp16,int8,int4 [--backends torch,openvino]``.

One table (terminal, ``report.json``, ``report.png``) of every level and backend (``--backends``: the
runtimes to measure, default all of torch, onnxruntime, openvino, executorch, litert) on the config's
validation data; with ``--max-accuracy-drop`` the fastest of the smallest variants (sizes within 5%
count as equal) within that many points of fp32 is rebuilt and saved: the runtime's own file for export
targets (``model.onnx``, ``model.xml`` + ``model.bin`` for OpenVINO, ``model.pte``, ``model.tflite``),
``model.pt`` (a pickled module: ``torch.load(path, weights_only=False)``) or, for pt2e graphs, which do not pickle,
``model.pt2`` (``import torchao.quantization.pt2e`` to register its int8 ops, then
``torch.export.load(path).module()``, and ``ds.jit`` it for the int8 kernels).
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
from itertools import islice
from pathlib import Path
from typing import Any

from deepseek.cli.errors import UsageError


def cmd_compress(args: argparse.Namespace) -> int:
    from deepseek.compress.report import HEADER, LEVELS, RUNTIMES, compare, pick, runtime_of, save_report, variants
    from deepseek.config import load_config
    from deepseek.train.build import build_loaders, build_model, load_trained_weights
    from deepseek.train.distributed import DistInfo

    levels = [lv.strip() for lv in args.levels.split(",") if lv.strip()]
    levels = ["fp32", *[lv for lv in levels if lv != "fp32"]]  # fp32 first: the baseline
    bad = [lv for lv in levels if lv not in LEVELS]
    if bad or "fp32" not in levels:
        raise UsageError(
            f"--levels {args.levels!r}: use fp32 plus any of {', '.join(LEVELS[1:])} (got {bad or levels})"
        )
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
    unknown = [b for b in backends or [] if b not in RUNTIMES]
    if unknown or backends == []:
        raise UsageError(f"--backends {args.backends!r}: use any of {', '.join(RUNTIMES)} (got {unknown or backends})")
    if not Path(args.checkpoint).exists():
        raise UsageError(f"--checkpoint '{args.checkpoint}': no such file or directory")
    cfg = load_config(args.config, args.overrides)
    model = load_trained_weights(build_model(cfg), args.checkpoint).eval()
    train, val = build_loaders(cfg, DistInfo())
    if val is None:
        raise UsageError("the config's dataset has no validation split (data.val_fraction is 0?)")
    val_batches, calib = list(islice(val, args.batches)), [b[0] for b in islice(train, 8)]
    print(HEADER)
    rows = compare(model, val_batches, levels, calib, method=args.method, repeats=args.repeats, backends=backends)
    chosen = pick(rows, args.max_accuracy_drop) if args.max_accuracy_drop is not None else None
    out = Path(args.out or Path(args.checkpoint).resolve().parent / "compress")
    save_report(rows, out, chosen)
    print(f"report: {out / 'report.json'}, chart: {out / 'report.png'}")
    if args.max_accuracy_drop is not None:
        if chosen is None:
            print(f"no variant is within {args.max_accuracy_drop} points of fp32")
            return 1
        with tempfile.TemporaryDirectory() as tmp:
            build, _, _ = variants(model, chosen["level"], calib, val_batches[0][0], args.method, Path(tmp))[
                chosen["backend"]
            ]
            saved = _save(build(), out, val_batches[0][0], runtime_of(chosen["backend"]))
        print(f"chosen: {chosen['level']} ({chosen['backend']}), {chosen['size_mb']:.3f} MB, "
              f"accuracy {chosen['accuracy']:.4f}, x{chosen['speedup']:.2f}: saved {saved}")  # fmt: skip
    return 0


def _save(variant: Any, out: Path, example: Any, runtime: str) -> Path:
    import torch

    from deepseek.compress.quantizer import batch_dynamic_shapes
    from deepseek.compress.targets import ARTIFACT_NAMES
    from deepseek.jit_compile import unjit

    if runtime in ARTIFACT_NAMES:  # an export target's row: its runtime's own file is the artifact
        return variant.save(out / ARTIFACT_NAMES[runtime])
    try:
        torch.save(variant, out / "model.pt")
        return out / "model.pt"
    except (AttributeError, TypeError, pickle.PicklingError):  # a pt2e graph does not pickle: export it
        (out / "model.pt").unlink(missing_ok=True)
        args = example if isinstance(example, tuple) else (example,)
        program = torch.export.export(unjit(variant), args, dynamic_shapes=batch_dynamic_shapes(args))
        torch.export.save(program, str(out / "model.pt2"))
        return out / "model.pt2"


def add_parser(sub: Any) -> None:
    p = sub.add_parser("compress", help="measure fp32/fp16/int8/int4 variants of a trained model; pick one")
    p.add_argument("config")
    p.add_argument("--checkpoint", required=True,
                   help="a checkpoint, a run directory, its final/ directory or a .safetensors file")  # fmt: skip
    p.add_argument("--levels", default="fp32,fp16,int8,int4", help="comma-separated (default fp32,fp16,int8,int4)")
    p.add_argument("--backends", default=None,
                   help="comma-separated runtimes to measure: torch,onnxruntime,openvino,executorch,litert "
                        "(default all; fp32 torch eager, the baseline, always runs)")  # fmt: skip
    p.add_argument("--max-accuracy-drop", type=float, default=None, help="points of accuracy you can give up")
    p.add_argument("--method", default="percentile", choices=("minmax", "percentile", "mse", "kl"),
                   help="INT8 activation calibration (default percentile)")  # fmt: skip
    p.add_argument("--batches", type=int, default=20, help="validation batches to measure on (default 20)")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per variant (default 20)")
    p.add_argument("--out", help="output directory (default: compress/ beside the checkpoint)")
    p.set_defaults(fn=cmd_compress, overrides=[])
