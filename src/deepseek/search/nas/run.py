"""The architecture-search loop: ask, check constraints, evaluate, tell, record; resumable; Pareto front and best.

``OUT/`` holds ``search.json`` (the settings), ``history.jsonl`` (see :mod:`deepseek.search.nas.history`),
``candidates/<n>/`` (each proxy training's run directory), and at the end ``pareto.json``, ``summary.json`` and
``best.yaml`` (the base config with the best architecture, for ``deepseek train best.yaml``).

Budget: ``sample_size`` candidates sampled in all, counting the ones a constraint rejected and repeats of an
earlier candidate (whose result is reused, not trained again).

Resume: started again on the same ``OUT`` with the same algorithm, seed, options and space, the search reads
its history, replays it into a fresh searcher (``ask()`` then ``tell(recorded candidate, recorded score)`` per
record, so the searcher's random state and what it learnt are as they were) and continues with the next
sample; a larger ``sample_size`` extends a finished search. The candidate that was training when the search
was killed is asked again and trained from the start.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from deepseek.config import load_config, read_yaml
from deepseek.errors import ConfigError
from deepseek.search.nas.algorithms import make_searcher
from deepseek.search.nas.builders import model_spec
from deepseek.search.nas.constraints import ConstraintChecker
from deepseek.search.nas.evaluate import candidate_config, load_evaluator, proxy_train
from deepseek.search.nas.history import (
    HISTORY_FILE,
    append_record,
    best_record,
    describe,
    pareto_front,
    read_history,
    summary_counts,
    table,
)
from deepseek.search.nas.space import SearchSpace
from deepseek.train.assemble import build_splits

SETTINGS_FILE = "search.json"
_RESUME_KEYS = ("algorithm", "seed", "options", "choices")  # what must match for a history to be replayed


def _settings(space: SearchSpace) -> dict[str, Any]:
    return {"algorithm": space.algorithm, "seed": space.seed, "options": space.options, "choices": space.choices(),
            "sample_size": space.sample_size}  # fmt: skip


def _check_resumable(out: Path, settings: dict[str, Any]) -> None:
    """A history written by other settings cannot be replayed: refused, naming the first difference."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text())
    fresh = json.loads(json.dumps(settings, default=str))  # as JSON would have stored them (tuples -> lists)
    for key in _RESUME_KEYS:
        if saved.get(key) != fresh.get(key):
            raise ConfigError(
                [
                    f"--output-dir: '{out}' holds a search with {key} {saved.get(key)!r}, not "
                    f"{fresh.get(key)!r}; allowed: the same {key} to resume it, or another --output-dir"
                ]
            )


def _line(record: dict[str, Any], total: int, metric: str) -> str:
    head = f"[{record['n'] + 1:>{len(str(total))}}/{total}] {describe(record['choices'])}"
    if record.get("params") is not None:
        head += f"  params {record['params']:,}  MFLOPs {record['flops'] / 1e6:.2f}"
    if record.get("latency_ms") is not None:
        head += f"  latency {record['latency_ms']:.3g} ms"
    if record["status"] == "ok":
        again = f" (same as #{record['duplicate_of'] + 1})" if record.get("duplicate_of") is not None else ""
        return f"{head}  -> {metric} {record['score']:.4f}{again} ({record['seconds']:.1f} s)"
    return f"{head}  -> {record['status']}: {record['reason']}"


