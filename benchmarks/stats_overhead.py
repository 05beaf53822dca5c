"""Step overhead of ``logging.stats`` (deepseek.train.stats.StatsRecorder) on a real training loop.

In one process, rotating rounds: the same model, the same in-memory batches and the same number of optimizer steps
through ds.Trainer (its default sinks: metrics.jsonl + TensorBoard, into a temporary run directory) with stats
off, at the default settings (every 100 steps, gradient norms and histograms, no activations), every step, and
every 100 steps with activation histograms of every module. A step's time is the mean over the whole run from
the first to the last ``on_step_end`` (a mean, not a median: a recording step is one step in ``every_steps``);
each setting's figure is the median of its rounds, and the ratio is against stats off. Rounds on a shared
machine vary by several percent, more than the overhead at the default settings; so the recorder also times its
own hooks (including its forward hooks), which on a CPU is its whole cost: "in recorder" per step and its share
of the stats-off CPU time per step; and the steps are timed in CPU time as well as wall-clock.

    python benchmarks/stats_overhead.py [--model cnn|mlp] [--rounds 8] [--steps 300] [--batch 64] [--threads 1]

``cnn`` is configs/quickstart.yaml's model (simple_cnn, width 32) on 8x8 one-channel images; ``mlp`` is the
3x1024 MLP of benchmarks/common.py. ``--threads`` sets torch's CPU threads (1 keeps rounds comparable on a
shared machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
import torch.nn as nn

import deepseek as ds
from deepseek.train.stats import StatsRecorder

SETTINGS = {
    "off": None,
    "default (every 100)": {},
    "every 1": {"every_steps": 1},
    "every 100 + activations": {"activations": ["*"]},
}


class TimedRecorder(StatsRecorder):
    """A StatsRecorder that adds up the seconds spent in its own hooks and forward hooks: on a CPU (synchronous)
    that is its whole cost, measured without the round-to-round noise of a shared machine."""

    spent = 0.0

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.spent += time.perf_counter() - start

    def on_step_start(self, trainer) -> None:
        self._timed(super().on_step_start, trainer)

    def on_before_optimizer_step(self, trainer, optimizer) -> None:
        self._timed(super().on_before_optimizer_step, trainer, optimizer)

    def on_step_end(self, trainer) -> None:
        self._timed(super().on_step_end, trainer)

    def _act_hook(self, row: int):
        hook = super()._act_hook(row)
        return lambda *args: self._timed(hook, *args)


class Stamp:
    """Times from the first to the last optimizer step's end (set-up and tear-down left out): wall-clock and this
    process's CPU time (all its threads: TensorBoard's writer thread included), which other processes on a shared
    machine disturb far less."""

    def __init__(self) -> None:
        self.stamps: list[tuple[float, float]] = []

    def on_step_end(self, trainer) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def per_step_ms(self) -> tuple[float, float]:
        (w0, c0), (w1, c1) = self.stamps[0], self.stamps[-1]
        n = len(self.stamps) - 1
        return (w1 - w0) / n * 1e3, (c1 - c0) / n * 1e3


def make(model: str) -> tuple[nn.Module, tuple[int, ...]]:
    if model == "cnn":
        return ds.models.build("simple_cnn", in_channels=1, num_classes=10, width=32, dropout=0.1), (1, 8, 8)
    if model == "mlp":
        return nn.Sequential(nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10)), (
            1024,
        )
    raise SystemExit(f"--model: {model!r} is not allowed; use cnn or mlp")


def run(base: nn.Module, batches: list, setting: dict | None) -> tuple[float, float, float]:
    """(wall ms per step, CPU ms per step, ms per step inside the recorder)."""
    model = copy.deepcopy(base)
    stamp = Stamp()
    recorder = TimedRecorder(**setting) if setting is not None else None
    callbacks = ([recorder] if recorder is not None else []) + [stamp]  # stamp after the recorder
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = ds.Trainer(
            model, torch.optim.AdamW(model.parameters(), lr=1e-3), max_epochs=1, metrics=(), progress="off",
            run_dir=run_dir, checkpoint_every_minutes=None, save_best=False, callbacks=callbacks,
        )  # fmt: skip
        trainer.fit(batches)
    inside = recorder.spent / len(batches) * 1e3 if recorder is not None else 0.0
    return (*stamp.per_step_ms(), inside)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base, shape = make(args.model)
    batches = [(torch.randn(args.batch, *shape), torch.randint(0, 10, (args.batch,))) for _ in range(args.steps)]
    run(base, batches[:50], None)  # warm-up: allocator, kernels, imports
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in SETTINGS}
    for r in range(args.rounds):
        names = list(SETTINGS)
        names = names[r % len(names) :] + names[: r % len(names)]  # rotate: no setting always runs first
        for name in names:
            results[name].append(run(base, batches, SETTINGS[name]))
    params = sum(p.numel() for p in base.parameters())
    print(f"model {args.model} ({params:,} parameters), batch {args.batch}, {args.steps} steps x {args.rounds} "
          f"rounds, {args.threads} thread(s), torch {torch.__version__}, CPU; medians over the rounds")  # fmt: skip
    print(f"{'setting':<24} {'wall ms/step':>12} {'ratio':>6} {'CPU ms/step':>12} {'ratio':>6} "
          f"{'in recorder ms/step':>20} {'share':>6}")  # fmt: skip
    wall_off, cpu_off = (statistics.median(v[i] for v in results["off"]) for i in (0, 1))
    for name, values in results.items():
        wall, cpu, own = (statistics.median(v[i] for v in values) for i in range(3))
        print(f"{name:<24} {wall:12.3f} {wall / wall_off:6.3f} {cpu:12.3f} {cpu / cpu_off:6.3f} {own:20.4f} "
              f"{100 * own / cpu_off:5.2f}%")  # fmt: skip
    print("wall ms/step by round: " + "; ".join(
        f"{name}: " + " ".join(f"{v[0]:.2f}" for v in values) for name, values in results.items()
    ))  # fmt: skip


if __name__ == "__main__":
    main()
