"""fp32 vs bf16 vs fp16 autocast: training step and inference time per device, side by side.

For each device (CPU, and CUDA when present) and each model (an MLP and a small Transformer
encoder), times a training step (forward, backward, AdamW step; fp16 with ``GradScaler``) and an
inference forward (``eval()``, ``no_grad``) in fp32 and under ``torch.autocast`` to bf16 and fp16,
and prints each as a ratio of fp32's time (above 1: faster than fp32). Each time is the median
of ``--repeats`` runs after warm-up.

    python benchmarks/precision.py [--batch 64] [--repeats 10]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).parent))
from common import devices, median_ms, models  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench(
    model: nn.Module, shape: tuple[int, ...], device: str, batch: int, repeats: int
) -> dict[str, tuple[float, float]]:
    model = model.to(device)
    x = torch.randn(batch, *shape, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    out: dict[str, tuple[float, float]] = {}
    for name, dtype in DTYPES.items():
        cast = (lambda d=dtype: torch.autocast(device, dtype=d)) if dtype else contextlib.nullcontext
        scaler = torch.amp.GradScaler(device, enabled=dtype == torch.float16)

        def train_step(cast=cast, scaler=scaler) -> None:
            model.train()
            with cast():
                loss = nn.functional.cross_entropy(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)

        def infer(cast=cast) -> None:
            model.eval()
            with torch.no_grad(), cast():
                model(x)

        out[name] = (median_ms(train_step, device, repeats), median_ms(infer, device, repeats))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.manual_seed(0)
    print(f"{'device':<7}{'model':<26}{'precision':<11}{'train ms':>10}{'x fp32':>8}{'infer ms':>10}{'x fp32':>8}")
    for device in devices():
        for label, (model, shape) in models().items():
            results = bench(model, shape, device, args.batch, args.repeats)
            base_train, base_infer = results["fp32"]
            for name, (train, infer) in results.items():
                print(f"{device:<7}{label:<26}{name:<11}{train:>10.2f}{base_train / train:>8.2f}"
                      f"{infer:>10.2f}{base_infer / infer:>8.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
