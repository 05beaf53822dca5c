"""What profiling costs: the step time of the same model with and without the profiler, in one run.

    python benchmarks/profiler_overhead.py [--model bert_base] [--batch 8] [--seq-len 64] [--rounds 5] [--steps 5]
                                           [--set dim=128 depth=2 heads=4]

Each round trains ``--steps`` steps unprofiled and ``--steps`` steps under what ``train.profile`` /
``python -m deepseek.profiler`` record with (torch.profiler with shapes, memory and Python stacks, the ``ds::``
phase ranges and a ``module::`` range per module call), the order alternating every round; each step is timed on
the host (CUDA: synchronised). A variant's time is the median step over its rounds; printed: both medians, their
ratio, and the one-off cost of reading the profile and writing the files at the end of a window (not part of any
step). Steps outside the window carry no profiler at all: the callback's hooks return at once.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import yaml

from deepseek.profiler.inputs import build_with_example
from deepseek.profiler.report import Collector, write_report
from deepseek.profiler.session import ModuleRanges, StepPhases, make_profiler
from deepseek.profiler.synthetic import surrogate_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="bert_base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--set", nargs="*", default=["dim=128", "depth=2", "heads=4"], metavar="KEY=VALUE")
    args = p.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, batch, _ = build_with_example(args.model, batch_size=args.batch, seq_len=args.seq_len, overrides=overrides)
    model = model.to(device)
    batch = batch.to(device) if isinstance(batch, torch.Tensor) else {k: v.to(device) for k, v in batch.items()}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    phases = StepPhases(sync=device.type == "cuda")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(profiled: bool) -> float:
        sync()
        t0 = time.perf_counter()
        if profiled:
            phases.enter("data_wait")
            phases.enter("forward")
        loss = surrogate_loss(model(batch))
        if profiled:
            phases.enter("backward")
        loss.backward()
        if profiled:
            phases.enter("optimizer")
        opt.step()
        opt.zero_grad(set_to_none=True)
        phases.close()
        sync()
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up: allocator, kernels, lazy init
        step(False)
    times: dict[str, list[float]] = {"unprofiled": [], "profiled": []}
    processing = []
    for r in range(args.rounds):
        for variant in ("unprofiled", "profiled") if r % 2 == 0 else ("profiled", "unprofiled"):
            if variant == "unprofiled":
                times[variant] += [step(False) for _ in range(args.steps)]
                continue
            out = tempfile.mkdtemp(prefix="profiler-overhead-")
            collector = Collector(out, device)
            ranges = ModuleRanges(model)
            prof = make_profiler(device, wait=0, warmup=0, active=args.steps + 1, on_ready=collector)
            prof.start()
            for _ in range(args.steps):
                times[variant].append(step(True))
                prof.step()
            ranges.remove()
            t0 = time.perf_counter()
            prof.stop()  # reads the events (analysis) and writes the trace
            write_report(collector, meta={"model": args.model, "mode": "train", "device": str(device),
                                          "device_name": str(device), "precision": "fp32", "batch_size": args.batch},
                         model=model, flop_count=None, flop_info={}, metric_names=[])  # fmt: skip
            processing.append(time.perf_counter() - t0)
    plain, profiled = statistics.median(times["unprofiled"]), statistics.median(times["profiled"])
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.model} {overrides} ({params:,} parameters), batch {args.batch} x seq {args.seq_len}, {device}, "
        f"{torch.get_num_threads()} threads; {args.rounds} rounds x {args.steps} steps per variant"
    )
    print(f"unprofiled step: median {plain * 1e3:.2f} ms")
    print(f"profiled step:   median {profiled * 1e3:.2f} ms")
    print(f"ratio profiled / unprofiled: {profiled / plain:.3f}")
    print(
        f"end of window (read events, write trace, flame graphs, summary): median "
        f"{statistics.median(processing):.2f} s for {args.steps} steps"
    )


if __name__ == "__main__":
    main()
