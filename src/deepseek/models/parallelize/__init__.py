"""Tensor-parallel plans, one per model family, kept beside the models and outside their classes (as
torchtitan keeps each model's ``parallelize.py``): a plan takes a built model and a 1-D tensor-parallel
:class:`~torch.distributed.device_mesh.DeviceMesh` and shards the model in place with DTensor's
``parallelize_module``. :data:`PLANS` maps a registered model name to its plan, for the training strategy
to look up; :func:`plan_for` does so with a one-line error for a model that has none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from deepseek.models.parallelize.language import check_tp_degree, parallelize_gpt2

TensorParallelPlan = Callable[..., nn.Module]

# Registered model name -> its plan: ``plan(model, tp_mesh, *, sequence_parallel=False, loss_parallel=False)``.
PLANS: dict[str, TensorParallelPlan] = {"gpt2": parallelize_gpt2}


def plan_for(name: str) -> TensorParallelPlan:
    """The tensor-parallel plan of the model registered as ``name``; ValueError naming the models that have one."""
    if name not in PLANS:
        raise ValueError(
            f"model.name={name!r} has no tensor-parallel plan (parallel.tp > 1 needs one of: {', '.join(sorted(PLANS))})"
        )
    return PLANS[name]


__all__ = ["PLANS", "TensorParallelPlan", "check_tp_degree", "parallelize_gpt2", "plan_for"]
