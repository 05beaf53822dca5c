"""Log sinks: where a run's metric records and its summary go (``logging.sinks``).

A sink is any object with ``log(metrics, step)``, ``summary(summary)`` and ``close()``
(:class:`deepseek.protocols.LogSink`). The built-ins are registered as ``jsonl`` (``metrics.jsonl``),
``tensorboard`` (``tb/`` events) and ``console`` (progress bar or plain lines, and the summary table);
a user's class is named by import path (``my_pkg.sinks:Recorder``).

Each record a sink receives is ``{"epoch": int, **values}``: training records hold ``train/loss``, ``lr``,
``samples_per_s``...; validation records hold ``val/<metric>`` keys. A sink's builder gets its own keyword
arguments plus whichever of :data:`CONTEXT` it declares (``run_dir``, ``resume_step``, ``total_steps``,
``progress``, ``stream``); a sink that writes into the run directory (``needs_run_dir = True``) is skipped
when the run has none.

A sink may also have ``log_stats(record, step)`` (optional, duck-typed: sinks without it are skipped): one
record of gradient/activation statistics per rank at a ``logging.stats`` recording step (the format of
``stats.jsonl``, see :mod:`deepseek.train.stats`). ``jsonl`` writes them to ``stats.jsonl``, ``tensorboard``
as histograms (``grad/<module>``, ``act/<module>``) and scalars (``grad_norm/<param>``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from deepseek.protocols import LogSink
from deepseek.registry import RegistryError, register_sink
from deepseek.registry import sinks as sink_registry
from deepseek.train.stats_hist import bin_values

# What the framework passes to a sink's builder when its signature asks for it.
CONTEXT = ("run_dir", "resume_step", "total_steps", "progress", "stream")


def default_sinks(tensorboard: bool = True) -> list[str]:
    """Today's outputs: ``metrics.jsonl``, TensorBoard events (unless turned off) and the console."""
    return ["jsonl", *(["tensorboard"] if tensorboard else []), "console"]


def fmt(value: Any) -> str:
    """A number as the console shows it (``0.2500``, ``1.000e-03``, ``12,345``)."""
    if not isinstance(value, float):
        return str(value)
    if value == 0 or math.isnan(value):
        return f"{value:g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3e}" if abs(value) < 0.01 else f"{value:.4f}"


