"""``deepseek data check CONFIG`` and ``deepseek data drift REFERENCE NEW``: tables plus JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from deepseek.cli.errors import UsageError


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2))


def cmd_data_check(args: argparse.Namespace) -> int:
    from deepseek.config import load_config
    from deepseek.data import build_dataset
    from deepseek.data.quality.check import check_dataset

    cfg = load_config(args.config, args.overrides)
    splits = build_dataset(cfg.data.name, **cfg.data.kwargs)
    if isinstance(splits.train[0][0], str):
        raise UsageError(
            f"dataset '{cfg.data.name}' has text inputs: check works on numeric inputs (embed texts first)"
        )
    reference = None
    if args.reference != "none":
        reference = splits.val if args.reference == "val" else build_dataset(args.reference).train
    report = check_dataset(splits.train, reference, folds=args.folds, seed=cfg.train.seed)
    report["dataset"] = cfg.data.name
    clean = report.pop("clean_indices")
    if args.write_clean:
        Path(args.write_clean).write_text(json.dumps({"dataset": cfg.data.name, "split": "train", "indices": clean}))
    _write_json(args.json, {**report, "clean_index": args.write_clean})
    n = report["noise"]
    table = Table(title=f"data check: {cfg.data.name} (train, {report['samples']} samples)")
    table.add_column("stage")
    table.add_column("finding")
    table.add_column("count", justify="right")
    rows = [
        ("noise", "unreadable samples", n["unreadable"]["count"]),
        ("noise", "NaN / infinite values", n["invalid_values"]["count"]),
        ("noise", "extra copies of duplicates", n["duplicates"]["extra_copies"]),
        ("noise", "duplicate groups with conflicting labels", n["conflicting_duplicates"]["groups"]),
        ("noise", "suspected label noise (confident learning)", n["label_noise"]["count"]),
        ("domain", "outside the reference" if reference is not None else "no reference set", report["domain"]["count"]),
    ]
    rows += [
        ("difficulty", f"{k} (mean loss {report['difficulty'][k]['mean_loss']:.3f})", report["difficulty"][k]["count"])
        for k in ("easy", "medium", "hard")
    ]
    rows.append(("total", "samples a clean index would drop", report["removed"]))
    for stage, finding, count in rows:
        table.add_row(stage, finding, str(count))
    Console().print(table)
    return 0


def cmd_data_drift(args: argparse.Namespace) -> int:
    from deepseek.data.quality import drift_report, load_matrix

    for source in (args.reference, args.new):
        # `name:split` is a dataset split (load_matrix builds it); anything else must be an existing file
        looks_like_file = Path(source).suffix.lower() in (".csv", ".parquet", ".pq", ".npy") or ":" not in source
        if looks_like_file and not Path(source).is_file():
            raise UsageError(
                f"'{source}': no such file (give two .csv / .parquet / .npy files or dataset splits such as digits:val)"
            )
    try:
        ref, names = load_matrix(args.reference)
        new, _ = load_matrix(args.new)
        report = drift_report(ref, new, names, psi_warn=args.psi_warn, psi_drift=args.psi_drift, alpha=args.alpha)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report.update(reference=args.reference, new=args.new)
    _write_json(args.json, report)
    table = Table(title=f"drift: {args.reference} -> {args.new}: {report['verdict'].upper()}")
    for col in ("feature", "PSI", "KS", "p (Bonferroni)", "status"):
        table.add_column(col, justify="left" if col in ("feature", "status") else "right")
    for row in report["features"][: args.top]:
        table.add_row(row["name"], f"{row['psi']:.4f}", f"{row['ks']:.4f}", f"{row['p_adjusted']:.3g}", row["status"])
    Console().print(table)
    print(
        f"verdict: {report['verdict']} ({len(report['drifted_features'])} drifted, {len(report['warning_features'])} warning, of {len(names)} features)"
    )
    return 1 if report["verdict"] == "drift" and args.fail_on_drift else 0


def add_data_parser(sub: Any) -> None:
    p = sub.add_parser("data", help="data quality: cleaning report and drift check")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = dsub.add_parser("check", help="noise, domain and difficulty report of a config's training data")
    c.add_argument("config")
    c.add_argument("overrides", nargs="*", metavar="key.path=value")
    c.add_argument(
        "--reference", default="val", help="'val' (the config's validation split), a dataset name, or 'none'"
    )
    c.add_argument("--folds", type=int, default=5, help="cross-validation folds for out-of-fold probabilities")
    c.add_argument("--json", help="write the report as JSON here")
    c.add_argument("--write-clean", metavar="PATH", help="write the indices of the samples kept as JSON")
    c.set_defaults(fn=cmd_data_check)
    d = dsub.add_parser("drift", help="per-feature PSI and KS between two data sets")
    d.add_argument("reference", help=".csv / .parquet / .npy file, or a dataset split such as digits:train")
    d.add_argument("new", help="the same kinds as REFERENCE")
    d.add_argument("--psi-warn", type=float, default=0.1)
    d.add_argument("--psi-drift", type=float, default=0.25)
    d.add_argument("--alpha", type=float, default=0.01, help="KS significance after Bonferroni correction")
    d.add_argument("--top", type=int, default=15, help="rows to show, largest PSI first")
    d.add_argument("--json", help="write the report as JSON here")
    d.add_argument("--fail-on-drift", action="store_true", help="exit 1 when the verdict is drift")
    d.set_defaults(fn=cmd_data_drift)
