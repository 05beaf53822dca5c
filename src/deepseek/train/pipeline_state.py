"""The ``pipeline`` strategy's collectives outside the schedule: the whole model's state gathered from the
stages to rank 0, and validation's forward-only pass from stage to stage (:class:`PipelinedForward`).

Both move Python objects holding CPU tensors (``gather_object`` / ``send_object_list``): simple, and the
sizes are those of one stage's state or one batch's activations, once per checkpoint or validation batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as torch_dist
import torch.nn as nn


def gather_to_rank0(local: dict[str, Any], contributes: bool) -> list[dict[str, Any]] | None:
    """Every rank's ``local`` (``{}`` from a rank that does not ``contribute``: a data-parallel replica of
    a stage another rank sends) as a list on rank 0; None on the other ranks. A collective."""
    world = torch_dist.get_world_size()
    mine = local if contributes else {}
    if world == 1:
        return [mine]
    parts: list[Any] | None = [None] * world if torch_dist.get_rank() == 0 else None
    torch_dist.gather_object(mine, parts, dst=0)
    return parts


def merge_optimizer_states(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One optimizer state keyed by parameter name (``get_optimizer_state_dict``'s full form) from the stages':
    the per-parameter states joined, and each group's parameter names joined in stage order."""
    parts = [p for p in parts if p]
    state: dict[str, Any] = {}
    groups: list[dict[str, Any]] = []
    for part in parts:
        state.update(part["state"])
        for i, group in enumerate(part["param_groups"]):
            if i == len(groups):
                groups.append({**group, "params": []})
            groups[i]["params"] += [k for k in group["params"] if k not in groups[i]["params"]]
    return {"state": state, "param_groups": groups}


def check_pipeline_tp(model: nn.Module, tp: int) -> None:
    """ValueError (one line) unless ``model``'s tensor-parallel plan runs on its pipeline stages (gpt2's) and
    ``tp`` divides the sizes it shards; before anything is cut or sharded."""
    from deepseek.models.language import GPT2
    from deepseek.models.parallelize import check_tp

    if not isinstance(model, GPT2):
        raise ValueError(f"train.strategy: pipeline tp: {tp!r} is not allowed; tp > 1 with pp runs gpt2 only for now, "
                         f"not {type(model).__name__}; use tp 1")  # fmt: skip
    check_tp(model, tp)


def to_cpu(value: Any) -> Any:
    """``value`` (tensors inside dicts and lists) on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    return value


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (tuple, list)):
        return type(value)(_to(v, device) for v in value)
    return value


class PipelinedForward(nn.Module):
    """``forward(inputs)`` through every stage in order, forward only (validation), on each rank of the
    pipeline: the rank of stage ``s`` receives what stage ``s - 1`` sent, runs it and sends it on; the last
    stage's outputs go to every rank of the pipeline, so each computes the loss and metrics alike."""

    def __init__(self, model: nn.Module, stages: Sequence[nn.Module], pp: int, group: Any, ranks: Sequence[int]) -> None:
        super().__init__()
        self.model = model  # eval()/train() reach every stage's modules through it
        self._stages = {s.index: s for s in stages}  # type: ignore[attr-defined]
        self._num_stages = stages[0].num_stages  # type: ignore[attr-defined]
        self._pp, self._group, self._ranks = pp, group, list(ranks)

    def forward(self, inputs: Any) -> Any:
        from deepseek.models.parallelize.stages import first_stage_args

        carried: Any = None
        device = inputs.device if isinstance(inputs, torch.Tensor) else torch.device("cpu")
        for s in range(self._num_stages):
            stage = self._stages.get(s)
            if stage is None:
                continue
            if s == 0:
                args = first_stage_args(inputs)
                device = args[0].device
            else:
                box: list[Any] = [None]
                torch_dist.recv_object_list(box, src=self._ranks[(s - 1) % self._pp], group=self._group)
                args = _to(box[0], device)
            out = stage(*args)
            carried = out if isinstance(out, tuple) else (out,)
            if s < self._num_stages - 1:
                torch_dist.send_object_list([_to(carried, torch.device("cpu"))], dst=self._ranks[(s + 1) % self._pp],
                                            group=self._group)  # fmt: skip
        if self._pp == 1:
            return carried[0]
        box = [_to(carried, torch.device("cpu")) if self._num_stages - 1 in self._stages else None]
        torch_dist.broadcast_object_list(box, src=self._ranks[-1], group=self._group)
        return _to(box[0][0], device)
