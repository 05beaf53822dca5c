"""Communication for data-parallel training: topologies, gradient compression, a collective benchmark and
a cost model.

- :class:`Topology` (``topology.py``): ring, tree or hybrid (hierarchical) all-reduce over the process groups it
  builds from how ranks map to nodes;
- ``hooks.py``: DDP communication hooks that follow a topology, compress (fp16 / bf16 with error feedback,
  PowerSGD), time the communication and count its bytes, and save their state in checkpoints;
- ``bench.py`` / ``fit.py``: the collective benchmark (nccl-tests' definitions) and its alpha-beta fit;
- :mod:`deepseek.distributed.cost`: the alpha-beta cost model of ring, tree, hierarchical and compressed
  collectives for 2 to 1,024 ranks, with interconnect presets.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Topology", "cost"]


def __getattr__(name: str) -> Any:
    # Lazy: ``import deepseek.distributed.cost`` (pure arithmetic) does not load torch.distributed's groups.
    if name == "Topology":
        from deepseek.distributed.topology import Topology

        return Topology
    if name in ("cost", "topology", "hooks", "bench", "fit"):
        import importlib

        return importlib.import_module(f"deepseek.distributed.{name}")
    raise AttributeError(f"module 'deepseek.distributed' has no attribute '{name}'")
