"""The profiler's FLOP numbers checked three ways in one run: counts reconciled, peak against a matmul, stacks.

    python benchmarks/profiler_flops.py [--quick] [--batch 1] [--seq-len 128] [--size 2048] [--repeats 5]

(a) FLOPs of one step of gpt2, bert_base and minilm at their published sizes (batch ``--batch`` x ``--seq-len``
tokens, fp32 on CPU), inference and training (forward + backward of ``output.sum()``), counted three ways by
:func:`deepseek.profiler.flops.reconcile`: the dispatcher count (torch's per-op formulas), the per-module sum and
the analytic ``2N/6N + attention`` formula. Printed: a table with the gap ``(dispatcher - analytic) / analytic``
against the stated tolerance (10%), then each row's formula and notes, which explain the gap item by item.

(b) :func:`deepseek.profiler.peaks.peak_flops` for the CPU (and the CUDA device, when there is one), fp32 and
bf16, with its ``how`` (the arithmetic), and an upper-bound check: the achieved FLOP/s of a ``--size``^3 matmul,
best of ``--repeats`` (CUDA: synchronised), as a share of that peak; on the CPU also with 1 thread against the
1-core peak (a check that holds while other processes use the other cores), with the process's CPU time over the
wall time (how many cores the matmul kept busy).

(c) Why ``torch.profiler``'s ``export_stacks`` comes out empty: operator events carrying a Python stack, and
``export_stacks`` lines, of one Linear forward + backward profiled with ``with_stack=True`` alone and with verbose
mode added; then the stacks :func:`deepseek.profiler.flame.stacks_from_profile` gets from the verbose profile.

``--quick`` (a smoke run, a few seconds): gpt2 and bert_base at the small sizes of tests/profiler/test_flops.py,
minilm as shipped (it is pretrained: no smaller size), 16 tokens, a 256^3 matmul.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.profiler import profile

import deepseek as ds
from deepseek.profiler.flame import stack_profiler_kwargs, stacks_from_profile
from deepseek.profiler.flops import count_flops, reconcile
from deepseek.profiler.peaks import peak_flops

TOLERANCE = 0.10  # the stated tolerance of dispatcher vs analytic for the transformers (docs/profiler.md)
# dropout 0: no randomness in the counted graph (minilm's encoder keeps its own attention dropout in training)
PUBLISHED = {"gpt2": {}, "bert_base": {"dropout": 0.0}, "minilm": {"dropout": 0.0}}
SMALL = {  # the overrides of tests/profiler/test_flops.py; minilm is pretrained and has one size
    "gpt2": {"vocab_size": 32, "dim": 64, "depth": 2, "heads": 4},
    "bert_base": {"vocab_size": 64, "dim": 32, "depth": 2, "heads": 2, "dropout": 0.0},
    "minilm": {"dropout": 0.0},
}


def model_batch(name: str, overrides: dict[str, Any], batch: int, seq_len: int) -> tuple[nn.Module, Any]:
    """The model and a random token batch ``(batch, seq_len)`` (minilm: with an all-ones attention mask)."""
    if name == "gpt2":  # room for seq_len positions; the published 1024 stays when it is enough
        positions = {**ds.models.template_kwargs(name), **overrides}.get("max_positions", seq_len)
        overrides = {**overrides, "max_positions": max(seq_len, positions)}
    model = ds.models.build(name, **overrides)
    vocab = overrides.get("vocab_size", 1000)
    ids = torch.randint(0, vocab, (batch, seq_len), generator=torch.Generator().manual_seed(0))
    return model, ({"input_ids": ids, "attention_mask": torch.ones_like(ids)} if name == "minilm" else ids)


def count_step(model: nn.Module, batch: Any, mode: str):
    """FLOPs of one inference forward (no grad) or one training forward + backward of ``output.sum()``."""
    model.train(mode == "train")
    if mode == "train":
        return count_flops(model, lambda: model(batch).float().sum().backward())
    with torch.no_grad():
        return count_flops(model, lambda: model(batch))


def reconciliation(sizes: dict[str, dict[str, Any]], batch: int, seq_len: int) -> None:
    print(f"== (a) FLOPs of one step, batch {batch} x {seq_len} tokens, fp32 on CPU, counted three ways")
    rows = []
    for name, overrides in sizes.items():
        torch.manual_seed(0)
        model, inputs = model_batch(name, overrides, batch, seq_len)
        params = sum(p.numel() for p in model.parameters())
        for mode in ("infer", "train"):
            r = reconcile(model, count_step(model, inputs, mode), seq_len=seq_len, tokens=batch * seq_len, mode=mode)
            rows.append((name, params, mode, r))
    print(f"{'model':<10}{'params':>13} {'mode':<6}{'dispatcher':>19}{'module_sum':>19}{'analytic':>19}{'gap':>8}  "
          f"within {TOLERANCE:.0%}")  # fmt: skip
    for name, params, mode, r in rows:
        gap = (r["dispatcher"] - r["analytic"]) / r["analytic"]
        print(f"{name:<10}{params:>13,} {mode:<6}{r['dispatcher']:>19,}{r['module_sum']:>19,}{r['analytic']:>19,}"
              f"{gap:>+8.1%}  {'yes' if abs(gap) <= TOLERANCE else 'NO'}")  # fmt: skip
    for name, _, mode, r in rows:
        print(f"-- {name} {mode}: analytic {r['analytic_formula']}")
        for note in r["notes"]:
            print(f"   - {note}")


def best_matmul_s(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> tuple[float, float | None]:
    """Fastest of ``repeats`` timed ``(n, n) @ (n, n)`` products, after one warm-up product, and the process's CPU
    time over the wall time of the timed products: the number of cores the products kept busy (CPU only; None under
    0.05 s of products, where the kernel's per-tick accounting of the other threads' CPU time makes it noise)."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    times, cpu, wall = [], 0.0, 0.0
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - t0)
            cpu, wall = cpu + time.process_time() - c0, wall + times[-1]
    return min(times), (cpu / wall if wall >= 0.05 else None)


