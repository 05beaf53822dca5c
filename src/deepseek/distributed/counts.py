"""What a communication hook sent since it was last asked: the one record both the DDP hook
(:class:`~deepseek.distributed.hooks.CommHook`) and FSDP2's reduce-scatter
(:class:`~deepseek.distributed.fsdp_comm.HierarchicalReduceScatter`) keep, and the Trainer's ``comm/*`` read."""

from __future__ import annotations

from collections.abc import Mapping


class CommCounts:
    """Bytes this rank sent (``intra`` + ``inter`` legs) beside a baseline's (``plain``: the same collective
    uncompressed, or flat), the part of each sent to another node, and the number of calls."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.bytes = self.bytes_uncompressed = self.bytes_inter = self.bytes_inter_uncompressed = self.calls = 0

    def add(self, sent: Mapping[str, int], plain: Mapping[str, int]) -> None:
        """One call: ``sent`` and ``plain`` as ``{"intra": bytes, "inter": bytes}``."""
        self.bytes += sent["intra"] + sent["inter"]
        self.bytes_inter += sent["inter"]
        self.bytes_uncompressed += plain["intra"] + plain["inter"]
        self.bytes_inter_uncompressed += plain["inter"]
        self.calls += 1

    def pop(self, seconds: float) -> dict[str, float | int]:
        """``{"seconds", "bytes", "bytes_uncompressed", "bytes_inter", "bytes_inter_uncompressed", "calls"}``,
        then zero."""
        out = {"seconds": seconds, "bytes": self.bytes, "bytes_uncompressed": self.bytes_uncompressed,
               "bytes_inter": self.bytes_inter, "bytes_inter_uncompressed": self.bytes_inter_uncompressed,
               "calls": self.calls}  # fmt: skip
        self.reset()
        return out
