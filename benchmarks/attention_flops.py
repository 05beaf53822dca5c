"""Attention FLOPs (counted by torch.utils.flop_counter) and CPU time: dense vs the sparse patterns of
ds.nn, in the same run, on the same q, k, v.

    python benchmarks/attention_flops.py [--length 1024] [--window 64] [--heads 8] [--head-dim 64]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from deepseek.nn import block_sparse_attention, local_global_layout, sliding_window_attention


def dense(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def measure(fn, repeats: int = 7) -> tuple[int, float]:
    with FlopCounterMode(display=False) as counter:
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return counter.get_total_flops(), statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    args = p.parse_args()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, args.heads, args.length, args.head_dim, generator=g) for _ in range(3))
    layout = local_global_layout(args.length // args.window)
    rows = [
        ("dense (matmul softmax matmul)", lambda: dense(q, k, v)),
        ("dense (torch SDPA, fused)", lambda: F.scaled_dot_product_attention(q, k, v)),
        (f"sliding window +-{args.window}", lambda: sliding_window_attention(q, k, v, args.window)),
        (f"sliding window, causal {args.window}", lambda: sliding_window_attention(q, k, v, args.window, causal=True)),
        (
            f"block-sparse {args.window}, local 1 + global 1",
            lambda: block_sparse_attention(q, k, v, args.window, layout),
        ),
    ]
    results = [(name, *measure(fn)) for name, fn in rows]
    base_flops, base_time = results[0][1], results[0][2]
    print(
        f"attention core: L={args.length}, {args.heads} heads x {args.head_dim}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    print(f"{'':40}{'GFLOPs':>10}{'vs dense':>10}{'ms':>10}{'speed-up':>10}")
    for name, flops, t in results:
        shown = f"{flops / 1e9:10.3f}{base_flops / flops:>9.2f}x" if flops else f"{'(n/c)':>10}{'':>10}"
        print(f"{name:40}{shown}{t * 1e3:>10.2f}{base_time / t:>9.2f}x")
    print("(n/c: the fused CPU SDPA kernel is not counted by the FLOP counter)")


if __name__ == "__main__":
    main()
