"""Per-step overhead of ds.Trainer against a hand-written PyTorch loop (and Lightning, if installed).

In one process, alternating rounds: the same MLP shape, the same in-memory batches and the same
number of steps through (a) a hand-written loop and (b) ds.Trainer with its default logging on
(JSONL + TensorBoard every 50 steps, plain progress lines, checkpoint timer armed). Every step is
timestamped (the Trainer's through an ``on_step_end`` callback); the medians are compared.

    python benchmarks/trainer_overhead.py [--rounds 7] [--steps 300] [--hidden 256] [--batch 64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import statistics
import tempfile
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import deepseek as ds


def make_mlp(d_in: int, hidden: int, classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def hand_loop(model: nn.Module, batches: list) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    stamps = [time.perf_counter()]
    for x, y in batches:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    return [b - a for a, b in zip(stamps, stamps[1:])]


class Stamp:
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_start(self, trainer) -> None:
        self.stamps = [time.perf_counter()]

    def on_step_end(self, trainer) -> None:
        self.stamps.append(time.perf_counter())


def ds_trainer(model: nn.Module, batches: list, run_dir: str) -> list[float]:
    stamp = Stamp()
    trainer = ds.Trainer(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        max_steps=len(batches),
        metrics=(),
        run_dir=run_dir,
        progress="plain",
        callbacks=[stamp],
    )
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.fit(batches)
    return [b - a for a, b in zip(stamp.stamps, stamp.stamps[1:])]


def lightning_loop(model: nn.Module, batches: list, run_dir: str) -> list[float] | None:
    try:
        import pytorch_lightning as pl
    except ImportError:
        return None
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def training_step(self, batch, _):
            x, y = batch
            loss = F.cross_entropy(self.net(x), y)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=1e-3)

    class PLStamp(pl.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_start(self, *args) -> None:
            if not self.stamps:
                self.stamps.append(time.perf_counter())

        def on_train_batch_end(self, *args) -> None:
            self.stamps.append(time.perf_counter())

    class Batches:  # Lightning reads a plain list as a list of dataloaders
        def __iter__(self):
            return iter(batches)

        def __len__(self) -> int:
            return len(batches)

    stamp = PLStamp()
    trainer = pl.Trainer(
        max_steps=len(batches),
        accelerator="cpu",
        devices=1,
        default_root_dir=run_dir,
        callbacks=[stamp],
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        trainer.fit(Module(), train_dataloaders=Batches())
    return [b - a for a, b in zip(stamp.stamps, stamp.stamps[1:])]


def interleaved_step(d_in: int, hidden: int, batches: list, iters: int) -> tuple[float, float]:
    """Median time of the Trainer's optimizer step and of the hand-written step, alternating every
    iteration on two identical models, so machine drift hits both equally."""
    torch.manual_seed(0)
    hand_model, ds_model = make_mlp(d_in, hidden, 10), make_mlp(d_in, hidden, 10)
    hand_opt = torch.optim.AdamW(hand_model.parameters(), lr=1e-3)
    trainer = ds.Trainer(
        ds_model, torch.optim.AdamW(ds_model.parameters(), lr=1e-3), max_steps=1, metrics=(),
        progress="off", tensorboard=False,
    )  # fmt: skip
    trainer._setup(batches, None)  # the same set-up fit() does; then call its step directly
    step = trainer._step
    hand_t, ds_t = [], []
    for i in range(iters):
        x, y = batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = F.cross_entropy(hand_model(x), y)
        loss.backward()
        hand_opt.step()
        hand_opt.zero_grad(set_to_none=True)
        t1 = time.perf_counter()
        step([batch])
        ds_t.append(time.perf_counter() - t1)
        hand_t.append(t1 - t0)
    return statistics.median(hand_t[50:]), statistics.median(ds_t[50:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--d-in", type=int, default=128)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()

    torch.manual_seed(0)
    batches = [(torch.randn(args.batch, args.d_in), torch.randint(0, 10, (args.batch,))) for _ in range(args.steps)]
    runners = {
        "hand-written loop": lambda m, d: hand_loop(m, batches),
        "ds.Trainer": lambda m, d: ds_trainer(m, batches, d),
    }
    try:
        import pytorch_lightning  # noqa: F401

        runners["pytorch_lightning.Trainer"] = lambda m, d: lightning_loop(m, batches, d)
    except ImportError:
        pass
    times: dict[str, list[float]] = {name: [] for name in runners}
    with tempfile.TemporaryDirectory() as tmp:
        for name, run in runners.items():  # warm-up round, not counted
            run(make_mlp(args.d_in, args.hidden, 10), f"{tmp}/warm-{name[:2]}")
        for r in range(args.rounds):
            for name, run in runners.items():
                times[name] += run(make_mlp(args.d_in, args.hidden, 10), f"{tmp}/r{r}-{name[:2]}")[5:]

    base = statistics.median(times["hand-written loop"])
    print(
        f"trainer overhead: MLP {args.d_in}-{args.hidden}-{args.hidden}-10, batch {args.batch}, "
        f"{torch.get_num_threads()} threads, {args.rounds} alternating rounds x {args.steps} steps, torch {torch.__version__}"
    )
    print(f"{'':28}{'median step (ms)':>18}{'mean step (ms)':>16}{'ratio (median)':>16}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28}{med * 1e3:>18.4f}{statistics.fmean(ts) * 1e3:>16.4f}{med / base:>16.3f}")
    ratio = statistics.median(times["ds.Trainer"]) / base
    print(f"ds.Trainer / hand-written loop = {ratio:.3f} (target <= 1.02: {'met' if ratio <= 1.02 else 'MISSED'})")
    hand_step, ds_step = interleaved_step(args.d_in, args.hidden, batches, 2000)
    print(
        f"optimizer step alone, alternating every iteration: hand-written {hand_step * 1e6:.1f} us, "
        f"ds.Trainer {ds_step * 1e6:.1f} us, difference {(ds_step - hand_step) * 1e6:+.1f} us"
    )
    if "pytorch_lightning.Trainer" not in times:
        print("pytorch_lightning is not installed: its ratio is not measured")


if __name__ == "__main__":
    main()
