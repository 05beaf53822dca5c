"""Constraints checked before a candidate trains: parameters, FLOPs and latency on the target device.

* **Parameters**: the model built on the meta device (``torch.device("meta")``: shapes, no memory, no init).
* **FLOPs**: one forward of one sample on the meta model, counted by :func:`deepseek.profiler.flops.count_flops`
  (torch's dispatcher formulas; a multiply and an add are 2 FLOPs).
* **Latency** (ms of one forward of ``latency_batch`` samples), by ``constraints.latency``:

  - ``measure``: the model built with real weights on ``target_device`` when that device is here (``cpu``;
    ``cuda``/``cuda:N`` or a GPU name such as ``h200`` that ``torch.cuda.get_device_name`` contains), timed
    by ``torch.utils.benchmark.Timer.blocked_autorange`` (median; ``latency_threads`` CPU threads, default 1:
    on a busy machine more threads spin-wait on each other and a 0.15 ms forward measured 88 ms; CUDA
    synchronised by the Timer);
  - ``table``: looked up in the user's latency table (:func:`load_latency_table`): whole candidates, or
    per-block costs summed over the candidate's blocks plus ``base_ms``;
  - ``approximate_by_flops``: forward FLOPs x batch / ``device_flops`` (the device's FLOP/s, stated by the
    user): a lower bound that ignores memory traffic.

  Unset: measured when the device is here, else the table when one is given; a device that is neither here
  nor in a table (document 000's ``target_device: "v100"`` on a machine without one) is refused before the
  search starts, with one line saying the two ways out.

Cheap checks run first: latency is measured only for a candidate within the parameter and FLOP limits.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from deepseek.errors import ConfigError
from deepseek.profiler.flops import count_flops
from deepseek.search.nas.builders import build
from deepseek.search.nas.space import Constraints


@dataclass
class Measured:
    """What was measured of one candidate; ``latency_ms`` None when nothing priced it."""

    params: int
    flops: int  # forward FLOPs of one sample
    latency_ms: float | None
    latency_source: str | None  # "measured on cpu", "table", "flops / device_flops"


def local_device(name: str) -> torch.device | None:
    """``name`` as a device of this machine, or None when it is not here."""
    key = name.strip().lower()
    if key == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        return None
    if key == "cuda" or key.startswith("cuda:"):
        index = int(key.partition(":")[2] or torch.cuda.current_device())
        return torch.device("cuda", index) if index < torch.cuda.device_count() else None
    for i in range(torch.cuda.device_count()):  # "h200" on a machine with an NVIDIA H200
        if key in torch.cuda.get_device_name(i).lower().replace(" ", ""):
            return torch.device("cuda", i)
    return None


def load_latency_table(path: str | Path) -> dict[str, Any]:
    """A latency table: ``{"candidates": [{choice: value, ..., "ms": x}], "layers": [{block key: value, ...,
    "ms": x}], "base_ms": b}``. YAML holds that mapping; a CSV has an ``ms`` column and one row per candidate
    (columns named like the choices, ``layers.0.channels``) or per block (a ``layer_type`` column; a row whose
    ``layer_type`` is ``base`` gives ``base_ms``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"constraints.latency_table: '{path}': file not found; allowed: a YAML or CSV file"])
    if path.suffix.lower() == ".csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        table: dict[str, Any] = {"candidates": [], "layers": [], "base_ms": 0.0}
        for row in rows:
            if str(row.get("layer_type", "")).lower() == "base":
                table["base_ms"] = row["ms"]
            else:
                table["layers" if "layer_type" in row else "candidates"].append(row)
    else:
        try:
            table = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(
                [f"constraints.latency_table: '{path}': not valid YAML: {str(exc).splitlines()[0]}"]
            ) from None
    if not isinstance(table, dict) or not (table.get("candidates") or table.get("layers")):
        raise ConfigError([f"constraints.latency_table: '{path}' has no rows; allowed: 'candidates' and/or 'layers' "
                           f"lists of rows with an 'ms' value (CSV: an ms column)"])  # fmt: skip
    for kind in ("candidates", "layers"):
        for i, row in enumerate(table.get(kind) or []):
            try:
                row["ms"] = float(row["ms"])
            except (KeyError, TypeError, ValueError):
                raise ConfigError([f"constraints.latency_table: '{path}' {kind}[{i}].ms: {row.get('ms')!r}; "
                                   f"allowed: a number of milliseconds"]) from None  # fmt: skip
    table["base_ms"] = float(table.get("base_ms") or 0.0)
    return table


def _matches(row: dict[str, Any], values: dict[str, Any]) -> bool:
    return all(k in values and str(values[k]) == str(v) for k, v in row.items() if k != "ms")


