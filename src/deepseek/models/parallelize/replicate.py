"""The parameters a tensor-parallel plan leaves whole (LayerNorms, position embeddings, ViT's class token, a
classifier's small head) become replicated DTensors on the tp mesh, as in torchtitan's ``NoParallel``.

Why: a plan that leaves them as plain tensors hands the optimizer a mix of ``torch.Tensor`` and ``DTensor``
parameters, which the foreach (multi-tensor) implementations refuse -- ``aten._foreach_mul_.Scalar: got
mixed torch.Tensor and DTensor`` -- and foreach is AdamW's default on CUDA (seen on an H200; CPU defaults to
the per-tensor loop, so CPU runs never showed it). FSDP2 on the data dimension then shards them like the
rest, on the same 2-D mesh.

How the module still computes on plain tensors: during its forward the module's attribute is the parameter's
local tensor (``to_local()``, differentiable, so the gradient lands on the DTensor as a ``Replicate()``
DTensor: every tp rank computes the same, as before), put in the instance ``__dict__`` by a forward pre-hook,
which ``nn.Module.__getattr__`` consults first, and removed by a post-hook. Hand-written because torch's
``distribute_module`` turns the module's inputs into DTensors, which a module with children (ViT's root holds
its class token and position embedding) would pass on to every child. FSDP2's own pre-forward hook is
prepended, so it unshards the parameter before the pre-hook here reads it.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, distribute_tensor


def _plain_names(module: nn.Module) -> list[str]:
    return [n for n, p in module._parameters.items() if p is not None and not isinstance(p, DTensor)]


def _shadow_local(module: nn.Module, args: Any) -> None:
    for name in module._replicated_names:  # type: ignore[attr-defined]
        module.__dict__[name] = module._parameters[name].to_local()  # type: ignore[union-attr]


def _drop_shadow(module: nn.Module, args: Any, output: Any) -> None:
    for name in module._replicated_names:  # type: ignore[attr-defined]
        module.__dict__.pop(name, None)


def replicate_the_rest(model: nn.Module, tp_mesh: DeviceMesh) -> nn.Module:
    """Make every parameter of ``model`` that the plan left a plain tensor a ``Replicate()`` DTensor on
    ``tp_mesh`` (same values, same names), computing on its local copy as described above; returns ``model``."""
    for module in model.modules():
        names = _plain_names(module)
        if not names:
            continue
        for name in names:
            param = module._parameters[name]
            module._parameters[name] = nn.Parameter(
                distribute_tensor(param.data, tp_mesh, [Replicate()]), requires_grad=param.requires_grad
            )
        module._replicated_names = tuple(names)  # type: ignore[attr-defined]
        module.register_forward_pre_hook(_shadow_local)
        module.register_forward_hook(_drop_shadow, always_call=True)
    return model
