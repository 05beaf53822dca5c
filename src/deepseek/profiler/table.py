"""The terminal table of a profile summary (rich): the step split, modules, operators, FLOPs and MFU, memory,
the top bottlenecks with advice, the metrics, and where the files are."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from deepseek.profiler.metrics import NEEDS_CUDA


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def _flops(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def print_summary(summary: dict[str, Any], console: Console | None = None, rows: int = 12) -> None:
    """Print ``summary`` (a summary.json dict) as tables; ``rows`` modules and operators at most."""
    console = console or Console()
    st = summary["step_time_s"]
    console.print(f"[bold]profile[/bold] {summary['model']} ({summary['mode']}, {summary['precision']}, batch "
                  f"{summary['batch_size']}) on {summary['device_name']}: {summary['steps']} steps, step "
                  f"{_ms(st['mean'])} ms (min {_ms(st['min'])}, max {_ms(st['max'])})")  # fmt: skip
    split = Table(title="step split (ms per step)")
    for col in ("phase", "ms", "share"):
        split.add_column(col, justify="left" if col == "phase" else "right")
    for key, value in summary["split_s"].items():
        split.add_row(key, _ms(value), f"{summary['split_share'][key]:.1%}")
    console.print(split)
    modules = Table(title=f"modules (top {rows} by time; inclusive of submodules)")
    for col in ("module", "forward ms", "backward ms", "FLOPs/step"):
        modules.add_column(col, justify="left" if col == "module" else "right")
    ranked = sorted(summary["modules"], key=lambda m: -(m["forward_s"] + m["backward_s"]))
    for m in ranked[:rows]:
        modules.add_row(m["name"], _ms(m["forward_s"]), _ms(m["backward_s"]), _flops(m["flops"]))
    console.print(modules)
    ops = Table(title=f"operators (top {rows} by self time)")
    for col in ("operator", "calls/step", "self ms", "total ms", "FLOPs/step"):
        ops.add_column(col, justify="left" if col == "operator" else "right")
    for op in summary["operators"][:rows]:
        ops.add_row(op["name"], f"{op['calls']:.0f}", _ms(op["self_s"]), _ms(op["total_s"]), _flops(op["flops"]))
    console.print(ops)
    f = summary["flops"]
    console.print(f"FLOPs per step: {_flops(f['per_step'])} (dispatcher {_flops(f['dispatcher'])}, module sum "
                  f"{_flops(f['module_sum'])}, analytic {_flops(f['analytic'])})")  # fmt: skip
    if f["analytic_formula"]:
        console.print(f"  analytic: {f['analytic_formula']}", markup=False)
    for note in f["notes"]:
        console.print(f"  note: {note}", markup=False)
    peak = summary["peak"]
    console.print(f"achieved {_flops(summary['achieved_flops_per_s'])}FLOP/s; peak {_flops(peak['flops_per_s'])}FLOP/s "
                  f"({peak['dtype']}: {peak['how']}); MFU "
                  f"{'-' if summary['mfu'] is None else format(summary['mfu'], '.2%')}", markup=False)  # fmt: skip
    mem = summary["memory"]
    shown = "-" if mem["peak_bytes"] is None else f"{mem['peak_bytes'] / 2**20:.1f} MiB"
    console.print(f"peak memory ({mem['device']}): {shown} ({mem['how']})", markup=False)
    if summary["bottlenecks"]:
        console.print("[bold]bottlenecks[/bold]")
        for b in summary["bottlenecks"]:
            console.print(f"  - {b['advice']}", markup=False)
    for name, value in summary["metrics"].items():
        text = f"{name}: needs CUDA (this run is on {summary['device']}); skipped" if value == NEEDS_CUDA else \
            f"{name}: {value}"  # fmt: skip
        console.print(text, markup=False)
    files = ", ".join(f"{k}={v}" for k, v in summary["files"].items())
    console.print(f"files: {files}", markup=False)
