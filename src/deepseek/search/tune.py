"""``tune()``: a hyper-parameter search over a run config, on Optuna (samplers, pruners, storages, plots).

What Optuna does not do, and is done here: the search space comes from a YAML file of config keys
(:mod:`deepseek.search.space`); each trial is a real run directory ``STUDY_DIR/trials/NNNN/`` trained by the
framework's Trainer (:mod:`deepseek.search.trial_run`); the study's settings are kept with it, so that a study
started again (after Ctrl-C or ``kill -9``) continues only with the same space, config and metric; several
local workers share the study through :mod:`deepseek.search.storage`; trials that span several DDP ranks are
sampled on rank 0 alone; the end writes the table, ``best.yaml`` and offline plots
(:mod:`deepseek.search.study_report`).

The budget: ``trials`` trials that COMPLETE or are PRUNED, over all workers and restarts
(``optuna.study.MaxTrialsCallback``); failed ones do not count, so a killed study re-runs them.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch.distributed as dist
import yaml
from optuna.trial import TrialState

from deepseek.errors import ConfigError, MissingDependency
from deepseek.search.space import SearchSpace, as_overrides, check_against_config, load_space, suggest
from deepseek.search.storage import open_storage, recover_stale_trials, run_workers, tag_trial
from deepseek.search.trial_run import TrialFailed, broadcast_from_rank0, run_trial, search_process_group

SAMPLERS = ("auto", "tpe", "gp", "cmaes", "random")
PRUNERS = ("median", "hyperband", "none")
MODES = ("max", "min")
SETTINGS_ATTR = "deepseek:settings"  # the study's user attr: what a restarted or remote worker must match
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneSettings:
    """Everything a worker process needs to join the study (picklable: sent to spawned workers)."""

    name: str
    config: str  # absolute path of the base config
    space: dict[str, Any]
    trials: int
    study_dir: str
    storage: str | None
    sampler: Any  # a name from SAMPLERS or an optuna sampler
    pruner: Any  # a name from PRUNERS or an optuna pruner
    metric: str
    mode: str
    seed: int | None = None
    retry_failed: int = 0
    overrides: list[str] = field(default_factory=list)
    workers: int = 1

    def describe(self) -> dict[str, Any]:
        """study.json's content (samplers and pruners given as objects by their class name)."""
        out = asdict(self)
        for key in ("sampler", "pruner"):
            out[key] = out[key] if isinstance(out[key], str) else type(getattr(self, key)).__name__
        return out


def make_sampler(
    name: str | optuna.samplers.BaseSampler, space: SearchSpace, seed: int | None, *, workers: int = 1, trials: int = 0
) -> optuna.samplers.BaseSampler:
    """The sampler named ``name`` (see ``SAMPLERS``). ``auto``: GP (Optuna's ``GPSampler``, Bayesian
    optimisation) for a space of float and int parameters without conditions searched by one worker in at most
    250 trials, else TPE (multivariate; grouped over the sub-spaces of a conditional space; with several
    workers a constant liar, so that concurrent trials do not sample the same point)."""
    if not isinstance(name, str):
        return name
    if name not in SAMPLERS:
        raise ValueError(f"sampler {name!r} is not allowed; allowed: {', '.join(SAMPLERS)}")
    if name == "auto":
        simple = space.all_numeric() and not space.is_conditional() and workers == 1 and trials <= 250
        name = "gp" if simple else "tpe"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # multivariate, group, liar
        if name == "tpe":
            return optuna.samplers.TPESampler(
                seed=seed, multivariate=True, group=space.is_conditional(), constant_liar=workers > 1
            )
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        try:
            import cmaes  # noqa: F401  (Optuna's CmaEsSampler imports it only when it first samples)
        except ImportError as exc:
            raise MissingDependency("--sampler cmaes needs the cmaes package: pip install cmaes") from exc
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def make_pruner(name: str | optuna.pruners.BasePruner) -> optuna.pruners.BasePruner:
    """``median``: Optuna's MedianPruner (after 5 finished trials, a trial whose value at a validation is worse
    than the median of the others at the same validation stops); ``hyperband``: HyperbandPruner over the
    validations; ``none``: no pruning."""
    if not isinstance(name, str):
        return name
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource="auto", reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner {name!r} is not allowed; allowed: {', '.join(PRUNERS)}")


