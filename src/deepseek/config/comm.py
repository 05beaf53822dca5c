"""The ``parallel.comm`` section: how data-parallel gradients are all-reduced (topology, compression).

Kept apart from :mod:`deepseek.config.schema` (which holds it in ``ParallelSection``) so that file stays short.
The section reaches the DDP strategy as its ``comm`` argument (:func:`deepseek.train.plan.strategy_spec`),
which builds a :class:`deepseek.distributed.Topology` and installs a
:class:`deepseek.distributed.hooks.CommHook` on the DDP model.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator


class CommSection(BaseModel):
    """``parallel.comm``: e.g. ``{topology: hybrid, ring_size: 8, tree_depth: 3, compression: powersgd}``."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    topology: Literal["ring", "tree", "hybrid"] = Field(
        default="ring",
        description="ring: one flat all-reduce over all ranks; tree: reduce to each node's first rank, an all-reduce "
        "up and down a tree of the nodes (tree_depth deep), broadcast in the node; hybrid: reduce-scatter in each "
        "node, all-reduce of the shards across nodes, all-gather in the node.",
    )
    ring_size: Optional[PositiveInt] = Field(
        default=None,
        description="Ranks per node (each node's ring); null: LOCAL_WORLD_SIZE (torchrun's ranks per node). Must "
        "divide the world size; several processes on one machine may stand for several nodes.",
    )
    tree_depth: PositiveInt = Field(
        default=1, description="Depth of the tree across nodes (tree and hybrid): its fan-out is the smallest that "
        "holds every node in that many levels."
    )
    compression: Literal["none", "fp16", "bf16", "powersgd"] = Field(
        default="none",
        description="Gradient compression with error feedback: fp16 / bf16 (half the bytes), powersgd (low-rank, "
        "torch's PowerSGD hook; rank powersgd_rank); none: fp32.",
    )
    powersgd_rank: PositiveInt = Field(default=2, description="PowerSGD's matrix approximation rank.")
    powersgd_start_iter: PositiveInt = Field(
        default=2,
        description="PowerSGD compresses from this optimizer step on (earlier steps all-reduce in fp32; at least 2: "
        "DDP rebuilds its buckets after the first).",
    )
    inter_node_only: bool = Field(
        default=False,
        description="hybrid only: compress the all-reduce across nodes only; the legs inside each node stay fp32.",
    )

    @model_validator(mode="after")
    def _fits(self) -> CommSection:
        if self.inter_node_only and self.topology != "hybrid":
            raise ValueError(f"inter_node_only: true needs topology hybrid (got {self.topology}); allowed with "
                             f"{self.topology}: false")  # fmt: skip
        if self.inter_node_only and self.compression == "none":
            raise ValueError("inter_node_only: true needs a compression (fp16, bf16 or powersgd; got none)")
        return self
