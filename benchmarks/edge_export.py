"""Edge targets beside torch eager: ExecuTorch (XNNPACK) fp32 and INT8 run in ExecuTorch's runtime, and the
Core ML packages' sizes (Core ML cannot predict on Linux, so no latency for it).

Models: the quick-start CNN (digits, trained ``--epochs``), LeNet-5 (bundled MNIST, trained ``--epochs``) and,
with ``--minilm``, MiniLM's sentence embeddings (pretrained; 32 texts x 48 tokens). Quality: validation
accuracy for the CNNs, cosine to torch's embeddings for MiniLM; ``max|d|`` is the largest absolute difference
from torch on the timed batch. Latency: median of ``--repeats`` runs of one validation batch, same process,
same inputs, the variants timed in turn within each round (the machine is shared, so the load falls on
all alike); the ratio is eager's time over the row's (> 1: faster).

    python benchmarks/edge_export.py [--epochs 1] [--repeats 30] [--minilm]
"""

from __future__ import annotations

import argparse
import io
import logging
import statistics
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deepseek.export.coreml import describe_coreml, export_coreml
from deepseek.export.executorch import ExecuTorchModule, executorch_variant, export_executorch

sys.path.insert(0, str(Path(__file__).parent))
from compress_cnn import mnist_cnn, quickstart  # noqa: E402

HEADER = f"{'variant':<30} {'size MB':>9} {'ms/batch':>9} {'vs eager':>9} {'quality':>16} {'max|d|':>9}"


def _call(module: nn.Module, x: Any) -> torch.Tensor:
    with torch.no_grad():
        return module(x)


def _quality(module: nn.Module, batches: list, task: str, reference: nn.Module) -> str:
    if task == "embedding":
        cos = [torch.nn.functional.cosine_similarity(_call(module, x), _call(reference, x), dim=-1) for x, _ in batches]
        return f"cosine {torch.cat(cos).mean().item():.4f}"
    right = sum((_call(module, x).argmax(-1) == y).sum().item() for x, y in batches)
    return f"accuracy {right / sum(len(y) for _, y in batches):.4f}"


class OneThread(nn.Module):
    """``model`` run with one intra-op thread: on a loaded 2-core machine eager's 2 threads wait on each other."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Any) -> torch.Tensor:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self.model(x)
        finally:
            torch.set_num_threads(threads)


def _torch_size(model: nn.Module) -> int:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def interleaved_ms(fns: list, repeats: int, warmup: int = 3) -> list[float]:
    """Median milliseconds of each of ``fns``, timed in turn within each round, so that the load of other
    processes on this shared machine falls on all of them alike."""
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                record.append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def bench(name: str, model: nn.Module, val: list, calib: list, repeats: int, task: str, workdir: Path) -> None:
    model = model.eval()
    x = val[0][0]
    size = _torch_size(model)
    rows: list[tuple[str, nn.Module, int]] = [
        ("torch eager fp32", model, size),
        ("torch eager 1 thread", OneThread(model), size),
    ]
    variants: list[tuple[str, dict]] = [
        ("executorch xnnpack fp32", {}),
        ("executorch xnnpack int8", {"quantize": "int8"}),
    ]
    # executorch_variant quantizes dict-input models' activations per batch; the other mode, for comparison:
    dynamic = not isinstance(x, dict)
    variants.append((f"executorch int8 {'dynamic' if dynamic else 'static'} act", {"dynamic_activations": dynamic}))
    failures = []
    for label, options in variants:
        try:
            if "dynamic_activations" in options:
                names = list(x) if isinstance(x, dict) else None
                out = workdir / f"{label.replace(' ', '_')}.pte"
                path = export_executorch(model, x, out, quantize="int8", calib=calib, input_names=names,
                                         max_batch=len(val[0][1]), **options)  # fmt: skip
                module: nn.Module = ExecuTorchModule(path, input_names=names)
            else:
                module = executorch_variant(model, x, workdir / label.replace(" ", "_"), calib=calib, **options)
            rows.append((label, module, module.size_bytes()))
        except Exception as e:  # a converter failure is a row, not a crash
            failures.append(f"{label:<30} failed: {str(e).splitlines()[0][:150]}")
    latencies = interleaved_ms([lambda m=module: _call(m, x) for _, module, _ in rows], repeats)
    expected = _call(model, x)
    print(f"\n{name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(HEADER)
    for (label, module, size), ms in zip(rows, latencies):
        diff = (_call(module, x) - expected).abs().max().item()
        quality = _quality(module, val, task, model)
        print(f"{label:<30} {size / 1e6:>9.3f} {ms:>9.2f} {latencies[0] / ms:>8.2f}x {quality:>16} {diff:>9.2e}")
    for failure in failures:
        print(failure)
    for quantize in (None, "int8"):
        label = f"coreml {quantize or 'fp32'} (no predict)"
        try:
            info = describe_coreml(export_coreml(model, x, workdir / f"{quantize}.mlpackage", quantize=quantize))
            ops = ", ".join(f"{k} {v}" for k, v in sorted(info["ops"].items()) if k != "const")
            print(f"{label:<30} {info['size_bytes'] / 1e6:>9.3f}   ops: {ops}")
        except Exception as e:
            print(f"{label:<30} failed: {str(e).splitlines()[0][:200]}")


def minilm() -> tuple[nn.Module, list, list]:
    from compress_minilm import Embedder

    from deepseek.config import load_config
    from deepseek.train.build import build_loaders, build_model
    from deepseek.train.distributed import DistInfo

    cfg = load_config(str(Path(__file__).parents[1] / "configs" / "minilm_lora.yaml"), ["model.lora_rank=0"])
    train, val = build_loaders(cfg, DistInfo())
    return Embedder(build_model(cfg)).eval(), list(islice(val, 4)), [b[0] for b in islice(train, 8)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--minilm", action="store_true", help="also MiniLM (its exports take minutes)")
    args = p.parse_args()
    logging.getLogger("coremltools").setLevel(logging.CRITICAL)  # its converter logs each failure before raising
    cases = [("quick-start CNN on digits (batch 64)", quickstart, "classification"),
             ("LeNet-5 on MNIST 28x28 (batch 128)", mnist_cnn, "classification")]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, build, task in cases:
            model, val, calib = build(args.epochs)
            bench(name, model, val, calib, args.repeats, task, Path(tmp) / name.split()[0])
        if args.minilm:
            model, val, calib = minilm()
            bench("MiniLM-L6 embeddings (32 texts x 48 tokens)", model, val, calib, args.repeats, "embedding",
                  Path(tmp) / "minilm")  # fmt: skip


if __name__ == "__main__":
    main()