def tune(
    config: str | Path,
    space: str | Path | Mapping[str, Any],
    trials: int,
    *,
    study_name: str | None = None,
    study_dir: str | Path | None = None,
    storage: str | None = None,
    sampler: str | optuna.samplers.BaseSampler = "auto",
    pruner: str | optuna.pruners.BasePruner = "median",
    workers: int = 1,
    metric: str | None = None,
    mode: str | None = None,
    seed: int | None = None,
    retry_failed: int = 0,
    overrides: Sequence[str] = (),
    report: bool = True,
) -> optuna.Study | None:
    """Search ``space`` over ``config`` for ``trials`` counted trials; return the study (None on DDP ranks
    other than 0, which only follow).

    ``metric``/``mode`` default to the config's ``checkpoint.monitor``/``mode``. ``study_dir`` defaults to
    ``studies/<study_name>``, ``study_name`` to the config file's stem. Started again with the same name, the
    study continues (its finished trials kept, trials whose worker died failed or retried, ``retry_failed``
    times each). ``workers`` > 1: that many local processes share the storage. Under a process group of
    several ranks (torchrun running ``deepseek.cli.tune_cmd`` on each) rank 0 samples and every rank trains each trial with DDP.
    ``report``: write trials.csv, best.yaml, the plots and study.json at the end, and print the table.
    Bad arguments raise ValueError (ConfigError for the config and the space), each one line.
    """
    from deepseek.config import load_config

    _check_counts(trials, workers, retry_failed)
    config = str(Path(config).absolute())
    overrides = list(overrides)
    base = load_config(config, overrides)
    metric = metric or base.checkpoint.monitor
    mode = mode or base.checkpoint.mode
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    parsed = load_space(space)
    check_against_config(parsed, config, overrides)
    make_pruner(pruner)  # its name checked before anything is created
    make_sampler(sampler, parsed, seed, workers=workers, trials=trials)
    study_name = study_name or Path(config).stem
    folder = Path(study_dir) if study_dir is not None else Path("studies") / study_name
    settings = TuneSettings(study_name, config, parsed.raw, trials, str(folder), storage, sampler, pruner, metric,
                            mode, seed, retry_failed, overrides, workers)  # fmt: skip
    with _quiet_optuna():
        return _run_study(settings, parsed, workers, report)


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's own INFO/WARNING lines off (one line per trial is ours, a failed trial's error included)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run_study(settings: TuneSettings, parsed: SearchSpace, workers: int, report: bool) -> optuna.Study | None:
    world = _world_size()
    if world > 1 and workers > 1:
        raise ValueError(f"workers={workers} with {world} DDP ranks: a launched search trains each trial on all "
                         "ranks; give one of them")  # fmt: skip
    if world > 1:
        return _tune_ddp(settings, parsed, report)
    study = _open_study(settings, parsed, worker=0, workers=workers, check=True)
    _recover(study, settings)
    if workers == 1:
        _optimize(study, settings, parsed)
    else:
        run_workers(_worker_main, (settings,), workers)
        study = _open_study(settings, parsed, worker=0, workers=workers)
    if report:
        from deepseek.search.study_report import write_report

        write_report(study, settings, print_table=True)
    return study


