"""Progressive mixed precision vs fp32 vs plain fp16 on a model with an overflow-prone layer.

The model's ``amplify`` layer outputs activations around 1e5: fine in fp32 (a LayerNorm follows),
beyond fp16's largest number (65504). Plain fp16 autocast overflows on every step, and the loss
scaler cannot help (the overflow is in the forward pass, not the gradients). Progressive precision
sees the first overflow, runs that one layer in fp32 and keeps the rest in fp16.

    python examples/progressive_precision.py [--steps 600] [--run-dir runs/progressive] [--out cmp.json]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import deepseek as ds
from deepseek.data.datasets import synthetic_classification


class Planted(nn.Module):
    """An MLP on 32 features, 4 classes, whose ``amplify`` layer is scaled by ``gain``."""

    def __init__(self, gain: float = 3e5) -> None:
        super().__init__()
        self.inp, self.amplify = nn.Linear(32, 128), nn.Linear(128, 128)
        self.norm, self.out = nn.LayerNorm(128), nn.Linear(128, 4)
        with torch.no_grad():
            self.amplify.weight.mul_(gain)
            self.amplify.bias.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: (batch, 32) -> logits (batch, 4)."""
        return self.out(torch.relu(self.norm(self.amplify(torch.relu(self.inp(x))))))


def fit(precision: str, steps: int, run_dir: str | None = None, on_nonfinite: str = "stop") -> dict:
    splits = synthetic_classification(class_sep=0.5)
    torch.manual_seed(0)
    model = Planted()
    train = DataLoader(splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    trainer = ds.Trainer(
        model, torch.optim.AdamW(model.parameters(), lr=1e-3), precision=precision, max_steps=steps,
        max_epochs=None, scheduler=lambda opt, n: torch.optim.lr_scheduler.CosineAnnealingLR(opt, n),
        val_every_epochs=None, progress="off", run_dir=run_dir, tensorboard=False, checkpoint_every_minutes=None,
        on_nonfinite=on_nonfinite,
    )  # fmt: skip
    return trainer.fit(train, DataLoader(splits.val, batch_size=512))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--run-dir", default=None, help="where the progressive run writes metrics.jsonl")
    p.add_argument("--out", default=None, help="write the three summaries here as JSON")
    args = p.parse_args()
    results = {
        "fp32": fit("fp32", args.steps),
        "fp16-mixed": fit("fp16-mixed", args.steps, on_nonfinite="ignore"),  # fails on purpose: its loss is nan
        "progressive": fit("progressive", args.steps, args.run_dir),
    }
    base = results["fp32"]["val"]["loss"]
    print(f"{'precision':<13}{'val loss':>10}{'vs fp32':>9}{'val acc':>9}{'skipped steps':>15}  fp32 modules")
    for name, r in results.items():
        loss = r["val"]["loss"]
        print(f"{name:<13}{loss:>10.4f}{loss / base - 1:>+9.2%}{r['val']['accuracy']:>9.3f}"
              f"{r.get('skipped_steps', 0):>15}  {', '.join(r.get('fp32_modules', [])) or '-'}")  # fmt: skip
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