def run_search(
    space: SearchSpace,
    config: str | Path | dict[str, Any],
    output_dir: str | Path,
    *,
    epochs: int | None = None,
    evaluator: str | Callable[[dict[str, Any], dict[str, Any]], float] | None = None,
    latency_table: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run (or resume) the search of ``space`` on the base run config ``config`` into ``output_dir``; return the
    summary (counts, best record, Pareto front). ``epochs`` / ``evaluator`` override ``space.evaluation``'s."""
    out = Path(output_dir)
    ev = space.evaluation
    epochs = epochs or ev.get("epochs") or 1
    metric = ev.get("metric", "val/accuracy")
    evaluator = evaluator or ev.get("evaluator")
    evaluate = load_evaluator(evaluator) if isinstance(evaluator, str) else evaluator
    if isinstance(config, dict):  # the run config itself, from the search YAML's `config:`
        base_raw, cfg = copy.deepcopy(config), load_config(None, data=copy.deepcopy(config))
    else:
        base_raw, cfg = read_yaml(config), load_config(config)
    splits = build_splits(cfg)  # the data's input shape and classes size the candidates
    input_shape = tuple(splits.input_shape or ())
    if not input_shape:
        raise ConfigError([f"config '{config}': data '{base_raw.get('data')}' does not say its input shape; allowed: a "
                           f"dataset whose splits give input_shape (the models are sized from it)"])  # fmt: skip
    checker = ConstraintChecker(space.constraints, input_shape, latency_table)  # refuses an unpriced device now
    settings = _settings(space)
    out.mkdir(parents=True, exist_ok=True)
    _check_resumable(out, settings)
    (out / SETTINGS_FILE).write_text(
        json.dumps(
            {
                **settings,
                "config": config if isinstance(config, dict) else str(config),
                "epochs": epochs,
                "metric": metric,
                "evaluator": evaluator if isinstance(evaluator, str) else None,
            },
            indent=2,
            default=str,
        )
    )
    history_path = out / HISTORY_FILE
    records = read_history(history_path)
    searcher = make_searcher(space.algorithm, space.choices(), space.seed, **space.options)
    for r in records:  # replay: the searcher's state as it was after these samples
        searcher.ask()
        searcher.tell(r["choices"], r["score"] if r["status"] == "ok" else None)
    if records:
        log(f"resuming: {len(records)} of {space.sample_size} samples in {history_path}")
    seen = {json.dumps(r["choices"], sort_keys=True): r for r in records
            if r["status"] in ("ok", "rejected") and r.get("duplicate_of") is None}  # fmt: skip
    base_model = base_raw.get("model") if isinstance(base_raw.get("model"), dict) else {"name": base_raw.get("model")}
    for n in range(len(records), space.sample_size):
        candidate = searcher.ask()
        key = json.dumps(candidate, sort_keys=True)
        start = time.perf_counter()
        if key in seen:  # a repeat: the earlier result, not another training
            earlier = seen[key]
            record = {**earlier, "n": n, "duplicate_of": earlier["n"], "seconds": 0.0}
        else:
            record = _evaluate(space, candidate, n, checker, base_raw, base_model, splits, input_shape, out, epochs,
                               metric, evaluate)  # fmt: skip
            record["seconds"] = round(time.perf_counter() - start, 3)
            if record["status"] in ("ok", "rejected"):
                seen[key] = record
        searcher.tell(candidate, record["score"] if record["status"] == "ok" else None)
        append_record(history_path, record)
        records.append(record)
        log(_line(record, space.sample_size, metric))
    return _finish(out, records, base_raw, metric, log)


def _evaluate(
    space: SearchSpace,
    candidate: dict[str, Any],
    n: int,
    checker: ConstraintChecker,
    base_raw: dict[str, Any],
    base_model: dict[str, Any],
    splits: Any,
    input_shape: tuple[int, ...],
    out: Path,
    epochs: int,
    metric: str,
    evaluate: Callable[..., float] | None,
) -> dict[str, Any]:
    """One new candidate's record: rejected by a constraint (never trained), failed, or scored."""
    record: dict[str, Any] = {"n": n, "choices": candidate, "status": "ok", "score": None, "params": None,
                              "flops": None, "latency_ms": None, "latency_source": None, "reason": None,
                              "duplicate_of": None, "run_dir": None}  # fmt: skip
    blocks = space.block_list(candidate) if space.kind == "stack" else []
    try:
        spec = model_spec(space, candidate, base_model, input_shape, splits.num_classes)
        measured = checker.measure(spec, candidate, blocks)
    except (ValueError, TypeError, RuntimeError) as exc:  # a combination that does not build (heads vs width)
        return {**record, "status": "rejected", "reason": f"cannot be built: {str(exc).splitlines()[0]}"}
    record.update(params=measured.params, flops=measured.flops, latency_ms=measured.latency_ms,
                  latency_source=measured.latency_source, model=spec)  # fmt: skip
    if broken := checker.violations(measured):
        return {**record, "status": "rejected", "reason": "; ".join(broken)}
    try:
        if evaluate is not None:
            score = float(evaluate(dict(candidate), spec))
        else:
            run_dir = out / "candidates" / f"{n:04d}"
            ev = space.evaluation
            raw = candidate_config(base_raw, spec, epochs=epochs, train_size=ev.get("train_size"),
                                   val_size=ev.get("val_size"))  # fmt: skip
            record["run_dir"] = str(run_dir)
            score = proxy_train(raw, run_dir, metric)
    except ConfigError as exc:  # the user's settings (a metric the run lacks): stop the search, not this candidate
        if evaluate is not None:
            raise
        raise ConfigError(
            [f"proxy training ({epochs} epoch(s), candidate {n + 1}): {p}" for p in exc.problems]
        ) from None
    except Exception as exc:  # noqa: BLE001 - a candidate that fails to train is recorded and the search goes on
        return {**record, "status": "failed", "reason": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return {**record, "score": score}


def _finish(out: Path, records: list[dict[str, Any]], base_raw: dict[str, Any], metric: str,
            log: Callable[[str], None]) -> dict[str, Any]:  # fmt: skip
    front = pareto_front(records)
    best = best_record(records)
    counts = summary_counts(records)
    objectives = {"maximize": metric, "minimize": ["params", "latency_ms"]}
    (out / "pareto.json").write_text(json.dumps({"objectives": objectives, "front": front}, indent=2, default=str))
    summary = {**counts, "metric": metric, "best": best, "pareto_front": [r["n"] for r in front]}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"samples {counts['sampled']}: trained {counts['trained']}, repeats {counts['duplicates']}, "
        f"rejected by constraints {counts['rejected']}, failed {counts['failed']}")  # fmt: skip
    if front:
        log(f"Pareto front ({metric} up; params, latency down):\n{table(front)}")
    if best is not None and best.get("model") is not None:
        raw = candidate_config(base_raw, best["model"])
        text = (f"# best architecture of the search in {out} (sample {best['n'] + 1}: {describe(best['choices'])}, "
                f"{metric} {best['score']:.4f} after the proxy evaluation)\n# train it: deepseek train "
                f"{out / 'best.yaml'}\n" + yaml.safe_dump(raw, sort_keys=False))  # fmt: skip
        (out / "best.yaml").write_text(text)
        log(f"best: {describe(best['choices'])} ({metric} {best['score']:.4f}) -> {out / 'best.yaml'}")
    return summary