def _check_counts(trials: int, workers: int, retry_failed: int) -> None:
    for what, value, low in (("trials", trials, 1), ("workers", workers, 1), ("retry_failed", retry_failed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{what}={value!r}: must be an integer >= {low}")


def _world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _open_study(
    settings: TuneSettings, space: SearchSpace, *, worker: int, workers: int = 1, check: bool = False
) -> optuna.Study:
    """Create the study, or load it by name (a restart, another worker); with ``check``, refuse one that was
    started with another space, base config or metric."""
    storage = open_storage(settings.storage, Path(settings.study_dir), retry_failed=settings.retry_failed)
    study = optuna.create_study(
        storage=storage,
        study_name=settings.name,
        direction="maximize" if settings.mode == "max" else "minimize",
        sampler=optuna.samplers.RandomSampler(),  # replaced below, once the trials so far are known
        pruner=make_pruner(settings.pruner),
        load_if_exists=True,
    )
    seed = None
    if settings.seed is not None:  # workers, and a study started again, must not repeat each other's draws
        seed = int(np.random.SeedSequence([settings.seed, worker, len(study.trials)]).generate_state(1)[0])
        seed = settings.seed if worker == 0 and not study.trials else seed  # a fresh study: the seed as given
    if seed is not None and seed != settings.seed and not isinstance(settings.sampler, str):
        settings.sampler.reseed_rng()  # a sampler object's own seed would repeat its draws
    study.sampler = make_sampler(settings.sampler, space, seed, workers=workers, trials=settings.trials)
    if check:
        _check_same_study(study, settings)
    return study


def _identity(settings: TuneSettings) -> dict[str, Any]:
    """What makes a study the same study: the space, the resolved base config, the metric and its mode."""
    from deepseek.config import load_config

    resolved = yaml.safe_load(yaml.safe_dump(load_config(settings.config, settings.overrides).to_dict()))
    return {"space": settings.space, "base_config": resolved, "metric": settings.metric, "mode": settings.mode}


def _check_same_study(study: optuna.Study, settings: TuneSettings) -> None:
    mine = _identity(settings)
    theirs = study.user_attrs.get(SETTINGS_ATTR)
    direction = optuna.study.StudyDirection.MAXIMIZE if settings.mode == "max" else optuna.study.StudyDirection.MINIMIZE
    differ = ["mode"] if study.direction != direction else []  # a study's direction never changes
    if not differ and (theirs is None or _counted(study) == 0):
        study.set_user_attr(SETTINGS_ATTR, mine)  # new, or nothing finished yet (a typo fixed): these settings
        return
    differ = [key for key in mine if theirs is not None and theirs.get(key) != mine[key]] + differ
    if differ:
        raise ConfigError([f"study '{settings.name}' ({settings.storage or settings.study_dir}) was started with "
                           f"another {', '.join(dict.fromkeys(differ))}; continue it with the same settings, or "
                           "give a new --study name"])  # fmt: skip


def _recover(study: optuna.Study, settings: TuneSettings) -> None:
    failed = recover_stale_trials(study, settings.retry_failed)
    if failed:
        again = f" (queued again, up to {settings.retry_failed} times each)" if settings.retry_failed else ""
        # one wording for one trial or several (tests/search/test_tune_kill9.py matches it)
        print(f"study {settings.name}: trials {', '.join(map(str, failed))} were running when their worker died: "
              f"marked failed{again}", flush=True)  # fmt: skip


def _counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


class _StopAfterFailures:
    """Stop this worker after ``limit`` failed trials of its own: a config whose every trial fails (a
    diverging loss at any sampled value) must not loop forever, since failed trials do not use the budget."""

    def __init__(self, limit: int) -> None:
        self.limit, self.failed = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.failed += trial.state == TrialState.FAIL
        if self.failed >= self.limit:
            print(f"study {study.study_name}: {self.failed} trials failed in this worker; it stops", flush=True)
            study.stop()


def _optimize(study: optuna.Study, settings: TuneSettings, space: SearchSpace, *, sync: bool = False) -> None:
    """Run trials until the study holds ``settings.trials`` counted ones (this worker's share of them)."""
    if _counted(study) >= settings.trials:
        return
    study.optimize(
        lambda trial: _objective(trial, settings, space, sync),
        n_trials=None,
        callbacks=[
            optuna.study.MaxTrialsCallback(settings.trials, states=COUNTED),
            _StopAfterFailures(settings.trials),
            _print_trial,
        ],  # fmt: skip
        catch=(TrialFailed,),
        gc_after_trial=True,
    )


def _objective(trial: optuna.Trial, settings: TuneSettings, space: SearchSpace, sync: bool) -> float:
    tag_trial(trial)
    params = suggest(trial, space)
    run_dir = Path(settings.study_dir) / "trials" / f"{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    trial.set_user_attr("overrides", as_overrides(params))
    if sync:  # the followers train the same trial (see _follow)
        broadcast_from_rank0((trial.number, params))
    try:
        outcome = run_trial(settings.config, [*settings.overrides, *as_overrides(params)], run_dir, trial=trial,
                            metric=settings.metric, mode=settings.mode, sync=sync)  # fmt: skip
    except TrialFailed as exc:
        trial.set_user_attr("error", str(exc))
        raise
    if outcome.pruned:
        raise optuna.TrialPruned(f"pruned at validation {outcome.validations}")
    if outcome.value is None:
        raise TrialFailed(f"no finite value of {settings.metric} in {outcome.validations} validations")
    return outcome.value


def _print_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    value = "" if trial.value is None else f" {trial.value:.6g}"
    why = f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    params = " ".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in trial.params.items())  # fmt: skip
    print(f"trial {trial.number}: {trial.state.name}{value}{why}  {params}", flush=True)


def _worker_main(settings: TuneSettings, worker: int) -> None:
    """One of ``--workers`` processes: join the study by name and run trials until the budget is spent."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(settings.space)
    study = _open_study(settings, space, worker=worker, workers=settings.workers)
    _optimize(study, settings, space)


def _tune_ddp(settings: TuneSettings, space: SearchSpace, report: bool) -> optuna.Study | None:
    """Rank 0 samples (the only rank that opens the storage) and broadcasts each trial's values; every rank
    trains the trial with DDP; ``None`` broadcast ends the followers' loop."""
    with search_process_group():
        if dist.get_rank() != 0:
            _follow(settings)
            return None
        study = _open_study(settings, space, worker=0, check=True)
        try:
            _recover(study, settings)
            _optimize(study, settings, space, sync=True)
        finally:
            broadcast_from_rank0(None)
        if report:
            from deepseek.search.study_report import write_report

            write_report(study, settings, print_table=True)
        return study


def _follow(settings: TuneSettings) -> None:
    """A rank other than 0: train each trial rank 0 announces, with its pruning decisions, until ``None``."""
    while (message := broadcast_from_rank0(None)) is not None:
        number, params = message
        run_dir = Path(settings.study_dir) / "trials" / f"{number:04d}"
        try:
            run_trial(settings.config, [*settings.overrides, *as_overrides(params)], run_dir, trial=None,
                      metric=settings.metric, mode=settings.mode, sync=True)  # fmt: skip
        except TrialFailed:
            continue  # rank 0 fails the same trial (same config, same loss: the Trainer agrees across ranks)
