"""Images/s of one vision augmentation pipeline applied per sample in DataLoader workers vs applied
to whole batches, in the same run on the same generated images.

    python benchmarks/data_throughput.py [--images 4096] [--batch 128] [--workers 2]

Per sample: DistributedDataset(collate_fn=pipeline) runs the pipeline on each image inside the
workers (seeded per sample). Batched: the loader only stacks images and the pipeline runs once per
batch in the main process (kornia draws different parameters for every image of a batch).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from deepseek.data import DistributedDataset, Pipeline

STEPS = [
    {"type": "RandomResizedCrop", "params": {"size": 28, "scale": (0.6, 1.0)}},
    {"type": "RandomHorizontalFlip", "params": {"p": 0.5}},
    {"type": "ColorJitter", "params": {"brightness": 0.2, "contrast": 0.2}},
    {"type": "GaussianNoise", "params": {"sigma": 0.03}},
    {"type": "Normalize", "params": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}},
]


def per_sample(data: TensorDataset, batch: int, workers: int) -> tuple[float, tuple[int, ...]]:
    loader = DistributedDataset(data, batch_size=batch, num_workers=workers, collate_fn=Pipeline(STEPS), seed=0)
    return timed(loader, lambda b: b[0])


def batched(data: TensorDataset, batch: int) -> tuple[float, tuple[int, ...]]:
    pipeline = Pipeline(STEPS)
    loader = DataLoader(data, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
    return timed(loader, lambda b: pipeline(b[0]))


def timed(loader, step) -> tuple[float, tuple[int, ...]]:
    shape: tuple[int, ...] = ()
    for i, _ in enumerate(loader):  # warm-up: worker start, first kernel calls
        if i == 2:
            break
    n, t0 = 0, time.perf_counter()
    for _ in range(2):
        for b in loader:
            out = step(b)
            n, shape = n + out.shape[0], tuple(out.shape[1:])
    return n / (time.perf_counter() - t0), shape


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(
        torch.rand(args.images, 3, 32, 32, generator=g), torch.randint(0, 10, (args.images,), generator=g)
    )
    rows = [
        (f"per sample, {args.workers} DataLoader workers", *per_sample(data, args.batch, args.workers)),
        ("per sample, in the main process", *per_sample(data, args.batch, 0)),
        ("whole batches, in the main process", *batched(data, args.batch)),
    ]
    print(
        f"data throughput: {args.images} generated 3x32x32 images, batch {args.batch}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; pipeline: " + " -> ".join(s["type"] for s in STEPS)
    )
    base = rows[0][1]
    print(f"{'':40}{'images/s':>12}{'vs per-sample workers':>24}   output")
    for name, rate, shape in rows:
        print(f"{name:40}{rate:>12,.0f}{rate / base:>23.2f}x   {shape}")


if __name__ == "__main__":
    main()
