"""Search on Optuna: hyper-parameter search over run configs (``deepseek tune``) and architecture search
(``deepseek nas``, :mod:`deepseek.search.nas`). See docs/search.md."""

from deepseek.search.space import Param, SearchSpace, check_against_config, load_space, suggest
from deepseek.search.storage import open_storage, recover_stale_trials, run_workers, tag_trial
from deepseek.search.study_report import write_report
from deepseek.search.tune import PRUNERS, SAMPLERS, TuneSettings, make_pruner, make_sampler, tune

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Param",
    "SearchSpace",
    "TuneSettings",
    "check_against_config",
    "load_space",
    "make_pruner",
    "make_sampler",
    "open_storage",
    "recover_stale_trials",
    "run_workers",
    "suggest",
    "tag_trial",
    "tune",
    "write_report",
]
