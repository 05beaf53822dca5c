"""The search history (``OUT/history.jsonl``), its Pareto front and its table.

One JSON line per sampled candidate, written, flushed and ``fsync``'d before the next candidate starts, so a
search killed with ``kill -9`` loses at most the candidate it was evaluating. A torn last line (a kill inside
the write) is dropped when the history is read again, and the file is cut back to its last whole line so that
the next line does not glue onto it.

A record: ``n`` (0-based sample number), ``choices``, ``status`` (``ok``, ``rejected``, ``failed``), ``score``
(None unless ok), ``params``, ``flops``, ``latency_ms``, ``latency_source``, ``reason`` (why rejected or
failed), ``duplicate_of`` (an earlier sample with the same choices, whose score is reused), ``run_dir``,
``seconds``, ``model`` (the model spec).

Plain JSON lines rather than an Optuna study: the history must hold rejected candidates with their reasons and
replay into any of the four searchers, of which only TPE is an Optuna sampler.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

HISTORY_FILE = "history.jsonl"


def read_history(path: Path) -> list[dict[str, Any]]:
    """The whole records of ``path`` in order; a torn last line is dropped and cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    records, good = [], 0
    for line in data.splitlines(keepends=True):
        if not line.endswith(b"\n"):
            break  # torn: written without its newline
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break  # torn inside (a page written out of order): this line and anything after it is dropped
        good += len(line)
    if good != len(data):
        with path.open("r+b") as f:
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
    return records


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a line, durable before this returns."""
    line = json.dumps(record, default=str) + "\n"  # key order kept: choices stay in the space's order
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def dominates(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``a`` is at least as good as ``b`` in score (higher), params and latency (lower; unknown latency is
    not compared), and strictly better in one."""
    pairs = [(a["score"], b["score"]), (-a["params"], -b["params"])]
    if a.get("latency_ms") is not None and b.get("latency_ms") is not None:
        pairs.append((-a["latency_ms"], -b["latency_ms"]))
    return all(x >= y for x, y in pairs) and any(x > y for x, y in pairs)


def pareto_front(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The scored, distinct candidates no other dominates (accuracy up, params and latency down), best first."""
    scored = [r for r in records if r.get("status") == "ok" and r.get("duplicate_of") is None]
    front = [r for r in scored if not any(dominates(o, r) for o in scored if o is not r)]
    return sorted(front, key=lambda r: (-r["score"], r["params"]))


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest score; ties go to fewer parameters, then the earlier sample."""
    scored = [r for r in records if r.get("status") == "ok"]
    return min(scored, key=lambda r: (-r["score"], r["params"], r["n"])) if scored else None


def describe(choices: dict[str, Any]) -> str:
    """``Conv-128-ReLU | Transformer-64-Swish`` for a stack, ``width=32 dropout=0.1`` for a model family."""
    if not choices or not all(key.startswith("layers.") for key in choices):
        return " ".join(f"{k}={v}" for k, v in choices.items())
    layers: dict[str, list[str]] = {}
    for key, value in choices.items():
        layers.setdefault(key.rpartition(".")[0], []).append(str(value))
    return " | ".join("-".join(parts) for parts in layers.values())


def table(records: list[dict[str, Any]]) -> str:
    """A fixed-width text table of records: sample number, architecture, score, params, FLOPs, latency."""
    rows = [("#", "architecture", "score", "params", "MFLOPs", "latency_ms")]
    for r in records:  # numbered from 1, as the search's log numbers its samples
        latency = "-" if r.get("latency_ms") is None else f"{r['latency_ms']:.3g}"
        score = "-" if r.get("score") is None else f"{r['score']:.4f}"
        rows.append(
            (str(r["n"] + 1), describe(r["choices"]), score, f"{r['params']:,}", f"{r['flops'] / 1e6:.2f}", latency)
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in rows)  # fmt: skip


def summary_counts(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many samples were trained, reused (duplicates), rejected by a constraint, or failed."""
    return {
        "sampled": len(records),
        "trained": sum(r["status"] == "ok" and r.get("duplicate_of") is None for r in records),
        "duplicates": sum(r.get("duplicate_of") is not None for r in records),
        "rejected": sum(r["status"] == "rejected" for r in records),
        "failed": sum(r["status"] == "failed" for r in records),
    }
