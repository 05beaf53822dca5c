"""Where a rank sits in the multi-dimensional device mesh: the layout every parallel strategy shares.

Ranks are laid out row-major over ``MESH_DIMS`` = ("pp", "dp_replicate", "dp_shard", "tp"): tp innermost,
pp outermost (torchtitan's order), so the ranks of one tp group are neighbours (fast links on one node).
Every rank of one tp group and of one pipeline has the same data-parallel index and must see the same batch.
"""

from __future__ import annotations

from dataclasses import dataclass

MESH_DIMS: tuple[str, ...] = ("pp", "dp_replicate", "dp_shard", "tp")


@dataclass(frozen=True)
class MeshCoord:
    """One rank's coordinate along each mesh dim (all zero-based)."""

    pp: int
    dp_replicate: int
    dp_shard: int
    tp: int

    def data_parallel_index(self, dp_shard: int) -> int:
        """Index among the ``dp_replicate x dp_shard`` data-parallel ranks (replicate-major)."""
        return self.dp_replicate * dp_shard + self.dp_shard


def _check_positive(**degrees: int) -> None:
    for name, value in degrees.items():
        if value < 1:
            raise ValueError(f"{name}: {value}; allowed: a positive number of ranks")


def mesh_coord(rank: int, *, pp: int = 1, dp_replicate: int = 1, dp_shard: int = 1, tp: int = 1) -> MeshCoord:
    """The coordinate of ``rank`` in a ``pp x dp_replicate x dp_shard x tp`` mesh laid out row-major."""
    _check_positive(pp=pp, dp_replicate=dp_replicate, dp_shard=dp_shard, tp=tp)
    world = pp * dp_replicate * dp_shard * tp
    if not 0 <= rank < world:
        raise ValueError(f"rank: {rank}; allowed: 0 to {world - 1} for a mesh of {world} ranks")
    return MeshCoord(pp=rank // (dp_replicate * dp_shard * tp), dp_replicate=(rank // (dp_shard * tp)) % dp_replicate,
                     dp_shard=(rank // tp) % dp_shard, tp=rank % tp)  # fmt: skip


def data_parallel_index(rank: int, *, tp: int = 1, dp: int) -> int:
    """Which data shard ``rank`` reads: ``(rank // tp) % dp`` where ``dp = dp_replicate x dp_shard``.

    Ranks of one tp group (and of one pipeline, which differ only in the outer pp index) get the same value.
    """
    _check_positive(tp=tp, dp=dp)
    if rank < 0:
        raise ValueError(f"rank: {rank}; allowed: a non-negative rank")
    return (rank // tp) % dp