def peak_vs_matmul(n: int, repeats: int) -> None:
    """CPU: with torch's threads, then with 1 thread against the 1-core peak (peak_flops counts torch's threads):
    the 1-thread check still holds when another process takes a core of a small shared machine."""
    threads = torch.get_num_threads()
    runs = [("cpu", threads)] + ([("cpu", 1)] if threads > 1 else [])
    runs += [("cuda", threads)] if torch.cuda.is_available() else []
    print(f"== (b) peak FLOP/s (peak_flops) and a {n}^3 matmul, best of {repeats}, against it")
    for device_type, n_threads in runs:
        device, label = (
            torch.device(device_type),
            device_type + (f" {n_threads} thread{'s' * (n_threads > 1)}" * (device_type == "cpu")),
        )
        torch.set_num_threads(n_threads)
        try:
            for dtype in (torch.float32, torch.bfloat16):
                peak = peak_flops(device, dtype)
                print(f"{label} {peak.dtype} peak: {peak.how}")
                best, busy = best_matmul_s(n, dtype, device, repeats)
                achieved = 2 * n**3 / best
                share = f" = {achieved / peak.flops_per_s:.0%} of peak" if peak.flops_per_s else " (no peak to compare)"
                if peak.flops_per_s and achieved > peak.flops_per_s:
                    share += ": ABOVE the peak, which is then no upper bound"
                cores = f" (CPU time / wall time {busy:.2f})" if device_type == "cpu" and busy is not None else ""
                print(f"{label} {peak.dtype} {n}^3 matmul: {achieved / 1e9:,.1f} GFLOP/s{share}{cores}")
        finally:
            torch.set_num_threads(threads)


def stacks_demo() -> None:
    print(
        "== (c) torch.profiler stacks of one Linear(64, 64) forward + backward: export_stacks and stacks_from_profile"
    )
    torch.manual_seed(0)
    model, x = nn.Linear(64, 64), torch.randn(32, 64)
    settings = [("with_stack=True", {"with_stack": True}), ("with_stack=True + verbose", stack_profiler_kwargs())]
    with tempfile.TemporaryDirectory(prefix="stacks-") as tmp:
        for label, kwargs in settings:
            with profile(**kwargs) as prof:
                model(x).sum().backward()
            path = Path(tmp) / "stacks.txt"
            prof.export_stacks(str(path), "self_cpu_time_total")
            ops = [e for e in prof.events() if not e.is_python_function]
            print(f"{label}: export_stacks lines = {len(path.read_text().splitlines())}, "
                  f"operator events with a stack = {sum(bool(e.stack) for e in ops)} of {len(ops)}")  # fmt: skip
    stacks = stacks_from_profile(prof)
    with_python = sum(any(f.endswith(".py)") or ".py(" in f for f in s) for s in stacks)
    deepest = max(stacks, key=len)
    print(f"stacks_from_profile (verbose profile): {len(stacks)} stacks, {with_python} with Python frames, "
          f"{sum(stacks.values()):,.0f} us self CPU time; deepest ({len(deepest)} frames) ends "
          f"{' ; '.join(deepest[-3:])}")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small gpt2/bert_base, 16 tokens, a 256^3 matmul")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--size", type=int, default=2048, help="matmul size n of the (n, n) @ (n, n) check")
    p.add_argument("--repeats", type=int, default=5, help="timed matmuls; the fastest counts")
    args = p.parse_args()
    for key in ("batch", "seq_len", "size", "repeats"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} {getattr(args, key)}: must be 1 or more")
    sizes, seq_len, n = PUBLISHED, args.seq_len, args.size
    if args.quick:
        sizes, seq_len, n = SMALL, 16, 256
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", CUDA {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA")
          + f", load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")  # fmt: skip
    t0 = time.perf_counter()
    reconciliation(sizes, args.batch, seq_len)
    t1 = time.perf_counter()
    peak_vs_matmul(n, args.repeats)
    t2 = time.perf_counter()
    stacks_demo()
    print(f"(seconds: counting {t1 - t0:.1f}, matmuls {t2 - t1:.1f}, stacks {time.perf_counter() - t2:.1f}; "
          f"load average {os.getloadavg()[0]:.2f} at the end: other processes slow the matmuls down)")  # fmt: skip


if __name__ == "__main__":
    main()
