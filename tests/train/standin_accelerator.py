"""A stand-in for a GPU on a CPU-only machine, and an NCCL-like ``all_reduce`` that needs it.

NCCL only reduces tensors on the group's GPU and rejects CPU tensors. A CPU build of torch cannot
hold data on a ``cuda`` device (every op on one hits "not linked with support for cuda"), so the
stand-in device is ``meta``: the one non-CPU device type a CPU build dispatches to. Inside
:class:`StandInAccelerator`, a tensor moved or created on ``meta`` becomes an :class:`OnStandIn`
that reports ``device == meta`` but keeps real CPU data, so sums survive the trip there and back.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

STANDIN = torch.device("meta")
_CPU = torch.device("cpu")


class OnStandIn(torch.Tensor):
    """A tensor on the stand-in device; ``cpu_data`` holds its values (same shape and dtype)."""

    cpu_data: torch.Tensor

    @staticmethod
    def __new__(cls, cpu_data: torch.Tensor) -> OnStandIn:
        out = torch.Tensor._make_wrapper_subclass(
            cls, cpu_data.shape, dtype=cpu_data.dtype, strides=cpu_data.stride(), device=STANDIN
        )
        out.cpu_data = cpu_data
        return out

    def __repr__(self) -> str:  # type: ignore[override]
        return f"OnStandIn({self.cpu_data})"

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        with StandInAccelerator():
            return func(*args, **(kwargs or {}))


class StandInAccelerator(TorchDispatchMode):
    """Runs every op on CPU; results of ops on (or creating tensors on) the stand-in stay there."""

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        target = kwargs.get("device")
        if target is not None:  # a creation or a move (``to``/``_to_copy``): the device decides
            lands_on_standin = torch.device(target) == STANDIN
            if lands_on_standin:
                kwargs["device"] = _CPU
        else:  # any other op stays where its first tensor argument lives
            first = next((x for x in tree_leaves(args) if isinstance(x, torch.Tensor)), None)
            lands_on_standin = isinstance(first, OnStandIn)

        def unwrap(x: Any) -> Any:
            return x.cpu_data if isinstance(x, OnStandIn) else x

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if func._schema.is_mutable:  # in-place (add_, copy_, ...): the caller's tensor, now updated
            return args[0]
        if not lands_on_standin:
            return out
        return tree_map(lambda x: OnStandIn(x) if isinstance(x, torch.Tensor) else x, out)


def nccl_like_all_reduce(group_device: torch.device, peer: Any, seen: list[torch.device]) -> Any:
    """An ``all_reduce(tensor, op)`` for a 2-rank group on ``group_device``.

    Like NCCL it rejects a tensor that is not on the group's device; otherwise it adds
    ``peer(values)``, the other rank's contribution, in place. ``seen`` records the devices.
    """

    def all_reduce(tensor: torch.Tensor, op: Any = None, group: Any = None, async_op: bool = False) -> None:
        seen.append(tensor.device)
        if tensor.device != group_device:
            raise RuntimeError(f"No backend type associated with device type {tensor.device.type}")
        values = tensor.cpu_data if isinstance(tensor, OnStandIn) else tensor
        values.add_(peer(values))

    return all_reduce
