"""Meta-device model construction for ``fsdp`` (``train.strategy: {name: fsdp, meta_init: true}``).

A large model is built without memory for its parameters, sharded, and only then given memory and values,
so no rank ever holds the whole model:

1. :func:`build_on_meta` runs the model's constructor with every PARAMETER created on the meta device
   (buffers stay real: they are small, and masks or tables computed in ``__init__`` keep their values).
   The in-place operations the constructor applies to its parameters (``nn.init.normal_``, ``zeros_``,
   the GPT-2 residual rescale, Kaiming's ``uniform_``, ...) are recorded in order, not run.
2. ``fsdp`` shards the model (``fully_shard``), gives each rank memory for its shards only (``to_empty``),
   and :func:`initialise_shards` replays the recorded operations on the shards.

What the initialisation equals: the model's OWN init (the same operations, in the same order, with the same
arguments), drawn per shard from a generator seeded by the process's seed and the shard's index (HSDP's
replicas of one shard draw alike), so each shard gets its own values: every parameter has the eager init's
DISTRIBUTION, not its bitwise values (the eager init draws the whole tensor from one stream). The process's
own RNG state is left as it was (data order, dropout). An init that copies in values computed from the parameter itself (``w.copy_(w * 0.5)``: on meta,
there are none) cannot be replayed: :func:`initialise_shards` raises naming the parameter. Loading a checkpoint
afterwards (``--resume``, or the weights a run starts from) replaces the values as usual.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

M = TypeVar("M", bound=nn.Module)
_NOT_INIT = {"requires_grad_", "share_memory_", "retain_grad"}  # in-place, but not values: they run at once
_RECORDS: weakref.WeakKeyDictionary[nn.Module, _InitRecord] = weakref.WeakKeyDictionary()


class _InitRecord(TorchFunctionMode):
    """Puts new parameters on the meta device and records the in-place operations applied to them."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[int, Callable[..., Any], tuple, dict]] = []
        self.params: dict[int, nn.Parameter] = {}  # kept alive, so that ids stay unique while recording

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # Tensor methods; nn.init's functions pass tensor=
        name = getattr(func, "__name__", "")
        recorded = name.endswith("_") and not name.startswith("__") and name not in _NOT_INIT
        if recorded and isinstance(target, torch.Tensor) and id(target) in self.params:
            self.ops.append((id(target), func, args, kwargs))  # an in-place op on a parameter: later
            return target
        return func(*args, **kwargs)


def build_on_meta(build: Callable[[], M]) -> M:
    """``build()`` with its parameters on the meta device and their init recorded (see the module docstring)."""
    record = _InitRecord()
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and not param.is_meta:  # the constructor's torch.empty: never touched, freed here
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        if param is not None:
            record.params[id(param)] = param
        original(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        with record:
            model = build()
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]
    _RECORDS[model] = record
    return model


def is_on_meta(model: nn.Module) -> bool:
    return any(p.is_meta for p in model.parameters())


def parameter_names(model: nn.Module) -> dict[int, list[str]]:
    """id of each parameter -> its names (tied ones have several); taken before sharding replaces them."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def initialise_shards(model: nn.Module, names: dict[int, list[str]], shard: int) -> None:
    """Replay the init :func:`build_on_meta` recorded onto ``model``'s materialised (sharded) parameters;
    ``names`` from :func:`parameter_names` before sharding; ``shard``: this rank's index on the sharding
    mesh dimension. Each shard draws from its own seed."""
    record = _RECORDS.get(model)
    if record is None:
        raise ValueError("meta_init: the model's parameters are on the meta device but its init was not recorded; "
                         "build it with deepseek.train.meta_init.build_on_meta")  # fmt: skip
    params = dict(model.named_parameters(remove_duplicate=False))
    devices = [p.device for p in params.values() if p.device.type == "cuda"][:1]
    with torch.random.fork_rng(devices=devices), torch.no_grad(), warnings.catch_warnings():
        # DTensor warns that its random ops on a CPU mesh give every shard the same values: the seed per shard
        # below is what makes them differ.
        warnings.filterwarnings("ignore", "DTensor random operators may not have complete support")
        torch.manual_seed(torch.initial_seed() + 1_000_003 * shard)  # shards differ; the caller's RNG comes back
        for tensor_id, func, args, kwargs in record.ops:
            if tensor_id not in names:  # a parameter the constructor replaced (a tied head's first weight)
                continue
            target = params[names[tensor_id][0]]
            args, kwargs = ((target, *args[1:]), kwargs) if args else ((), {**kwargs, "tensor": target})
            if any(isinstance(a, torch.Tensor) and a.is_meta for a in (*args, *kwargs.values())):
                raise ValueError(f"meta_init: {names[tensor_id][0]}'s init copies values computed on the meta "
                                 f"device ({getattr(func, '__name__', func)}); build this model without meta_init")  # fmt: skip
            func(*args, **kwargs)
    del _RECORDS[model]
