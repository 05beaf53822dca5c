"""Profiling on ``torch.profiler`` and ``torch.utils.flop_counter``: ``python -m deepseek.profiler`` for any
registered model, :class:`ProfilerCallback` for a window of a real training run (``train.profile``).

Outputs (docs/profiler.md): ``trace.json`` (Chrome/Perfetto), ``flamegraph_stack.svg`` and
``flamegraph_module.svg`` (self-contained), ``stacks.txt`` / ``stacks_module.txt`` (collapsed stacks) and
``summary.json`` (schema ``deepseek.profile/1``, :data:`deepseek.profiler.summary.SCHEMA`).
"""

from deepseek.profiler.callback import ProfilerCallback
from deepseek.profiler.flops import FlopCount, analytic_transformer_flops, count_flops, reconcile
from deepseek.profiler.peaks import Peak, peak_flops
from deepseek.profiler.summary import SCHEMA, SCHEMA_ID, schema_problems
from deepseek.profiler.synthetic import profile_model

__all__ = [
    "SCHEMA", "SCHEMA_ID", "FlopCount", "Peak", "ProfilerCallback", "analytic_transformer_flops", "count_flops",
    "peak_flops", "profile_model", "reconcile", "schema_problems",
]  # fmt: skip