class JsonlWriter:
    """Appends JSON records to ``path``, one ``write`` call each (a kill leaves at most one partial last
    line, closed here before appending); ``resume_step`` adds a ``{"event": "resume"}`` record."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        size = os.fstat(self._fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":  # close a line cut off by a kill
                    os.write(self._fd, b"\n")
        if resume_step is not None:
            self.write({"event": "resume", "step": resume_step, "time": time.time()})

    def write(self, record: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, allow_nan=True) + "\n").encode())

    def close(self) -> None:
        os.close(self._fd)


def _split(metrics: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """``(epoch, the other values)`` of a record."""
    values = dict(metrics)
    return int(values.pop("epoch", 0)), values


STATS_FILE = "stats.jsonl"


@register_sink("jsonl")
class JsonlSink:
    """One JSON line per record in ``run_dir/metrics.jsonl``: ``{"step": N, "epoch": E, **values}``; statistics
    records in ``run_dir/stats.jsonl`` (``{"step": N, **record}``, opened at the first one, resumes marked alike)."""

    needs_run_dir = True

    def __init__(self, run_dir: Path, resume_step: int | None = None, filename: str = "metrics.jsonl") -> None:
        self.run_dir, self.resume_step = Path(run_dir), resume_step
        self.writer: JsonlWriter | None = JsonlWriter(self.run_dir / filename, resume_step)
        self.stats_writer: JsonlWriter | None = None

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.writer is not None:
            self.writer.write({"step": step, **metrics})

    def log_stats(self, record: Mapping[str, Any], step: int) -> None:
        if self.writer is None:  # closed
            return
        if self.stats_writer is None:
            self.stats_writer = JsonlWriter(self.run_dir / STATS_FILE, self.resume_step)
        self.stats_writer.write({"step": step, **record})

    def summary(self, summary: Mapping[str, Any]) -> None:
        """Nothing: the Trainer writes ``summary.json`` itself."""

    def close(self) -> None:
        for writer in (self.writer, self.stats_writer):
            if writer is not None:
                writer.close()
        self.writer = self.stats_writer = None


@register_sink("tensorboard", aliases=("tb",))
class TensorBoardSink:
    """Scalars in ``run_dir/tb``; on resume TensorBoard drops the superseded events (``purge_step``)."""

    needs_run_dir = True

    def __init__(self, run_dir: Path, resume_step: int | None = None, subdir: str = "tb") -> None:
        from torch.utils.tensorboard import SummaryWriter  # late: tensorboard is slow to import

        self.writer: Any = SummaryWriter(str(Path(run_dir) / subdir), purge_step=resume_step)

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for k, v in metrics.items():
            if k != "epoch":  # the epoch is the record's position, not a curve
                self.writer.add_scalar(k, v, step)

    def log_stats(self, record: Mapping[str, Any], step: int) -> None:
        """Histograms ``grad/<module>`` and ``act/<module>`` and scalars ``grad_norm/<param>`` and
        ``grad_norm_total`` (the root module is ``(root)``; ``/rank<r>`` appended when there are several ranks).
        TensorBoard's min, max, sum and sum of squares come from the bins, so they are approximate."""
        if self.writer is None:
            return
        suffix = f"/rank{record['rank']}" if record.get("world_size", 1) > 1 else ""
        edges = list(record["edges"])
        values = bin_values(edges)
        for kind, key in (("grad", "grad_hist"), ("act", "act_hist")):
            for module, counts in record.get(key, {}).items():
                self._histogram(f"{kind}/{module or '(root)'}{suffix}", edges, values, counts, step)
        for param, norm in record.get("grad_norm", {}).items():
            self.writer.add_scalar(f"grad_norm/{param}{suffix}", norm, step)
        if "grad_norm_total" in record:
            self.writer.add_scalar(f"grad_norm_total{suffix}", record["grad_norm_total"], step)

    def _histogram(self, tag: str, edges: list[float], values: list[float], counts: list[int], step: int) -> None:
        used = [i for i, c in enumerate(counts) if c]
        if not used:  # TensorBoard cannot show an empty histogram
            return
        self.writer.add_histogram_raw(
            tag,
            min=edges[used[0]],
            max=edges[used[-1] + 1],
            num=sum(counts),
            sum=sum(c * v for c, v in zip(counts, values, strict=True)),
            sum_squares=sum(c * v * v for c, v in zip(counts, values, strict=True)),
            bucket_limits=edges[1:],
            bucket_counts=list(counts),
            global_step=step,
        )

    def summary(self, summary: Mapping[str, Any]) -> None:
        """Nothing: the curves are the record."""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