def table_latency(table: dict[str, Any], candidate: dict[str, Any], blocks: list[dict[str, Any]]) -> float | None:
    """The candidate's row, else ``base_ms`` + per block the most specific matching ``layers`` row; None when a
    block has no row."""
    for row in table.get("candidates") or []:
        if _matches(row, candidate):
            return row["ms"]
    rows = table.get("layers") or []
    if not rows or not blocks:
        return None
    total = table["base_ms"]
    for block in blocks:
        found = [row for row in rows if _matches(row, block)]
        if not found:
            return None
        total += max(found, key=len)["ms"]
    return total


class ConstraintChecker:
    """Resolves how latency is obtained (refusing a device that is neither here nor priced), then measures each
    candidate and says which constraints it breaks. ``input_shape``: one sample's ``(C, H, W)`` or ``(D,)``."""

    def __init__(self, c: Constraints, input_shape: tuple[int, ...], latency_table: str | Path | None = None) -> None:
        self.c, self.input_shape = c, tuple(input_shape)
        table_path = latency_table or c.latency_table
        self.table = load_latency_table(table_path) if table_path is not None else None
        self.device = local_device(c.target_device)
        mode = c.latency
        if mode is None:
            mode = "measure" if self.device is not None else "table" if self.table is not None else None
        if mode is None:
            here = "cpu" + (", cuda" if torch.cuda.is_available() else "")
            raise ConfigError([
                f"constraints.target_device: {c.target_device!r} is not on this machine (here: {here}) and no "
                f"latency table prices it; allowed: a device that is here, a latency table (--latency-table FILE or "
                f"constraints.latency_table), or constraints.latency: approximate_by_flops with "
                f"constraints.device_flops (the device's FLOP/s)"])  # fmt: skip
        if mode == "measure" and self.device is None:
            raise ConfigError(
                [
                    f"constraints.latency: measure, but target_device {c.target_device!r} is not on this "
                    f"machine; allowed: cpu or a GPU that is here, or latency: table / approximate_by_flops"
                ]
            )
        if mode == "table" and self.table is None:
            raise ConfigError(["constraints.latency: table without a table; allowed: --latency-table FILE or "
                               "constraints.latency_table"])  # fmt: skip
        self.mode = mode

    def measure(self, spec: dict[str, Any], candidate: dict[str, Any], blocks: list[dict[str, Any]]) -> Measured:
        """Parameters and FLOPs on the meta device; latency only when those are within their limits."""
        model = build(spec, "meta")
        params = sum(p.numel() for p in model.parameters())
        x = torch.empty(1, *self.input_shape, device="meta")
        model.eval()
        flops = count_flops(model, lambda: model(x)).total
        m = Measured(params, flops, None, None)
        if self.params_or_flops_broken(m):
            return m
        if self.mode == "measure":
            assert self.device is not None
            m.latency_ms, m.latency_source = self._time(spec), f"measured on {self.device}"
        elif self.mode == "table":
            assert self.table is not None
            m.latency_ms, m.latency_source = table_latency(self.table, candidate, blocks), "table"
        else:
            assert self.c.device_flops is not None
            m.latency_ms = flops * self.c.latency_batch / self.c.device_flops * 1e3
            m.latency_source = "flops / device_flops"
        return m

    def _time(self, spec: dict[str, Any]) -> float:
        from torch.utils.benchmark import Timer

        model = build(spec).to(self.device).eval()
        x = torch.randn(self.c.latency_batch, *self.input_shape, device=self.device)
        with torch.inference_mode():
            model(x)  # warm-up (lazy init, cuDNN autotune) outside the timing
            timer = Timer("model(x)", globals={"model": model, "x": x}, num_threads=self.c.latency_threads)
            return timer.blocked_autorange(min_run_time=0.2).median * 1e3

    def params_or_flops_broken(self, m: Measured) -> bool:
        return bool(self.violations(m, latency=False))

    def violations(self, m: Measured, *, latency: bool = True) -> list[str]:
        """One reason per broken constraint (empty: the candidate may train)."""
        out = []
        if self.c.max_params is not None and m.params > self.c.max_params:
            out.append(f"params {m.params:,} > max_params {self.c.max_params:,.0f}")
        if self.c.max_flops is not None and m.flops > self.c.max_flops:
            out.append(f"flops {m.flops:,} > max_flops {self.c.max_flops:,.0f}")
        if latency and self.c.max_latency_ms is not None:
            if m.latency_ms is None:
                out.append(f"latency on {self.c.target_device}: the latency table has no entry for this candidate")
            elif m.latency_ms > self.c.max_latency_ms:
                out.append(f"latency {m.latency_ms:.3g} ms > max_latency_ms {self.c.max_latency_ms:g} ms "
                           f"({m.latency_source})")  # fmt: skip
        return out
