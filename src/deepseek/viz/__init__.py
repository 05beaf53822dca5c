"""``deepseek-viz``: a web page of the runs under a log directory (curves, gradient and activation statistics,
communication and precision shares, throughput, profiler summaries), updated while runs train.

It reads run directories as files (``metrics.jsonl``, ``stats.jsonl``, profiler ``summary.json``) and never imports
the trainer. Charts are drawn by plotly.js, served from the installed ``plotly`` package. Start it with
``deepseek-viz --logdir DIR`` (:mod:`deepseek.cli.viz_cmd`) or build the app with :func:`create_app`.
"""

from deepseek.viz.app import create_app
from deepseek.viz.runs import JsonlChunk, OutsideLogdirError, discover, read_jsonl, read_profile, resolve_under

__all__ = ["JsonlChunk", "OutsideLogdirError", "create_app", "discover", "read_jsonl", "read_profile", "resolve_under"]
