"""Run logging: the Trainer's records fan out to the run's log sinks (see :mod:`deepseek.train.sinks`).

The default sinks reproduce the classic outputs: ``metrics.jsonl``, TensorBoard events, and a progress
bar or plain log lines. Only rank 0 logs. Each JSONL record is written with one ``write`` call and
flushed, so a killed run leaves at most one partial last line, which a resumed run closes before
appending (readers skip lines that do not parse). On resume a ``{"event": "resume", "step": N}`` record
marks that records after step N from before it are superseded, and TensorBoard drops them itself
(``purge_step``). ``logging.stats`` records go to ``stats.jsonl`` the same way (:meth:`RunLogger.log_stats`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from deepseek.protocols import LogSink
from deepseek.train.sinks import ConsoleSink, JsonlWriter, TensorBoardSink, build_sinks, default_sinks, sink_spec

__all__ = ["JsonlWriter", "RunLogger"]


class RunLogger:
    """Writes step and validation records, messages and the summary to every sink.

    ``sinks``: names, ``{name, **kwargs}`` specs or sink objects; None means :func:`default_sinks`
    (``tensorboard=False`` leaves TensorBoard out, of explicit sinks too). ``progress`` sets the
    console sink's mode; without a console sink the logger prints nothing.
    """

    def __init__(
        self,
        run_dir: Path | None,
        *,
        total_steps: int | None,
        progress: str = "auto",
        tensorboard: bool = True,
        resume_step: int | None = None,
        stream: TextIO | None = None,
        sinks: Sequence[Any] | None = None,
    ) -> None:
        specs = list(default_sinks(tensorboard) if sinks is None else sinks)
        if not tensorboard:
            specs = [s for s in specs if not _is_tensorboard(s)]
        self.sinks: list[LogSink] = build_sinks(
            specs, run_dir=run_dir, resume_step=resume_step, total_steps=total_steps, progress=progress, stream=stream
        )
        self.console: ConsoleSink | None = next((s for s in self.sinks if isinstance(s, ConsoleSink)), None)
        self.mode = self.console.mode if self.console is not None else "off"

    def start(self, step: int) -> None:
        if self.console is not None:
            self.console.start(step)

    def log_step(self, step: int, epoch: int, values: dict[str, float]) -> None:
        """One training record: ``values`` has ``train/loss``, ``lr``, ``samples_per_s``..."""
        record = {"epoch": epoch, **values}
        for sink in self.sinks:
            sink.log(record, step)

    def log_validation(self, step: int, epoch: int, metrics: dict[str, float]) -> None:
        """One validation record: ``metrics`` has ``val/loss`` and ``val/<metric>``."""
        self.log_step(step, epoch, metrics)

    def log_stats(self, record: dict[str, Any], step: int) -> None:
        """One rank's ``logging.stats`` record (see :mod:`deepseek.train.stats`) to every sink that has
        ``log_stats`` (an optional method: the others are skipped)."""
        for sink in self.sinks:
            log_stats = getattr(sink, "log_stats", None)
            if callable(log_stats):
                log_stats(record, step)

    def message(self, text: str) -> None:
        if self.console is not None:
            self.console.message(text)

    def summary_table(self, summary: dict[str, Any]) -> None:
        """The run summary to every sink (the console shows it as a table)."""
        for sink in self.sinks:
            sink.summary(summary)

    def close(self) -> None:
        sinks, self.sinks = self.sinks, []
        for sink in sinks:
            sink.close()


def _is_tensorboard(spec: Any) -> bool:
    if isinstance(spec, TensorBoardSink):
        return True
    if isinstance(spec, LogSink) and not isinstance(spec, (str, dict)):
        return False
    return sink_spec(spec)[0].lower() in ("tensorboard", "tb")
