"""Training: the Trainer, checkpoints, callbacks, metrics, precision and distributed set-up."""

from deepseek.amp.policy import resolve_precision
from deepseek.train import expert_parallel, fsdp, losses, pipeline, task_metrics  # noqa: F401  (register the strategies, task losses, metrics)
from deepseek.train.callbacks import CallbackList, EarlyStopping
from deepseek.train.checkpoint import CheckpointError, CheckpointManager
from deepseek.train.isolation import isolated_run
from deepseek.train.metrics import Accuracy
from deepseek.train.rng import seed_everything
from deepseek.train.stats import StatsRecorder
from deepseek.train.trainer import Trainer

__all__ = [
    "Accuracy",
    "CallbackList",
    "CheckpointError",
    "CheckpointManager",
    "EarlyStopping",
    "StatsRecorder",
    "Trainer",
    "isolated_run",
    "resolve_precision",
    "seed_everything",
]
