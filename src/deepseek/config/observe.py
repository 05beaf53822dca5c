"""The ``train.profile`` and ``logging.stats`` sections: profiling a window of a run, recording statistics.

Kept apart from :mod:`deepseek.config.schema` (which holds them in ``TrainSection`` and ``LoggingSection``) so that
file stays short. ``train.profile`` reaches the Trainer as a :class:`deepseek.profiler.ProfilerCallback`;
``logging.stats`` as a :class:`deepseek.train.stats.StatsRecorder` (both built by :mod:`deepseek.train.assemble`).
"""

from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ProfileSection(_Section):
    """``train.profile``: e.g. ``{start_step: 20, steps: 5}`` profiles optimizer steps 21 to 25 of the run."""

    start_step: NonNegativeInt = Field(
        default=10,
        description="Optimizer steps to run before the profiled window (the first ones pay for warm-up and caches).",
    )
    steps: PositiveInt = Field(default=5, description="Optimizer steps recorded by torch.profiler (the active window).")
    warmup: NonNegativeInt = Field(
        default=1,
        description="Steps just before the window that run under the profiler unrecorded (its own start-up cost); "
        "taken from start_step.",
    )
    output_dir: Optional[str] = Field(
        default=None,
        description="Where the trace, flame graphs and summary.json go; null: `profile/` in the run directory.",
    )
    metrics: list[str] = Field(
        default=[],
        description="Extra metrics (see `python -m deepseek.profiler --metrics help`); the CUDA-only ones print a "
        "`needs CUDA` line on a CPU.",
    )
    python_stacks: Optional[bool] = Field(
        default=None,
        description="Record Python stacks for the flame graph by stack; null: yes in a run of one process, no in a "
        "run of several (a rank once died with SIGSEGV there with stacks on; see the Profiler page).",
    )


class StatsSection(_Section):
    """``logging.stats``: e.g. ``{every_steps: 100, activations: ["layers.*"]}``."""

    every_steps: PositiveInt = Field(
        default=100,
        description="Record every this many optimizer steps (the other steps do no extra work and no host sync).",
    )
    grad_norms: bool = Field(default=True, description="Record each parameter's gradient L2 norm.")
    grad_histograms: bool = Field(
        default=True, description="Record a log-binned histogram of each module's parameter gradients."
    )
    activations: list[str] = Field(
        default=[],
        description="Module-name patterns (fnmatch, e.g. `encoder.layer.*.output`) whose outputs get a log-binned "
        "histogram on recording steps; empty: none.",
    )
    histogram_bins: int = Field(
        default=64,
        ge=8,
        le=1024,
        description="Bins of every histogram (fixed, log-spaced in magnitude, the same at every step).",
    )
