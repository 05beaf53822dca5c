"""``logging.stats``: the StatsRecorder's bins, what it records and when, and that it changes nothing in training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import deepseek as ds
from deepseek.train.logger import RunLogger
from deepseek.train.stats import StatsRecorder
from deepseek.train.stats_hist import LogHistogram, log_bin_edges


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Sequential(nn.Linear(12, 12), nn.Tanh()), nn.Linear(12, 3))


def _data(n: int = 8, batch: int = 4) -> list:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(batch, 6, generator=g), torch.randint(0, 3, (batch,), generator=g)) for _ in range(n)]


def _fit(run_dir: Path | None, callbacks=(), data: list | None = None, resume: str | None = None, **kw) -> ds.Trainer:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    args = dict(max_epochs=1, metrics=(), progress="off", tensorboard=False, checkpoint_every_minutes=None)
    trainer = ds.Trainer(model, opt, run_dir=run_dir, callbacks=list(callbacks), **{**args, **kw})
    trainer.fit(data or _data(), resume=resume)
    return trainer


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("bins", [64, 15])
def test_the_bins_are_fixed_symmetric_log_spaced_and_open_at_both_ends(bins):
    edges = log_bin_edges(bins)
    assert len(edges) == bins + 1 and edges == sorted(edges) and edges == [-e for e in reversed(edges)]
    assert edges[-1] == 100.0 and 1e-8 in edges
    ratios = {round(b / a, 9) for a, b in zip(edges[:-1], edges[1:]) if a >= 1e-8}
    assert len(ratios) == 1  # log-spaced: one ratio between neighbouring magnitude edges
    hist = LogHistogram(bins)
    x = torch.tensor([0.0, -0.0, 1e-12, -1e-12, 1e6, math.inf, -math.inf, -1e6, math.nan, 0.5, -0.5])
    counts = hist.count(x).tolist()
    assert sum(counts) == len(x) - 1  # the NaN is left out
    assert counts[0] == 2 and counts[-1] == 2  # open outer bins: beyond +-1e2 and the infinities
    zero = next(i for i in range(bins) if edges[i] <= 0.0 < edges[i + 1])
    assert counts[zero] == (4 if bins % 2 else 3)  # tiny magnitudes; even B splits them at 0 ([-lo, 0), [0, lo))
    half = next(i for i in range(bins) if edges[i] <= 0.5 < edges[i + 1])
    assert counts[half] == 1 and counts[bins - 1 - half] == 1  # mirror-image bins
    assert hist.count(x.bfloat16()).tolist() == counts  # autocast dtypes count alike
    hist.bincount_devices = ()  # the accelerators' sync-free way, here on the CPU
    assert hist.count(x).tolist() == counts


def test_recording_steps_grad_norms_and_histogram_totals(tmp_path):
    seen: dict[int, dict[str, float]] = {}

    class GradProbe:  # runs before the recorder: the gradients it sees are the ones recorded
        def on_before_optimizer_step(self, trainer, optimizer):
            hooks = sum(len(m._forward_hooks) for m in trainer.model.modules())
            seen[trainer.global_step + 1] = {"hooks": hooks}
            seen[trainer.global_step + 1].update({n: p.grad.norm().item() for n, p in trainer.model.named_parameters()})

    recorder = StatsRecorder(every_steps=2, activations=["2", "2.*"])
    trainer = _fit(tmp_path, [GradProbe(), recorder], accumulate_grad_batches=2, grad_clip_norm=1e-3, data=_data(12))
    records = _records(tmp_path)
    assert [r["step"] for r in records] == [2, 4, 6]
    assert [seen[s]["hooks"] for s in sorted(seen)] == [0, 3, 0, 3, 0, 3]  # hooks only on recording steps
    assert all(not m._forward_hooks for m in trainer.model.modules())  # and none left
    numel = {"0": 6 * 12 + 12, "2.0": 12 * 12 + 12, "3": 12 * 3 + 3}
    for r in records:
        assert (r["rank"], r["world_size"], len(r["edges"])) == (0, 1, 65)
        assert r["grad_norm"] == pytest.approx({k: v for k, v in seen[r["step"]].items() if k != "hooks"}, rel=1e-6)
        assert r["grad_norm_total"] == pytest.approx(math.sqrt(sum(v * v for v in r["grad_norm"].values())))
        assert r["grad_norm_total"] > 1e-2  # before clipping to 1e-3
        assert {m: sum(c) for m, c in r["grad_hist"].items()} == numel
        # 2 micro-batches of 4 samples x 12 features, per matched module
        assert {m: sum(c) for m, c in r["act_hist"].items()} == {"2": 96, "2.0": 96, "2.1": 96}
        bins = zip(r["act_hist"]["2.1"], r["edges"][:-1], r["edges"][1:], strict=True)
        assert all(c == 0 for c, a, b in bins if min(abs(a), abs(b)) >= 1)  # tanh: |x| < 1
    assert recorder.records[-1] == {k: v for k, v in records[-1].items() if k != "step"}


class _OpCounter(TorchDispatchMode):
    """The aten ops run while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class _CountingRecorder(StatsRecorder):
    """A StatsRecorder whose hooks (forward hooks too) log the aten ops they run, by optimizer step."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.ops: dict[int, list[str]] = {}

    def _counted(self, step: int, fn, *args) -> None:
        with _OpCounter() as counter:
            fn(*args)
        self.ops.setdefault(step, []).extend(counter.ops)

    def on_step_start(self, trainer) -> None:
        self._counted(trainer.global_step + 1, super().on_step_start, trainer)

    def on_before_optimizer_step(self, trainer, optimizer) -> None:
        self._counted(trainer.global_step + 1, super().on_before_optimizer_step, trainer, optimizer)

    def on_step_end(self, trainer) -> None:
        self._counted(trainer.global_step, super().on_step_end, trainer)

    def _act_hook(self, row: int):
        hook = super()._act_hook(row)
        return lambda *args: self._counted(-1, hook, *args)


def test_other_steps_do_no_work_and_recording_steps_read_nothing_back_early():
    recorder = _CountingRecorder(every_steps=3, activations=["1"])
    _fit(None, [recorder], data=_data(7))
    assert sorted(recorder.ops) == [-1, 1, 2, 3, 4, 5, 6, 7]
    assert {s: len(ops) for s, ops in recorder.ops.items() if s not in (-1, 3, 6)} == dict.fromkeys([1, 2, 4, 5, 7], 0)
    for step in (-1, 3, 6):  # computed with torch ops, and no .item()-style read from the device before the end
        assert recorder.ops[step] and "aten._local_scalar_dense.default" not in recorder.ops[step]


class _SyncChecked(StatsRecorder):
    """Fails on any host sync in its hooks (forward hooks too), except at a recording step's end."""

    def _checked(self, fn, *args) -> None:
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    def on_step_start(self, trainer) -> None:
        self._checked(super().on_step_start, trainer)

    def on_before_optimizer_step(self, trainer, optimizer) -> None:
        self._checked(super().on_before_optimizer_step, trainer, optimizer)

    def on_step_end(self, trainer) -> None:
        if trainer.global_step % self.every_steps:
            self._checked(super().on_step_end, trainer)
        else:
            super().on_step_end(trainer)

    def _act_hook(self, row: int):
        hook = super()._act_hook(row)
        return lambda *args: self._checked(hook, *args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_the_only_sync_is_at_a_recording_steps_end():
    recorder = _SyncChecked(every_steps=2, activations=["1", "2.*"])
    _fit(None, [recorder], device="cuda", precision="bf16-mixed", on_nonfinite="ignore", data=_data(4))
    assert [sum(c) for c in recorder.records[0]["act_hist"].values()] == [48, 48, 48]


def test_validation_passes_are_not_counted(tmp_path):
    recorder = StatsRecorder(every_steps=1, grad_histograms=False, activations=["3"])
    model = _model()
    trainer = ds.Trainer(model, max_steps=2, max_epochs=None, metrics=(), progress="off", run_dir=None,
                         val_every_steps=1, callbacks=[recorder])  # fmt: skip
    trainer.fit(_data(2), _data(3))
    assert sum(recorder.records[0]["act_hist"]["3"]) == 4 * 3  # one training batch, not the 3 validation ones
    assert "grad_hist" not in recorder.records[0] and "grad_norm" in recorder.records[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16-mixed", "fp16-mixed"])
def test_recording_changes_nothing_in_training(tmp_path, precision):
    on = StatsRecorder(every_steps=1, activations=["*"])
    a = _fit(tmp_path / "on", [on], precision=precision, accumulate_grad_batches=2)
    b = _fit(tmp_path / "off", precision=precision, accumulate_grad_batches=2)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    records = _records(tmp_path / "on")
    assert len(records) == 4 and not (tmp_path / "off" / "stats.jsonl").exists()
    assert all(0 < r["grad_norm_total"] < 10 for r in records)  # fp16: unscaled (the loss scale is 2**16)


class _KillAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt("killed")


def test_a_killed_and_resumed_run_writes_the_same_records(tmp_path):
    kw = dict(max_steps=8, max_epochs=None, checkpoint_every_steps=3)
    _fit(tmp_path / "whole", [StatsRecorder(every_steps=2, activations=["1"])], **kw)
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "cut", [StatsRecorder(every_steps=2, activations=["1"]), _KillAt(5)], **kw)
    _fit(tmp_path / "cut", [StatsRecorder(every_steps=2, activations=["1"])], resume="auto", **kw)
    lines = _records(tmp_path / "cut")
    assert {"event": "resume", "step": 3} in [{k: v for k, v in r.items() if k != "time"} for r in lines]
    latest = {r["step"]: r for r in lines if "event" not in r}  # later records for a step supersede earlier
    assert list(latest.values()) == _records(tmp_path / "whole")
    assert [r["step"] for r in lines if "event" not in r] == [2, 4, 4, 6, 8]


class _NoStats:
    def __init__(self) -> None:
        self.logged: list = []

    def log(self, metrics, step):
        self.logged.append(step)

    def summary(self, summary): ...
    def close(self): ...


def test_sinks_without_log_stats_are_skipped_and_tensorboard_gets_histograms(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plain = _NoStats()
    logger = RunLogger(tmp_path, total_steps=1, sinks=["jsonl", "tensorboard", plain])
    record = {"epoch": 0, "rank": 1, "world_size": 2, "edges": log_bin_edges(8), "grad_norm": {"w": 2.0},
              "grad_norm_total": 2.0, "grad_hist": {"": [0, 0, 1, 3, 0, 0, 2, 0]}, "act_hist": {"l1": [0] * 8}}  # fmt: skip
    logger.log_stats(record, 7)
    logger.close()
    assert _records(tmp_path) == [{"step": 7, **record}] and plain.logged == []
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert events.Tags()["histograms"] == ["grad/(root)/rank1"]  # the empty act histogram is left out
    (hist,) = events.Histograms("grad/(root)/rank1")
    assert hist.step == 7 and hist.histogram_value.num == 6
    assert list(hist.histogram_value.bucket) == [0, 0, 1, 3, 0, 0, 2, 0]
    assert [s.value for s in events.Scalars("grad_norm/w/rank1")] == [2.0]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"every_steps": 0}, "logging.stats.every_steps: 0 is not allowed"),
        ({"histogram_bins": 2}, "histogram_bins: 2 is not allowed"),
        ({"activations": "layer*"}, "logging.stats.activations: 'layer*' is not allowed"),
    ],
)
def test_bad_arguments_are_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*")):
        StatsRecorder(**kwargs)


def test_a_pattern_that_matches_no_module_stops_the_run_before_training():
    with pytest.raises(ValueError, match=r"logging.stats.activations: pattern 'encoder\.\*' matches no module"):
        _fit(None, [StatsRecorder(activations=["encoder.*"])])
