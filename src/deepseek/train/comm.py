"""Gradient communication in training: the hook ``parallel.comm`` installs on DDP, its state in checkpoints,
and the ``comm/*`` metrics.

- :func:`install_comm_hook`: a :class:`deepseek.distributed.hooks.CommHook` on the DDP model, following the
  section's topology and compression. Without a section it is the plain flat all-reduce, timed, so that the
  metrics exist for every DDP run.
- :func:`gather_comm_state` / :func:`load_comm_state`: each rank's hook state (error-feedback residuals,
  PowerSGD's matrices and random generator) gathered into the checkpoint's ``state.pt`` as ``comm_ranks``
  (one entry per rank), and each rank's own back on resume at the same world size. At another world size, or
  from a checkpoint without it, compression starts afresh (a warning says so): the residuals belong to the
  ranks that made them.
- :func:`comm_values`: ``comm/seconds`` (gradient communication in flight per optimizer step), ``comm/share``
  (of the logging window's wall time) and ``comm/bytes`` (bytes this rank sent per step; ``comm/bytes_fp32``:
  the same all-reduce uncompressed; ``comm/bytes_inter`` and ``comm/bytes_inter_fp32``: the part sent to another
  node, as the topology maps ranks to nodes).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch.distributed as torch_dist
import torch.nn as nn

from deepseek.train.distributed import DistInfo

COMPRESSIONS_WITH_STATE = ("fp16", "bf16", "powersgd")


def comm_has_state(spec: Mapping[str, Any] | bool | None) -> bool:
    """Whether the hook ``spec`` describes keeps state a checkpoint must hold (compression with error feedback)."""
    return isinstance(spec, Mapping) and spec.get("compression", "none") in COMPRESSIONS_WITH_STATE


def check_comm_spec(spec: Mapping[str, Any] | bool | None) -> dict[str, Any] | bool | None:
    """``spec`` validated as ``parallel.comm`` (a ValueError naming the key otherwise), defaults filled in;
    ``False``: no hook of ds's (DDP's own all-reduce, untimed: a user registers a hook of their own)."""
    if spec is None or spec is False:
        return spec
    if not isinstance(spec, Mapping):
        raise ValueError(f"train.strategy: ddp comm: {spec!r}; allowed: a parallel.comm mapping, null or false")
    from pydantic import ValidationError

    from deepseek.config.comm import CommSection

    try:
        return CommSection(**spec).model_dump()
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "comm"
        raise ValueError(f"train.strategy: ddp comm.{key}: {err['msg'].removeprefix('Value error, ')}") from None


def install_comm_hook(ddp: nn.Module, spec: Mapping[str, Any] | bool | None) -> Any:
    """Build the topology's process groups (a collective) and register the hook on ``ddp``; returns the hook
    (None for ``spec`` False: nothing installed)."""
    if spec is False:
        return None
    from deepseek.distributed.hooks import CommHook
    from deepseek.distributed.topology import Topology

    spec = dict(spec) if isinstance(spec, Mapping) else {}
    topology = Topology(spec.get("topology", "ring"), ring_size=spec.get("ring_size"),
                        tree_depth=spec.get("tree_depth", 1))  # fmt: skip
    topology.setup()
    hook = CommHook(
        topology,
        compression=spec.get("compression", "none"),
        powersgd_rank=spec.get("powersgd_rank", 2),
        inter_node_only=spec.get("inter_node_only", False),
        start_iter=spec.get("powersgd_start_iter", 2),
    )
    hook.install(ddp)
    return hook


def gather_comm_state(hook: Any) -> list[Any] | None:
    """Every rank's hook state, gathered on every rank (a collective; None in a world of one)."""
    if hook is None or not torch_dist.is_initialized() or torch_dist.get_world_size() == 1:
        return None
    states: list[Any] = [None] * torch_dist.get_world_size()
    torch_dist.all_gather_object(states, hook.state_dict())
    return states


def load_comm_state(hook: Any, states: list[Any] | None, dist: DistInfo, compression: str) -> None:
    """This rank's entry of ``states`` into ``hook``; a warning when there is none for it."""
    if hook is None or compression not in COMPRESSIONS_WITH_STATE:
        return
    if states is None or len(states) != dist.world_size:
        why = "has none" if states is None else f"was written by {len(states)} ranks, not {dist.world_size}"
        if dist.is_main:
            warnings.warn(f"resuming with parallel.comm compression {compression}: the checkpoint's compression "
                          f"state {why}; error feedback starts from zero", stacklevel=3)  # fmt: skip
        return
    hook.load_state_dict(states[dist.rank])


def comm_values(hook: Any, steps: int, wall_s: float) -> dict[str, float]:
    """``comm/seconds`` and ``comm/bytes`` per optimizer step, ``comm/share`` of ``wall_s``, over the ``steps``
    since the last call (the hook's counters are reset)."""
    if hook is None or steps <= 0:
        return {}
    stats = hook.pop_step_stats()
    return {
        "comm/seconds": stats["seconds"] / steps,
        "comm/share": min(1.0, stats["seconds"] / wall_s) if wall_s > 0 else 0.0,
        "comm/bytes": stats["bytes"] / steps,
        "comm/bytes_fp32": stats["bytes_uncompressed"] / steps,
        "comm/bytes_inter": stats["bytes_inter"] / steps,
        "comm/bytes_inter_fp32": stats["bytes_inter_uncompressed"] / steps,
    }
