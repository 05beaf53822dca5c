"""The end of a study (also of one continued later): ``trials.csv``, ``best.yaml``, offline plots, ``study.json``.

- ``trials.csv``: one row per trial -- number, state, value, every parameter of the space (empty where a
  conditional one was inactive), duration_s, run_dir; the same table is printed (rich).
- ``best.yaml``: the best COMPLETE trial's full resolved config (the study's base config, its overrides and the
  trial's values, validated by ``load_config``), ready for ``deepseek train best.yaml``.
- ``plots/optimization_history.html``, ``param_importances.html``, ``parallel_coordinate.html``: Optuna's
  plotly figures written with plotly.js inline (no CDN: they open offline); a plot Optuna cannot draw yet (one
  complete trial has no parameter importances) is skipped with a note.
- ``study.json``: the settings (name, config, space, metric, mode, storage, sampler, pruner, ...), the trial
  counts per state and the best trial.
"""

from __future__ import annotations

import csv
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

# ``settings`` below is a deepseek.search.tune.TuneSettings, typed Any: this module must not import tune (which
# imports it: the layers contract forbids cycles between sibling modules)

PLOTS = {
    "optimization_history": "plot_optimization_history",
    "param_importances": "plot_param_importances",
    "parallel_coordinate": "plot_parallel_coordinate",
}


def write_report(study: optuna.Study, settings: Any, *, print_table: bool = True) -> dict[str, Path]:
    """Write the study's files into ``settings.study_dir``; return their paths by name (``csv``, ``best``,
    ``study``, and each plot's name). Prints the table and the best trial when ``print_table``."""
    folder = Path(settings.study_dir)
    folder.mkdir(parents=True, exist_ok=True)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    columns, rows = trial_rows(trials, list(settings.space))
    written = {"csv": _write_csv(folder / "trials.csv", columns, rows)}
    best = _best_trial(study)
    if best is not None:
        written["best"] = write_best_yaml(folder / "best.yaml", settings, best)
    written.update(write_plots(study, folder / "plots"))
    written["study"] = _write_study_json(folder / "study.json", study, settings, best)
    if print_table:
        _print_table(columns, rows, settings)
        if best is not None:
            print(f"best: trial {best.number}, {settings.metric} {best.value:.6g}; config: {written['best']}")
        else:
            print(f"best: none (no trial completed); study folder: {folder}")
    return written


def trial_rows(trials: list[optuna.trial.FrozenTrial], keys: list[str]) -> tuple[list[str], list[list[Any]]]:
    """The table's header and one row per trial (see the module docstring)."""
    columns = ["number", "state", "value", *keys, "duration_s", "run_dir"]
    rows = []
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append([t.number, t.state.name, t.value, *(t.params.get(k) for k in keys),
                     None if duration is None else round(duration, 3), t.user_attrs.get("run_dir")])  # fmt: skip
    return columns, rows


def _write_csv(path: Path, columns: list[str], rows: list[list[Any]]) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
    tmp.replace(path)  # a reader never sees half a table
    return path


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and not math.isnan(t.value)]  # fmt: skip
    if not complete:
        return None
    return study.best_trial


def write_best_yaml(path: Path, settings: Any, best: optuna.trial.FrozenTrial) -> Path:
    """The best trial's full resolved config, with a comment saying where it comes from."""
    from deepseek.config import load_config

    cfg = load_config(settings.config, [*settings.overrides, *best.user_attrs.get("overrides", [])])
    resolved = yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    header = (f"# best trial of study '{settings.name}': trial {best.number}, {settings.metric} = {best.value:.6g}\n"
              f"# from {settings.config} with {' '.join(best.user_attrs.get('overrides', [])) or 'no changes'}\n"
              f"# run it: deepseek train {path}\n")  # fmt: skip
    path.write_text(header + yaml.safe_dump(resolved, sort_keys=False), encoding="utf-8")
    return path


def write_plots(study: optuna.Study, folder: Path) -> dict[str, Path]:
    """Optuna's three plots as self-contained HTML files (plotly.js inline, so they need no network)."""
    import optuna.visualization as vis

    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        print("note: no completed trial yet: no plots", file=sys.stderr)
        return written
    for name, function in PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's experimental-feature warnings
                figure = getattr(vis, function)(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # too few trials for importances, ...
            print(f"note: no {name} plot: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                  file=sys.stderr)  # fmt: skip
            continue
        path = folder / f"{name}.html"
        figure.write_html(path, include_plotlyjs=True, full_html=True)
        written[name] = path
    return written


def _write_study_json(path: Path, study: optuna.Study, settings: Any, best: optuna.trial.FrozenTrial | None) -> Path:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    content = {
        **settings.describe(),
        "storage": settings.storage or str(Path(settings.study_dir) / "journal.log"),
        "sampler_class": type(study.sampler).__name__,  # what ``auto`` chose
        "trial_states": states,
        "best": None
        if best is None
        else {
            "number": best.number,
            "value": best.value,
            "params": best.params,
            "run_dir": best.user_attrs.get("run_dir"),
        },  # fmt: skip
    }
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=str) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def _print_table(columns: list[str], rows: list[list[Any]], settings: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"study {settings.name}: {settings.metric} ({settings.mode})")
    for column in columns:
        table.add_column(column, justify="right" if column in ("number", "value", "duration_s") else "left")
    folder = Path(settings.study_dir)
    for row in rows:
        *rest, run_dir = row  # shown inside the study folder (trials.csv has the whole path)
        shown = Path(run_dir).relative_to(folder) if run_dir and Path(run_dir).is_relative_to(folder) else run_dir
        table.add_row(*(_cell(v) for v in [*rest, shown]))
    Console(width=max(120, Console().width)).print(table)  # a pipe or a log file: 120 columns, not 80


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
