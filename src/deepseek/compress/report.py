"""The compression comparison: every level x backend measured on the user's own validation data.

``compare(model, val_batches, levels=("fp32", "fp16", "int8", "int4"), calib_batches=..., backends=None)``
builds each variant (the rows: :mod:`deepseek.compress.targets`: torch, ONNX Runtime, OpenVINO, ExecuTorch,
LiteRT) and measures, on the same batches: accuracy, the cosine similarity of its outputs to fp32's, its size
on disk, and its median latency on one batch against fp32 eager. A row that cannot be built or run here
(a converter that rejects the model, a package not installed) stays in the table as ``failed: <one line>``.

``pick(rows, max_accuracy_drop)`` then takes, among the rows within the budget in points, the fastest of
the smallest ones (sizes within 5% of the smallest count as equal). ``save_report`` writes ``report.json``
and a PNG chart.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from deepseek.compress.quantizer import median_ms
from deepseek.compress.targets import RUNTIMES, check_backends, runtime_of, variants

__all__ = ["HEADER", "LEVELS", "RUNTIMES", "compare", "pick", "runtime_of", "save_report", "variants"]

LEVELS = ("fp32", "fp16", "bf16", "int8", "int4")
SIZE_TIE = 0.05  # pick(): sizes within 5% of the smallest count as equal (file formats differ by headers)


def _tensors(inputs: Any) -> tuple[list[str], tuple[torch.Tensor, ...]]:
    if isinstance(inputs, dict):
        return list(inputs), tuple(inputs.values())
    return ["input"], (inputs,)


def _call(model: nn.Module, inputs: Any, positional: bool) -> torch.Tensor:
    out = model(*_tensors(inputs)[1]) if positional else model(inputs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def compare(
    model: nn.Module,
    val_batches: Sequence[Any],
    levels: Sequence[str] = ("fp32", "fp16", "int8", "int4"),
    calib_batches: Sequence[Any] | None = None,  # inputs only; default: the validation inputs
    method: str = "percentile",
    repeats: int = 20,
    task: str = "classification",
    log: Callable[[str], None] = print,
    backends: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per level and backend: accuracy, output cosine to fp32, size, latency, speed-up.

    ``val_batches``: ``(inputs, labels)`` pairs, inputs a tensor (N, ...) or a dict of (N, L) tensors.
    ``task="embedding"``: the outputs are embeddings (no accuracy; compare by cosine).
    ``backends``: runtimes to measure, some of ``RUNTIMES`` (None = all); fp32 torch eager always runs."""
    unknown = [lv for lv in levels if lv not in LEVELS]
    if unknown or not levels or levels[0] != "fp32":
        raise ValueError(f"levels must start with fp32, then any of {', '.join(LEVELS[1:])}; got {list(levels)}")
    backends = check_backends(backends)
    model = model.eval()
    batches = [(b[0], b[1]) for b in val_batches]
    calib = list(calib_batches)[:8] if calib_batches else [x for x, _ in batches[:8]]
    example = batches[0][0]
    reference = [_call(model, x, False).float() for x, _ in batches]
    base_ms = 1.0  # replaced by fp32 eager's own row (fp32 comes first)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            rows_of_level = variants(model, level, calib, example, method, Path(tmp), backends)
            for backend, (build, positional, size) in rows_of_level.items():
                row: dict[str, Any] = {"level": level, "backend": backend}
                try:
                    variant = build()
                    outs = [_call(variant, x, positional).float() for x, _ in batches]
                    correct = (
                        sum(int((o.argmax(-1) == y).sum()) for o, (_, y) in zip(outs, batches))
                        if task == "classification"
                        else None
                    )
                    cosine = torch.cat([nn.functional.cosine_similarity(o, r, dim=-1) for o, r in zip(outs, reference)])
                    ms = median_ms(lambda v=variant, p=positional: _call(v, example, p), repeats)
                    accuracy = correct / sum(len(y) for _, y in batches) if correct is not None else None
                    row.update(accuracy=accuracy, cosine=float(cosine.mean()),
                               size_mb=size(variant) / 1e6, latency_ms=ms)  # fmt: skip
                except Exception as err:  # noqa: BLE001 - a backend that cannot run here is a row that says so
                    row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:200]
                if level == "fp32" and backend == "torch eager":
                    base_ms = row["latency_ms"]  # timed like every other row, in turn
                if "error" not in row:
                    row["speedup"] = base_ms / row["latency_ms"]
                log(_line(row))
                rows.append(row)
    return rows


def _line(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"{row['level']:<6}{row['backend']:<26}failed: {row['error']}"
    accuracy = f"{row['accuracy']:>9.4f}" if row["accuracy"] is not None else f"{'-':>9}"
    return (
        f"{row['level']:<6}{row['backend']:<26}{accuracy}{row['cosine']:>9.4f}{row['size_mb']:>10.3f}"
        f"{row['latency_ms']:>11.3f}{row['speedup']:>9.2f}"
    )


HEADER = f"{'level':<6}{'backend':<26}{'accuracy':>9}{'cosine':>9}{'size MB':>10}{'latency ms':>11}{'x fp32':>9}"


def pick(rows: list[dict[str, Any]], max_accuracy_drop: float) -> dict[str, Any] | None:
    """Among the rows within ``max_accuracy_drop`` points of fp32 eager's accuracy (its cosine, for
    embeddings: within that many hundredths of 1.0), the fastest of the smallest: every row within 5%
    (``SIZE_TIE``) of the smallest size counts as equally small, since the same weights in another file
    format differ by headers and graph text. So where OpenVINO INT8 is about as small as the other INT8
    rows and faster, it is picked."""
    base = next(r for r in rows if r["level"] == "fp32" and r["backend"] == "torch eager")
    key = "accuracy" if base.get("accuracy") is not None else "cosine"
    floor = base[key] - max_accuracy_drop / 100 if key == "accuracy" else 1.0 - max_accuracy_drop / 100
    ok = [r for r in rows if "error" not in r and r[key] >= floor]
    if not ok:
        return None
    smallest = min(r["size_mb"] for r in ok)
    return min((r for r in ok if r["size_mb"] <= smallest * (1 + SIZE_TIE)), key=lambda r: r["latency_ms"])


def save_report(rows: list[dict[str, Any]], out_dir: str | Path, chosen: dict[str, Any] | None = None) -> Path:
    """``report.json`` and ``report.png`` (size and speed-up per row, accuracy on each bar) in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps({"rows": rows, "chosen": chosen}, indent=2))
    good = [r for r in rows if "error" not in r]
    labels = [f"{r['level']}\n{r['backend']}" for r in good]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(8, 1.4 * len(good)), 4.5))
    bars = ax1.bar(labels, [r["size_mb"] for r in good], color="#4c72b0")
    ax1.set_ylabel("size on disk (MB)")
    for bar, r in zip(bars, good):
        ax1.annotate(
            f"{r['accuracy'] if r['accuracy'] is not None else r['cosine']:.3f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax2.bar(labels, [r["speedup"] for r in good], color="#55a868")
    ax2.axhline(1.0, color="grey", linewidth=0.8)
    ax2.set_ylabel("speed-up vs fp32 eager")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7, rotation=45)
    ax1.set_title("size (labels: accuracy, or cosine for embeddings)")
    ax2.set_title("latency, one batch")
    fig.tight_layout()
    fig.savefig(out / "report.png", dpi=110)
    plt.close(fig)
    return out / "report.json"
