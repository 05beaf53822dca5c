"""``MixedPrecision``: per-parameter storage dtypes with fp32 master weights (document 004).

::

    optimizer = MixedPrecision(
        base_optimizer=torch.optim.AdamW,
        fp16_params=["layer.*.weight", "layer.*.bias"],
        bf16_params=["embeddings.*"],
        loss_scale=128,  # or "dynamic"
        lr=1e-3,
    )
    optimizer.bind(model)  # or hand it to ds.Trainer, which binds it to its model

Binding stores the parameters whose names match the glob patterns (``fnmatch``: ``*`` also matches
dots) in fp16/bf16, and gives the base optimizer fp32 master copies of them. Each step unscales the
low-precision gradients into the masters, skips the step if any is inf/NaN, steps the masters and
copies them back. A module whose parameters are low precision computes in that dtype: its
floating inputs are cast to it and its outputs back to the caller's dtype, so the rest of the
model runs unchanged (under autocast too). Move the model to its device before binding.

Scale the loss with ``optimizer.scale_loss(loss).backward()`` (or ``optimizer.backward(loss)``);
the Trainer does this for you. ``loss_scale="dynamic"`` starts at 2**16, halves on overflow and
doubles after 2000 good steps, like ``torch.amp.GradScaler``.

Written here because torch keeps one dtype per model (``model.half()``) and torch.amp keeps the
parameters in fp32; apex's O2 master weights are not per-parameter and no longer maintained.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

import torch
import torch.nn as nn

_DTYPE_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


class MixedPrecision(torch.optim.Optimizer):
    """An optimizer over fp32 masters of a model whose parameters are stored in mixed dtypes.

    Until :meth:`bind` it holds only its settings; after, it is a regular ``torch.optim.Optimizer``
    (LR schedulers, ``state_dict``) whose ``param_groups`` are the base optimizer's.
    """

    def __init__(
        self,
        base_optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.AdamW,
        fp16_params: Iterable[str] = (),
        bf16_params: Iterable[str] = (),
        loss_scale: float | str = "dynamic",
        *,
        growth_interval: int = 2000,
        **optimizer_kwargs: Any,
    ) -> None:
        if not (loss_scale == "dynamic" or (isinstance(loss_scale, (int, float)) and loss_scale > 0)):
            raise ValueError(f"loss_scale must be a positive number or 'dynamic'; got {loss_scale!r}")
        self.base_cls, self.optimizer_kwargs = base_optimizer, optimizer_kwargs
        self.patterns = {torch.float16: list(fp16_params), torch.bfloat16: list(bf16_params)}
        self.dynamic = loss_scale == "dynamic"
        self.scale = 2.0**16 if self.dynamic else float(loss_scale)
        self.growth_interval, self._good_steps = growth_interval, 0
        self.step_was_skipped, self.skipped_steps = False, 0
        self.bound = False
        self.param_groups: list[dict[str, Any]] = []
        self._pairs: list[tuple[nn.Parameter, nn.Parameter]] = []  # (model param, master); the same for fp32
        self._unscaled: bool | None = None  # None: not unscaled this step; else whether an inf was found

    # ------------------------------------------------------------------------------- bind
    def bind(self, model: nn.Module) -> MixedPrecision:
        """Convert the matched parameters of ``model``, create the masters and the base optimizer."""
        if self.bound:
            raise RuntimeError("this MixedPrecision optimizer is already bound to a model")
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        dtypes = self._match([n for n, _ in named])
        self._before_bytes = sum(p.numel() * 4 for _, p in named)
        masters = []
        for name, p in named:
            dtype = dtypes.get(name, torch.float32)
            if dtype != torch.float32:
                master = nn.Parameter(p.detach().float().clone())
                p.data = p.data.to(dtype)
            else:
                master = p
            self._pairs.append((p, master))
            masters.append(master)
        self._add_casts(model)
        self.base = self.base_cls(masters, **self.optimizer_kwargs)
        super().__init__(self.base.param_groups, self.base.defaults)
        self.state = self.base.state  # one state: schedulers and state_dict see the base optimizer's
        self.bound = True
        return self

    def _match(self, names: list[str]) -> dict[str, torch.dtype]:
        found: dict[str, torch.dtype] = {}
        for dtype, patterns in self.patterns.items():
            for pattern in patterns:
                hits = [n for n in names if fnmatchcase(n, pattern)]
                if not hits:
                    near = difflib.get_close_matches(pattern, names, n=5, cutoff=0.3) or names[:5]
                    raise ValueError(
                        f"MixedPrecision: {_DTYPE_NAMES[dtype]}_params pattern {pattern!r} matches no parameter; "
                        f"nearby names: {', '.join(near)}"
                    )
                for n in hits:
                    if found.get(n, dtype) != dtype:
                        raise ValueError(f"MixedPrecision: parameter {n!r} matches both fp16_params and bf16_params")
                    found[n] = dtype
        return found

    def _add_casts(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            own = {p.dtype for p in module.parameters(recurse=False) if p.requires_grad}
            low = own - {torch.float32}
            if not low:
                continue
            if len(own) > 1:
                detail = ", ".join(
                    f"{n}={_DTYPE_NAMES.get(p.dtype, p.dtype)}" for n, p in module.named_parameters(recurse=False)
                )
                raise ValueError(
                    f"MixedPrecision: the parameters of module {name!r} must share one dtype ({detail}); "
                    "extend the patterns to all of them"
                )
            module.register_forward_pre_hook(_cast_inputs(low.pop()), with_kwargs=True)
            module.register_forward_hook(_cast_outputs, with_kwargs=True)

    # ------------------------------------------------------------------------------- step
    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale if self.scale != 1.0 else loss

    def backward(self, loss: torch.Tensor) -> None:
        self.scale_loss(loss).backward()

    @torch.no_grad()
    def _unscale(self) -> bool:
        """Move the gradients to the masters, divided by the scale; True when one is inf/NaN."""
        if self._unscaled is not None:
            return self._unscaled
        grads = []
        for p, master in self._pairs:
            if master is not p:
                master.grad = None if p.grad is None else p.grad.float()
            if master.grad is not None:
                grads.append(master.grad)
        if grads and self.scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / self.scale)
        self._unscaled = bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
        return self._unscaled

    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Unscale, then clip the fp32 master gradients; returns their total norm (inf on overflow)."""
        if self._unscale():
            return torch.tensor(float("inf"))
        return nn.utils.clip_grad_norm_([m for _, m in self._pairs], max_norm)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if not self.bound:
            raise RuntimeError("MixedPrecision.step() before bind(model): bind it, or hand it to ds.Trainer")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        found_inf = self._unscale()
        self._unscaled = None
        self.step_was_skipped = found_inf
        if found_inf:
            self.skipped_steps += 1
            self._good_steps = 0
            if self.dynamic:
                self.scale /= 2.0
            return loss
        self.base.step()
        for p, master in self._pairs:
            if master is not p:
                p.copy_(master)
        self._good_steps += 1
        if self.dynamic and self._good_steps % self.growth_interval == 0:
            self.scale *= 2.0
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p, master in self._pairs:
            for t in (p, master):
                if t.grad is not None:
                    if set_to_none:
                        t.grad = None
                    else:
                        t.grad.zero_()
        self._unscaled = None

    # ------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["mixed_precision"] = {
            "scale": self.scale,
            "good_steps": self._good_steps,
            "skipped_steps": self.skipped_steps,
            "masters": [m.detach().clone() for p, m in self._pairs if m is not p],
        }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("mixed_precision")
        # The base optimizer loads (its own __setstate__ fills its defaults); Optimizer.load_state_dict
        # replaces both ``state`` and ``param_groups``, so re-link the wrapper to the new objects:
        # a scheduler writes the lr into ``self.param_groups``, and the base must step with it.
        self.base.load_state_dict(state_dict)
        self.param_groups, self.state = self.base.param_groups, self.base.state
        self.scale, self._good_steps, self.skipped_steps = extra["scale"], extra["good_steps"], extra["skipped_steps"]
        with torch.no_grad():
            for (p, m), saved in zip([(p, m) for p, m in self._pairs if m is not p], extra["masters"]):
                m.copy_(saved)
                p.copy_(saved)

    # ------------------------------------------------------------------------------ report
    def memory_report(self) -> dict[str, int]:
        """Parameter bytes: all-fp32 before binding, stored in the model now, fp32 masters in the optimizer."""
        stored = {name: 0 for name in _DTYPE_NAMES.values()}
        for p, _ in self._pairs:
            stored[_DTYPE_NAMES[p.dtype]] += p.numel()
        return {
            "before_bytes": self._before_bytes,
            "model_bytes": sum(p.numel() * p.element_size() for p, _ in self._pairs),
            "master_bytes": sum(m.numel() * 4 for p, m in self._pairs if m is not p),
            **{f"{k}_params": v for k, v in stored.items()},
        }

    def report(self) -> str:
        r = self.memory_report()
        return (
            f"parameter memory: {_size(r['before_bytes'])} all fp32 before -> {_size(r['model_bytes'])} in the model "
            f"({r['fp16_params']:,} fp16, {r['bf16_params']:,} bf16, {r['fp32_params']:,} fp32 values) "
            f"+ {_size(r['master_bytes'])} fp32 masters in the optimizer"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.2f} GiB"


def _cast_inputs(dtype: torch.dtype) -> Callable[..., Any]:
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        caller = next((a.dtype for a in (*args, *kwargs.values()) if _is_float(a)), torch.get_default_dtype())
        module._ds_caller_dtype = caller  # read by _cast_outputs
        return _cast(args, dtype), _cast(kwargs, dtype)

    return hook


def _cast_outputs(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
    return _cast(output, module.__dict__.pop("_ds_caller_dtype", torch.get_default_dtype()))


def _is_float(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if _is_float(value):
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value
