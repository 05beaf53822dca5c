"""Structured pruning of the quick-start CNN: parameters, MACs, latency and accuracy, before and after.

Trains the quick-start config, then for each importance (L1, L2, Taylor) prunes a copy to
``--sparsity`` of its channels, measures it, fine-tunes it for ``--finetune-epochs`` and measures
again. Latency is the median of ``--repeats`` forward passes on one validation batch of 64, timed
alternately with the unpruned model in the same process.

    python benchmarks/prune_cnn.py [--sparsity 0.5] [--finetune-epochs 3] [--repeats 50]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch

import deepseek as ds
from deepseek.compress import prune


def accuracy(model: torch.nn.Module, batches: list) -> float:
    with torch.no_grad():
        return sum(int((model(x).argmax(1) == y).sum()) for x, y in batches) / sum(len(y) for _, y in batches)


def latencies(models: list[torch.nn.Module], x: torch.Tensor, repeats: int) -> list[float]:
    times: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for _ in range(repeats):
            for i, m in enumerate(models):  # alternate, so load changes hit every model alike
                start = time.perf_counter()
                m(x)
                times[i].append((time.perf_counter() - start) * 1e3)
    return [statistics.median(t) for t in times]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.5)
    p.add_argument("--finetune-epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=50)
    args = p.parse_args()
    config = str(Path(__file__).parents[1] / "configs" / "quickstart.yaml")
    trainer = ds.Trainer.from_config(config, ["logging.progress=off"])
    trainer.fit()
    base = trainer.model.eval()
    val = list(trainer.val_data)
    x = val[0][0]
    calib = next(iter(trainer.train_data))
    rows = []
    for importance in ("l1", "l2", "taylor"):
        model = copy.deepcopy(base)
        report = prune(model, x[:2], sparsity=args.sparsity, importance=importance, calib_batch=calib)
        pruned_acc = accuracy(model.eval(), val)
        tuner = ds.Trainer(
            model, torch.optim.AdamW(model.parameters(), lr=1e-3), max_epochs=args.finetune_epochs, progress="off"
        )
        tuner.fit(trainer.train_data)
        rows.append((importance, model.eval(), report, pruned_acc, accuracy(model, val)))
    times = latencies([base] + [r[1] for r in rows], x, args.repeats)
    print(
        f"quick-start CNN, sparsity {args.sparsity}, fine-tuned {args.finetune_epochs} epochs, torch {torch.__version__}"
    )
    print(f"{'model':<14}{'params':>10}{'MMACs':>9}{'latency ms':>12}{'x':>7}{'acc pruned':>12}{'acc tuned':>11}")
    first = rows[0][2]
    print(f"{'unpruned':<14}{first.params_before:>10,}{first.macs_before / 1e6:>9.2f}{times[0]:>12.3f}{1.0:>7.2f}"
          f"{'':>12}{accuracy(base, val):>11.4f}")  # fmt: skip
    for (name, _, report, pruned_acc, tuned_acc), ms in zip(rows, times[1:]):
        print(f"{name:<14}{report.params_after:>10,}{report.macs_after / 1e6:>9.2f}{ms:>12.3f}{times[0] / ms:>7.2f}"
              f"{pruned_acc:>12.4f}{tuned_acc:>11.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
