"""Eager vs ``torch.compile`` (through ``ds.jit``): inference and training, an MLP and a Transformer.

For each model and mode, compiles a fresh copy with ``ds.jit`` (inductor), records the first
call's time (compilation), then times eager and compiled steps alternately, in the same process,
and prints compiled's speed as a ratio of eager's (above 1: compiled is faster) and the number of
steps it takes to earn back the compile time. Training is forward, backward and an AdamW step.
The last column is what ``ds.jit(..., autotune=True)`` chose on the first inputs. Inductor's
on-disk cache goes to a fresh temporary directory, so compile times are cold.

    python benchmarks/jit.py [--batch 64] [--repeats 20]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn

import deepseek as ds

sys.path.insert(0, str(Path(__file__).parent))
from common import devices, models, sync  # noqa: E402


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, train: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        if train:
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                model(x)

    return step


def timed(fn, device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="ds-jit-bench-")  # cold compiles
    torch.manual_seed(0)
    print(f"{'device':<7}{'model':<26}{'mode':<7}{'compile s':>10}{'eager ms':>10}{'compiled ms':>12}"
          f"{'x eager':>9}{'break-even':>12}  autotune")  # fmt: skip
    for device in devices():
        for label, (base, shape) in models().items():
            x = torch.randn(args.batch, *shape, device=device)
            y = torch.randint(0, 10, (args.batch,), device=device)
            for mode in ("infer", "train"):
                train = mode == "train"
                eager_model = copy.deepcopy(base).to(device).train(train)
                compiled_model = ds.jit(copy.deepcopy(base).to(device).train(train))
                eager, compiled = step_fn(eager_model, x, y, train), step_fn(compiled_model, x, y, train)
                compile_ms = timed(compiled, device)
                eager()
                e_times, c_times = [], []
                for _ in range(args.repeats):  # alternate, so load changes hit both alike
                    e_times.append(timed(eager, device))
                    c_times.append(timed(compiled, device))
                e, c = statistics.median(e_times), statistics.median(c_times)
                gain = e - c
                even = f"{(compile_ms - c) / gain:,.0f} steps" if gain > 0 else "never"
                tuned = ds.jit(copy.deepcopy(base).to(device).train(train), autotune=True)
                with torch.set_grad_enabled(train):
                    tuned(x)
                choice = ds.jit_report(tuned)["choice"]
                print(f"{device:<7}{label:<26}{mode:<7}{compile_ms / 1e3:>10.1f}{e:>10.2f}{c:>12.2f}"
                      f"{e / c:>9.2f}{even:>12}  {choice}")  # fmt: skip


if __name__ == "__main__":
    main()
