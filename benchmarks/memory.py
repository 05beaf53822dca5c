"""Peak memory and step time of a transformer training step, with and without gradient checkpointing.

The model is ds.models' GPT-2 at a reduced size (``--dim``, ``--depth``, ``--seq``, ``--batch``);
``gradient_checkpointing_enable()`` recomputes each block in backward instead of keeping its
activations. Each variant runs one forward+backward in a fresh subprocess so peaks do not mix:

- CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the step
  (the caching allocator's exact peak);
- CPU: the process's peak resident set size (``getrusage`` ``ru_maxrss``, kept by the kernel)
  minus the resident set size just before the step: the step's activations and gradients. The
  child runs with glibc's mmap threshold fixed at 64 KiB so that freed tensors leave the RSS.

Step times are medians of ``--repeats`` further steps.

    python benchmarks/memory.py [--device cpu|cuda] [--dim 384] [--depth 6] [--seq 512] [--batch 8] [--vocab 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import median_ms  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def child(args: argparse.Namespace) -> dict:
    import deepseek as ds

    torch.manual_seed(0)
    model = ds.models.build("gpt2", vocab_size=args.vocab, max_positions=args.seq, dim=args.dim, depth=args.depth,
                            heads=args.dim // 64).to(args.device)  # fmt: skip
    if args.checkpointing:
        model.gradient_checkpointing_enable()
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq), device=args.device)

    def step() -> None:
        logits = model(tokens)
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()

    if args.device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        before = _rss_bytes()
        step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    model.zero_grad(set_to_none=True)
    return {"peak_mib": peak / 2**20, "step_ms": median_ms(step, args.device, repeats=args.repeats, warmup=1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    results = {}
    for variant in ("plain", "checkpointed"):
        cmd = [sys.executable, __file__, "--child", *sys.argv[1:]] + (["--checkpointing"] if variant != "plain" else [])
        # glibc keeps freed heap memory mapped, so RSS would count every allocation ever made; with a
        # fixed mmap threshold, tensors above 64 KiB get their own mapping and go back on free.
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    plain, ckpt = results["plain"], results["checkpointed"]
    how = "CUDA allocator peak" if args.device == "cuda" else "peak RSS above the pre-step RSS"
    print(f"GPT-2 dim={args.dim} depth={args.depth} seq={args.seq} batch={args.batch} on {args.device} ({how})")
    print(f"{'variant':<14}{'peak MiB':>10}{'step ms':>10}")
    for name, r in results.items():
        print(f"{name:<14}{r['peak_mib']:>10.1f}{r['step_ms']:>10.1f}")
    print(f"checkpointing: {1 - ckpt['peak_mib'] / plain['peak_mib']:.1%} less step memory, "
          f"step time x{ckpt['step_ms'] / plain['step_ms']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
