"""Tensor-parallel plans, one per model family, kept beside the models and outside their classes (as
torchtitan keeps each model's ``parallelize.py``): a plan takes a built model and a 1-D tensor-parallel
:class:`~torch.distributed.device_mesh.DeviceMesh` and shards the model in place with DTensor's
``parallelize_module``. :data:`PLANS` maps a registered model name to its plan and :data:`CHECKS` to the
check of a ``tp`` degree against the model's sizes; :func:`plan_for` / :func:`plan_for_model` look a plan
up by name or by the built model's class, with a one-line error for a model that has none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from deepseek.models.language import GPT2, Bert
from deepseek.models.parallelize.encoders import (
    check_bert,
    check_transformer,
    parallelize_bert,
    parallelize_transformer,
)
from deepseek.models.parallelize.language import check_tp_degree, parallelize_gpt2
from deepseek.models.parallelize.vision import check_vit, parallelize_vit
from deepseek.models.speech import Seq2SeqTransformer
from deepseek.models.vision import ViT

TensorParallelPlan = Callable[..., nn.Module]
TensorParallelCheck = Callable[[nn.Module, int], None]

# Registered model name -> its plan: ``plan(model, tp_mesh, *, sequence_parallel=False, loss_parallel=False)``.
PLANS: dict[str, TensorParallelPlan] = {
    "gpt2": parallelize_gpt2, "bert_base": parallelize_bert, "vit_tiny": parallelize_vit,
    "vit_base_patch16": parallelize_vit, "transformer": parallelize_transformer,
}  # fmt: skip
# Registered model name -> ``check(model, tp)``: ValueError naming ``parallel.tp`` unless ``tp`` divides the
# sizes the plan shards (heads, hidden sizes); called before anything is sharded.
CHECKS: dict[str, TensorParallelCheck] = {
    "gpt2": check_tp_degree, "bert_base": check_bert, "vit_tiny": check_vit, "vit_base_patch16": check_vit,
    "transformer": check_transformer,
}  # fmt: skip
# The built model's class -> its registered name, for a strategy that holds the model, not its name.
# (vit_tiny and vit_base_patch16 share one class and one plan; the alias transformer_seq2seq builds the class
# registered as transformer.)
CLASSES: dict[type, str] = {GPT2: "gpt2", Bert: "bert_base", ViT: "vit_tiny", Seq2SeqTransformer: "transformer"}


def plan_for(name: str) -> TensorParallelPlan:
    """The tensor-parallel plan of the model registered as ``name``; ValueError naming the models that have one."""
    if name not in PLANS:
        raise ValueError(
            f"model.name={name!r} has no tensor-parallel plan (parallel.tp > 1 needs one of: {', '.join(sorted(PLANS))})"
        )
    return PLANS[name]


def name_of(model: nn.Module) -> str:
    """The registered name whose plan shards ``model`` (by its class); ValueError when no plan takes it."""
    for cls, name in CLASSES.items():
        if type(model) is cls:
            return name
    raise ValueError(
        f"model {type(model).__name__} has no tensor-parallel plan (parallel.tp > 1 needs one of: "
        f"{', '.join(sorted(PLANS))})"
    )


def plan_for_model(model: nn.Module) -> TensorParallelPlan:
    """The tensor-parallel plan for a built ``model`` (looked up by its class)."""
    return PLANS[name_of(model)]


def check_tp(model: nn.Module, tp: int) -> None:
    """ValueError naming ``parallel.tp`` unless ``model``'s plan can shard it ``tp`` ways."""
    CHECKS[name_of(model)](model, tp)


__all__ = ["CHECKS", "CLASSES", "PLANS", "TensorParallelCheck", "TensorParallelPlan", "check_bert", "check_tp",
           "check_tp_degree", "check_transformer", "check_vit", "name_of", "parallelize_bert", "parallelize_gpt2",
           "parallelize_transformer", "parallelize_vit", "plan_for", "plan_for_model"]  # fmt: skip
