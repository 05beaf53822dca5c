"""Check that a plan's shards are real: FSDP2 ``fully_shard`` applied to the meta model for the plan's world
under torch's fake process group (one process stands in for rank ``rank`` of up to thousands; no memory,
no communication), then each DTensor parameter's local shard compared with :func:`plan.local_numel`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
import torch.nn as nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

from deepseek.train.plan import Degrees, blocks_of, local_numel


@dataclass(frozen=True)
class ShardCheck:
    """``mismatches``: ``(parameter, planned elements, local shard elements)`` where they differ."""

    rank: int
    parameters: int
    local_elements: int
    mismatches: list[tuple[str, int, int]]

    @property
    def ok(self) -> bool:
        return not self.mismatches


def check_sharding(model: nn.Module, deg: Degrees, rank: int = 0) -> ShardCheck:
    """Shard the meta ``model`` with ``fully_shard`` (each block, then the root) on a ``(dp_replicate, dp_shard)``
    mesh of ``deg.world`` fake ranks, as ``rank``; compare every parameter's local shard with the plan's."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    if dist.is_initialized():
        raise RuntimeError("check_sharding needs its own (fake) default process group; one is already set up")
    planned = {name: local_numel(p, deg.dp_shard, rank % deg.dp_shard) for name, p in model.named_parameters()}
    dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=deg.world)
    try:
        if deg.dp_replicate > 1:  # HSDP: replicate over dim 0, shard over dim 1
            mesh = init_device_mesh("cpu", (deg.dp_replicate, deg.dp_shard), mesh_dim_names=("dp_replicate", "dp_shard"))
        else:
            mesh = init_device_mesh("cpu", (deg.dp_shard,), mesh_dim_names=("dp_shard",))
        for block in blocks_of(model):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        local = {name: p.to_local().numel() for name, p in model.named_parameters()}
    finally:
        dist.destroy_process_group()
    bad = [(name, planned[name], local[name]) for name in planned if planned[name] != local[name]]
    return ShardCheck(rank, len(local), sum(local.values()), bad)
