"""Run logging: ``metrics.jsonl``, TensorBoard events, and a progress bar or plain log lines.

Only rank 0 logs. Each JSONL record is written with one ``write`` call and flushed, so a killed run
leaves at most one partial last line, which a resumed run closes before appending (readers skip
lines that do not parse). On resume a ``{"event": "resume", "step": N}`` record marks that records
after step N from before it are superseded, and TensorBoard drops them itself (``purge_step``).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table


class JsonlWriter:
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


def _fmt(value: Any) -> str:
    if not isinstance(value, float):
        return str(value)
    if value == 0 or math.isnan(value):
        return f"{value:g}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3e}" if abs(value) < 0.01 else f"{value:.4f}"


class RunLogger:
    """Writes step and validation records to every enabled sink (JSONL, TensorBoard, console)."""

    def __init__(
        self,
        run_dir: Path | None,
        *,
        total_steps: int | None,
        progress: str = "auto",
        tensorboard: bool = True,
        resume_step: int | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stdout
        self.total_steps = total_steps
        self.jsonl = JsonlWriter(run_dir / "metrics.jsonl", resume_step) if run_dir else None
        self.tb = None
        if run_dir is not None and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
        if progress == "auto":
            progress = "bar" if self.stream.isatty() else "plain"
        self.mode = progress
        self.console = Console(file=self.stream)
        self._bar: Progress | None = None
        self._task: Any = None

    def start(self, step: int) -> None:
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

    def log_step(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """One training record: ``values`` has ``train/loss``, ``lr``, ``samples_per_s``..."""
        if self.jsonl:
            self.jsonl.write({"step": step, "epoch": epoch, **values})
        if self.tb:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self._bar is not None:
            self._bar.update(
                self._task,
                completed=step,
                epoch=epoch,
                loss=_fmt(values.get("train/loss", math.nan)),
                lr=_fmt(values.get("lr", math.nan)),
                sps=f"{values.get('samples_per_s', 0):,.0f}",
            )
        elif self.mode == "plain":
            total = f"/{self.total_steps}" if self.total_steps else ""
            parts = "  ".join(f"{k} {_fmt(v)}" for k, v in values.items())
            print(f"step {step}{total}  epoch {epoch}  {parts}", file=self.stream, flush=True)

    def log_validation(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        if self.jsonl:
            self.jsonl.write({"step": step, "epoch": epoch, **metrics})
        if self.tb:
            for k, v in metrics.items():
                self.tb.add_scalar(k, v, step)
        if self.mode != "off":
            parts = "  ".join(f"{k} {_fmt(v)}" for k, v in metrics.items())
            self.console.print(f"step {step}  epoch {epoch}  {parts}", highlight=False, soft_wrap=True)

    def message(self, text: str) -> None:
        if self.mode != "off":
            self.console.print(text, highlight=False, soft_wrap=True)

    def summary_table(self, summary: dict[str, Any]) -> None:
        self._stop_bar()
        if self.mode == "off":
            return
        table = Table(title="run summary", show_header=True)
        table.add_column("metric")
        table.add_column("value", justify="right")
        for k, v in summary.get("val", {}).items():
            table.add_row(f"val/{k}", _fmt(v))
        for k in ("steps", "epochs", "wall_s", "samples_per_s"):
            if k in summary:
                table.add_row(k, _fmt(summary[k]))
        if summary.get("stop_reason"):
            table.add_row("stopped by", str(summary["stop_reason"]))
        self.console.print(table)

    def _stop_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def close(self) -> None:
        self._stop_bar()
        if self.jsonl:
            self.jsonl.close()
            self.jsonl = None
        if self.tb:
            self.tb.close()
            self.tb = None
