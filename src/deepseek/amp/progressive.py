"""Progressive mixed precision (document 000): low precision where it is safe, fp32 where it is not.

Every eligible module (``nn.Linear``, convolutions, ``nn.MultiheadAttention``, RNNs: the layers
autocast runs in low precision; the outermost one when they nest) starts computing in fp16 (or
bf16) under autocast. After each backward, :meth:`ProgressivePrecision.observe` checks every module:

- **forward overflow**: the first module, in execution order, whose output is not finite (an
  activation above 65504 in fp16). No loss scale can fix that, so it is promoted at once;
- **backward overflow**: the last module in execution order with non-finite gradients while the
  forward pass was finite. Lowering the loss scale is the usual cure, so it is promoted only after
  ``patience`` such steps in a row;
- **gradient underflow**: the share of its non-zero (scaled) gradient elements below the low
  dtype's smallest normal number, above ``underflow_share`` for ``patience`` steps in a row;
- **gradient-norm spikes**: its unscaled gradient norm above ``spike_factor`` times its running
  mean (after ``warmup`` healthy steps).

A promoted module runs with autocast disabled and its floating inputs cast to fp32, from the next
``autocast()`` on; a checkpointed recompute during backward repeats the precision of its forward.
After ``stable_steps`` healthy steps it is demoted again; each later promotion of that module doubles
its window. All of this costs one device sync per step (one stacked statistics tensor read back).
Under torch.distributed (DDP) the ranks decide on their statistics summed over all ranks (one small
all-reduce per step), so all ranks promote alike and hold the same state.

Written here because neither torch nor the libraries this project builds on offer per-module
precision that adapts during training: torch.amp decides per op, once.

Use it alone (call ``observe()`` between ``backward()`` and ``scaler.step()``) or as
``Trainer(precision="progressive")`` / ``train.precision: progressive``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from deepseek.amp import GradScaler, default_device_type

LOW_PRECISION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.MultiheadAttention,
    nn.RNNBase,
)


@dataclass
class _Health:
    """Per-module bookkeeping."""

    name: str
    numel: int
    promoted: bool = False
    fp32: bool = False  # computes in fp32 in the current autocast(): ``promoted`` as of entering it
    window: int = 0  # healthy steps before a demotion attempt
    stable: int = 0  # healthy steps since promotion
    streak_overflow: int = 0
    streak_underflow: int = 0
    norm_mean: float = 0.0
    norm_count: int = 0
    amax: list[torch.Tensor] = field(default_factory=list)


class ProgressivePrecision:
    """A precision policy: ``autocast()`` context, ``scaler`` and ``observe()`` after each backward.

    ``model``: the module to watch. ``dtype``: the low precision (fp16 by default; it is the one
    that overflows and underflows). ``device_type``: defaults to the model's device.
    ``process_group``: the ranks training this model together, over which ``observe()`` averages its
    statistics so that every rank promotes alike (e.g. ``torch.distributed.group.WORLD`` under DDP; the
    Trainer sets it). None: this process decides alone, even when a group exists -- reducing over a
    group whose other ranks never call ``observe()`` would hang.
    """

    precision = "progressive"

    def __init__(
        self,
        model: nn.Module,
        dtype: torch.dtype = torch.float16,
        device_type: str | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        underflow_share: float = 0.5,
        spike_factor: float = 10.0,
        warmup: int = 20,
        patience: int = 3,
        stable_steps: int = 500,
        process_group: Any = None,
    ) -> None:
        param = next(model.parameters(), None)
        self.device_type = device_type or (param.device.type if param is not None else default_device_type())
        self.dtype = dtype
        if scaler is None and dtype == torch.float16:
            scaler = GradScaler(device=self.device_type)
        self.scaler = scaler
        self.underflow_share, self.spike_factor, self.warmup = underflow_share, spike_factor, warmup
        self.patience, self.stable_steps = patience, stable_steps
        self.process_group = process_group
        self.tiny = torch.finfo(dtype).tiny
        self.total_numel = sum(p.numel() for p in model.parameters()) or 1
        self.steps = self.promotions = self.demotions = 0
        self.events: list[dict[str, Any]] = []  # every promotion/demotion, in order
        self._modules: list[tuple[nn.Module, _Health]] = []
        self._order: list[_Health] = []  # execution order during the current step
        self._active = False
        self._off: list[Any] = []
        for name, module in _outermost(model):
            health = _Health(name, sum(p.numel() for p in module.parameters()), window=stable_steps)
            module.register_forward_pre_hook(self._make_pre_hook(health), with_kwargs=True)
            module.register_forward_hook(self._make_hook(health))
            self._modules.append((module, health))
        if not self._modules:
            raise ValueError(f"ProgressivePrecision: no module of {[t.__name__ for t in LOW_PRECISION_TYPES]} to watch")

    # ------------------------------------------------------------------------------ forward
    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Autocast to the low dtype; promoted modules inside it compute in fp32."""
        # Fixed for this forward: the recompute of a checkpointed block runs in backward, possibly
        # after observe() has promoted a module, and must compute exactly what the forward did.
        for _, h in self._modules:
            h.fp32 = h.promoted
        self._active, self._off = True, []
        try:
            with torch.autocast(self.device_type, dtype=self.dtype):
                yield
        finally:
            self._active = False

    def _make_pre_hook(self, health: _Health) -> Any:
        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            # Keyed to the autocast state, not to being inside autocast(): torch.utils.checkpoint
            # re-enters the forward's autocast state for a recompute during backward, not this context.
            if not (health.fp32 and self._low_autocast_enabled()):
                return None
            off = torch.autocast(self.device_type, enabled=False)
            off.__enter__()
            self._off.append((health, off))
            return _to_fp32(args), _to_fp32(kwargs)

        return pre_hook

    def _make_hook(self, health: _Health) -> Any:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self._off and self._off[-1][0] is health:
                self._off.pop()[1].__exit__(None, None, None)
            if self._active and torch.is_grad_enabled():  # not in a recompute: each forward counts once
                out = output[0] if isinstance(output, tuple) else output
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    if not health.amax:
                        self._order.append(health)
                    health.amax.append(out.detach().abs().amax().float())

        return hook

    def _low_autocast_enabled(self) -> bool:
        return torch.is_autocast_enabled(self.device_type) and torch.get_autocast_dtype(self.device_type) == self.dtype

    # ----------------------------------------------------------------------------- observe
    def observe(self) -> list[dict[str, Any]]:
        """Check every module after ``backward()`` (before ``scaler.step``); returns this step's events."""
        self.steps += 1
        scale = self.scaler.get_scale() if self.scaler is not None and self.scaler.is_enabled() else 1.0
        stats = self._gathered_stats()
        by_health = {id(h): row for (_, h), row in zip(self._modules, stats)}
        # execution order: by mean position over the ranks (the same everywhere), registration order on ties
        ran = sorted((row[5], i) for i, row in enumerate(stats) if row[5] < len(self._modules))
        order = [self._modules[i][1] for _, i in ran] or [h for _, h in self._modules]
        rows = [(h, by_health[id(h)]) for h in order]
        events: list[dict[str, Any]] = []
        fwd_origin = next((h for h, r in rows if r[0] != r[0] or r[0] == float("inf")), None)
        bwd_origin = None
        if fwd_origin is None:
            bwd_origin = next((h for h, r in reversed(rows) if r[1] > 0), None)
        for _, h in self._modules:
            _amax, nonfinite, sumsq, small, nonzero, _position = by_health[id(h)]
            if h.promoted:
                healthy = nonfinite == 0 and fwd_origin is None
                h.stable = h.stable + 1 if healthy else 0
                if h.stable >= h.window:
                    events.append(self._set(h, False, f"stable for {h.stable} steps"))
                continue
            reason = None
            if h is fwd_origin:
                reason = f"forward overflow (|activation| beyond {self.dtype} range)"
            h.streak_overflow = h.streak_overflow + 1 if h is bwd_origin else 0
            if reason is None and h.streak_overflow >= self.patience:
                reason = f"backward overflow in {h.streak_overflow} steps in a row"
            share = small / nonzero if nonzero else 0.0
            h.streak_underflow = h.streak_underflow + 1 if share > self.underflow_share else 0
            if reason is None and h.streak_underflow >= self.patience:
                reason = f"gradient underflow: {share:.0%} of non-zero gradient elements below {self.tiny:.1e}"
            if reason is None and nonfinite == 0 and fwd_origin is None:
                norm = (sumsq**0.5) / scale
                if h.norm_count >= self.warmup and norm > self.spike_factor * h.norm_mean:
                    reason = f"gradient-norm spike: {norm / h.norm_mean:.1f}x its running mean"
                else:  # running mean over healthy steps only
                    h.norm_count += 1
                    h.norm_mean += (norm - h.norm_mean) / min(h.norm_count, 100)
            if reason is not None:
                events.append(self._set(h, True, reason))
        for _, h in self._modules:
            h.amax.clear()
        self._order = []
        self.events.extend(events)
        return events

    def _gathered_stats(self) -> list[list[float]]:
        """Per module, in registration order: ``_stats`` and the execution position (``len(modules)``
        when it did not run), averaged over the ranks under torch.distributed: each rank sees its own
        activations and, without DDP's gradient all-reduce, its own gradients, yet all must agree."""
        never = len(self._modules)
        position = {id(h): float(i) for i, h in enumerate(self._order)}
        stats = torch.stack([self._stats(module, h) for module, h in self._modules])
        positions = torch.tensor(
            [position.get(id(h), never) for _, h in self._modules], dtype=stats.dtype, device=stats.device
        )
        stats = torch.cat([stats, positions[:, None]], dim=1)
        world = dist.get_world_size(self.process_group) if self.process_group is not None else 1
        if world > 1:
            # A sum keeps every check: a non-finite amax or gradient anywhere stays non-finite/non-zero,
            # and the mean gradient norm and underflow share are those of the whole batch under DDP.
            dist.all_reduce(stats, group=self.process_group)
            stats /= world
        return stats.tolist()  # the one device sync per step

    def _stats(self, module: nn.Module, h: _Health) -> torch.Tensor:
        """``[output amax, non-finite grads?, grad sum of squares, tiny non-zero count, non-zero count]``."""
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        amax = torch.stack(h.amax).amax() if h.amax else torch.zeros((), device=_device(module))
        if not grads:
            zero = torch.zeros((), device=amax.device)
            return torch.stack([amax, zero, zero, zero, zero])
        flat = torch.cat([g.detach().reshape(-1).float() for g in grads])
        finite = torch.isfinite(flat)
        absval = flat.abs()
        nonzero = absval > 0
        return torch.stack(
            [
                amax.to(flat.device),
                (~finite).any().float(),
                torch.where(finite, flat, 0.0).pow(2).sum(),
                (nonzero & (absval < self.tiny)).sum().float(),
                nonzero.sum().float(),
            ]
        )

    def _set(self, h: _Health, promoted: bool, reason: str) -> dict[str, Any]:
        if promoted:
            if self.promotions_of(h.name):  # promoted before: wait twice as long this time
                h.window *= 2
            self.promotions += 1
        else:
            self.demotions += 1
        h.promoted, h.stable, h.streak_overflow, h.streak_underflow = promoted, 0, 0, 0
        action = "promote" if promoted else "demote"
        return {
            "step": self.steps,
            "module": h.name,
            "action": action,
            "to": "fp32" if promoted else str(self.dtype).removeprefix("torch."),
            "reason": reason,
        }

    def promotions_of(self, name: str) -> int:
        return sum(1 for e in self.events if e["module"] == name and e["action"] == "promote")

    # ----------------------------------------------------------------------------- report
    @property
    def promoted(self) -> list[str]:
        """Names of the modules computing in fp32 now."""
        return [h.name for _, h in self._modules if h.promoted]

    def low_precision_share(self) -> float:
        """Share of the model's parameters whose module computes in the low dtype now."""
        return sum(h.numel for _, h in self._modules if not h.promoted) / self.total_numel

    def metrics(self) -> dict[str, float]:
        return {
            "precision/low_share": self.low_precision_share(),
            "precision/promoted_modules": float(len(self.promoted)),
            "precision/promotions": float(self.promotions),
            "precision/demotions": float(self.demotions),
        }

    def state_dict(self) -> dict[str, Any]:
        modules = {
            h.name: {"promoted": h.promoted, "window": h.window, "stable": h.stable, "norm_mean": h.norm_mean,
                     "norm_count": h.norm_count}
            for _, h in self._modules
        }  # fmt: skip
        return {"steps": self.steps, "promotions": self.promotions, "demotions": self.demotions,
                "events": list(self.events), "modules": modules}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.promotions, self.demotions = state["steps"], state["promotions"], state["demotions"]
        self.events = list(state["events"])
        for _, h in self._modules:
            saved = state["modules"].get(h.name)
            if saved is not None:
                h.promoted, h.window, h.stable = saved["promoted"], saved["window"], saved["stable"]
                h.norm_mean, h.norm_count = saved["norm_mean"], saved["norm_count"]


def _outermost(model: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """Eligible modules that have no eligible ancestor, with their qualified names."""
    if not prefix and isinstance(model, LOW_PRECISION_TYPES):
        yield "", model
        return
    for name, child in model.named_children():
        qualified = f"{prefix}{name}"
        if isinstance(child, LOW_PRECISION_TYPES):
            yield qualified, child
        else:
            yield from _outermost(child, qualified + ".")


def _to_fp32(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.float() if value.is_floating_point() and value.dtype != torch.float32 else value
    if isinstance(value, tuple):
        return tuple(_to_fp32(v) for v in value)
    if isinstance(value, list):
        return [_to_fp32(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_fp32(v) for k, v in value.items()}
    return value


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
