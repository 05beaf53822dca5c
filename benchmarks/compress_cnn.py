"""Every compression level x backend on two CNNs: the quick-start CNN (digits) and a CNN on real MNIST.

Each model is trained here first (the quick-start config; LeNet-5 on the 5,000 bundled MNIST
images), then ``deepseek.compress.report.compare`` measures every variant on the validation
split in one run: accuracy, output cosine to fp32, size on disk, median latency of one batch and
its ratio to fp32 eager. Rows: torch, ONNX Runtime, OpenVINO, ExecuTorch, LiteRT
(:mod:`deepseek.compress.targets`). The last lines check the INT8 targets and that OpenVINO is at least as
fast as ONNX Runtime at each level.

    python benchmarks/compress_cnn.py [--epochs 3] [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import deepseek as ds
from deepseek.compress.report import HEADER, compare
from deepseek.data.bundled import mnist

sys.path.insert(0, str(Path(__file__).parent))
from common import deploy_verdict, int8_verdict  # noqa: E402

LEVELS = ("fp32", "fp16", "int8", "int4")


def quickstart(epochs: int):
    trainer = ds.Trainer.from_config(str(Path(__file__).parents[1] / "configs" / "quickstart.yaml"),
                                     [f"train.max_epochs={epochs}", "logging.progress=off"])  # fmt: skip
    trainer.fit()
    return trainer.model, list(trainer.val_data), [b[0] for b in list(trainer.train_data)[:8]]


def mnist_cnn(epochs: int):
    splits = mnist()
    torch.manual_seed(0)
    model = ds.models.build("lenet5", num_classes=10)
    train = DataLoader(splits.train, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    ds.Trainer(model, torch.optim.AdamW(model.parameters(), lr=2e-3), max_epochs=epochs, progress="off").fit(train)
    return model, list(DataLoader(splits.val, batch_size=128)), [b[0] for b in list(train)[:8]]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    for name, build in (
        ("quick-start CNN on digits (batch 64)", quickstart),
        ("LeNet-5 on MNIST 28x28 (batch 128)", mnist_cnn),
    ):
        model, val, calib = build(args.epochs)
        print(f"\n{name}, torch {torch.__version__}, {torch.get_num_threads()} threads")
        print(HEADER)
        rows = compare(model.eval(), val, LEVELS, calib, method="percentile", repeats=args.repeats)
        print(int8_verdict(rows))
        print(deploy_verdict(rows, "cnn"))


if __name__ == "__main__":
    main()