@register_sink("console")
class ConsoleSink:
    """A rich progress bar on a terminal, plain ``step N/T  epoch E  key value`` lines otherwise
    (``progress``: auto, bar, plain or off), validation lines, messages and the run-summary table."""

    def __init__(self, progress: str = "auto", total_steps: int | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.total_steps = total_steps
        self.mode = ("bar" if self.stream.isatty() else "plain") if progress == "auto" else progress
        self.console = Console(file=self.stream)
        self._bar: Progress | None = None
        self._task: Any = None

    def start(self, step: int) -> None:
        """Show the progress bar (bar mode), starting at ``step``."""
        if self.mode != "bar":
            return
        self._bar = Progress(
            TextColumn("[bold]epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}  lr {task.fields[lr]}  {task.fields[sps]} samples/s"),
            TimeRemainingColumn(),
            console=self.console,
            refresh_per_second=4,
        )
        self._task = self._bar.add_task(
            "train", total=self.total_steps, completed=step, epoch=0, loss="-", lr="-", sps="-"
        )
        self._bar.start()

    def log(self, metrics: Mapping[str, Any], step: int) -> None:
        epoch, values = _split(metrics)
        if any(k.startswith("val/") for k in values):  # a validation record: always its own line
            if self.mode != "off":
                parts = "  ".join(f"{k} {fmt(v)}" for k, v in values.items())
                self.console.print(f"step {step}  epoch {epoch}  {parts}", highlight=False, soft_wrap=True)
        elif self._bar is not None:
            self._bar.update(
                self._task,
                completed=step,
                epoch=epoch,
                loss=fmt(values.get("train/loss", math.nan)),
                lr=fmt(values.get("lr", math.nan)),
                sps=f"{values.get('samples_per_s', 0):,.0f}",
            )
        elif self.mode == "plain":
            total = f"/{self.total_steps}" if self.total_steps else ""
            parts = "  ".join(f"{k} {fmt(v)}" for k, v in values.items())
            print(f"step {step}{total}  epoch {epoch}  {parts}", file=self.stream, flush=True)

    def message(self, text: str) -> None:
        if self.mode != "off":
            self.console.print(text, highlight=False, soft_wrap=True)

    def summary(self, summary: Mapping[str, Any]) -> None:
        self._stop_bar()
        if self.mode == "off":
            return
        table = Table(title="run summary", show_header=True)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in summary.get("val", {}).items():
            table.add_row(f"val/{k}", fmt(v))
        for k in ("steps", "epochs", "wall_s", "samples_per_s"):
            if k in summary:
                table.add_row(k, fmt(summary[k]))
        if summary.get("stop_reason"):
            table.add_row("stopped by", str(summary["stop_reason"]))
        self.console.print(table)

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        self._stop_bar()


def sink_spec(spec: Any) -> tuple[str, dict[str, Any]]:
    """``(name, kwargs)`` of ``"jsonl"``, ``{"name": "my_mod:Recorder", **kwargs}`` or a config Component."""
    if isinstance(spec, str):
        return spec, {}
    if isinstance(spec, Mapping):
        rest = dict(spec)
        return str(rest.pop("name")), rest
    if hasattr(spec, "name") and hasattr(spec, "kwargs"):  # deepseek.config.Component, named not imported
        return str(spec.name), dict(spec.kwargs)
    raise TypeError(f"a log sink is a name, {{name: ..., **kwargs}} or a sink object; got {type(spec).__name__}")


def build_sinks(specs: Sequence[Any], *, run_dir: Path | None = None, **context: Any) -> list[LogSink]:
    """Sinks from names, ``{name, **kwargs}`` mappings or ready sink objects (kept as they are).

    ``context`` holds the other :data:`CONTEXT` values; a builder gets those it declares. Raises
    RegistryError for an unknown name and TypeError for an object that is not a :class:`LogSink`.
    """
    context = {"run_dir": run_dir, **context}
    built: list[LogSink] = []
    for spec in specs:
        if isinstance(spec, LogSink) and not isinstance(spec, (str, Mapping)):
            built.append(spec)
            continue
        name, kwargs = sink_spec(spec)
        builder = sink_registry.get(name)
        if getattr(builder, "needs_run_dir", False) and run_dir is None:
            continue  # writes files: a run without a directory writes nothing to disk
        params = inspect.signature(builder).parameters
        supplied = {k: v for k, v in context.items() if k in params and k not in kwargs}
        sink = sink_registry.build(name, **kwargs, **supplied)
        if not isinstance(sink, LogSink):
            missing = [m for m in ("log", "summary", "close") if not callable(getattr(sink, m, None))]
            raise RegistryError(f"log sink '{name}' built a {type(sink).__name__} without {', '.join(missing)}(); "
                                "a sink needs log(metrics, step), summary(summary) and close()")  # fmt: skip
        built.append(sink)
    return built


def sink_problems(specs: Sequence[Any], key: str = "logging.sinks") -> list[str]:
    """One line per spec that names no sink or gives keywords its builder does not take (checked before
    a run starts; the framework's :data:`CONTEXT` keywords are not the user's to set)."""
    problems = []
    for i, spec in enumerate(specs):
        name, kwargs = sink_spec(spec)
        try:
            builder = sink_registry.get(name)
        except RegistryError as err:
            problems.append(f"{key}[{i}].name: {err}")
            continue
        params = inspect.signature(builder).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        allowed = sorted(k for k, p in params.items() if k not in CONTEXT and p.kind is p.POSITIONAL_OR_KEYWORD)
        for k in kwargs:
            if k in CONTEXT or not (takes_any or k in params):
                problems.append(
                    f"{key}[{i}].{k}: not an argument of sink '{name}'; allowed: {', '.join(allowed) or '(none)'}"
                )
    return problems
