"""``logging.stats``: gradient norms and log-binned gradient/activation histograms, every N optimizer steps.

:class:`StatsRecorder` is a Trainer callback (``callbacks=[StatsRecorder(...)]``, or the ``logging.stats``
config section). A *recording step* is an optimizer step after which ``global_step % every_steps == 0``.
On a recording step it records, on the device:

- ``grad_norm``: each trainable parameter's gradient L2 norm, and ``grad_norm_total`` (the L2 norm of all of
  them), in ``on_before_optimizer_step``: gradients unscaled (fp16 loss scaling undone), not yet clipped, after
  DDP's all-reduce (so equal on every rank); under FSDP the rank's own gradient shard (a local norm);
- ``grad_hist``: per module, a histogram of its own (non-inherited) parameters' gradient values;
- ``act_hist``: per module whose name matches an ``activations`` fnmatch pattern, a histogram of its output
  values over every micro-batch of the step (forward hooks added in ``on_step_start`` and removed once the
  step's forward passes are done; validation passes and activation-checkpoint recomputation are not counted).

Bins: :mod:`deepseek.train.stats_hist` (fixed, symmetric, log-spaced in magnitude, 1e-8 to 1e2 by default).
Everything accumulates in device tensors; at the recording step's end (``on_step_end``) one flat tensor per rank
goes to the host once, and under several ranks one ``all_gather`` brings every rank's to rank 0, which writes
one record per rank through ``trainer.logger.log_stats`` (``stats.jsonl``, TensorBoard histograms). Other steps
do no extra work: no hooks, no kernels, no sync. Nothing here touches RNG state, gradients or the model's
outputs, so training is the same with and without it.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn

from deepseek.train.stats_hist import DEFAULT_MAX_MAGNITUDE, DEFAULT_MIN_MAGNITUDE, LogHistogram

__all__ = ["StatsRecorder"]


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard (FSDP2, tensor parallel), a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def _float_tensors(out: Any) -> Iterator[torch.Tensor]:
    """The floating-point tensors in a module's output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, torch.Tensor):
        if out.is_floating_point():
            yield _local(out)
    elif isinstance(out, (tuple, list)):
        for o in out:
            yield from _float_tensors(o)
    elif isinstance(out, dict):
        for o in out.values():
            yield from _float_tensors(o)


def _in_backward() -> bool:
    """Whether autograd is running a backward pass now (activation checkpointing recomputes forwards there)."""
    return torch._C._current_graph_task_id() != -1


class StatsRecorder:
    """Records gradient norms and histograms every ``every_steps`` optimizer steps (see the module docstring).

    ``activations``: fnmatch patterns over module names (``""`` is the root model); a pattern that matches no
    module is an error when training starts. ``min_magnitude``/``max_magnitude``: the bins' magnitude range.
    ``records``: the last recording step's records (on rank 0: one per rank; elsewhere: empty).
    """

    def __init__(
        self,
        every_steps: int = 100,
        grad_norms: bool = True,
        grad_histograms: bool = True,
        activations: Sequence[str] = (),
        histogram_bins: int = 64,
        min_magnitude: float = DEFAULT_MIN_MAGNITUDE,
        max_magnitude: float = DEFAULT_MAX_MAGNITUDE,
    ) -> None:
        if not isinstance(every_steps, int) or isinstance(every_steps, bool) or every_steps < 1:
            raise ValueError(f"logging.stats.every_steps: {every_steps!r} is not allowed; use an integer >= 1")
        if isinstance(activations, str) or not all(isinstance(p, str) for p in activations):
            raise ValueError(f"logging.stats.activations: {activations!r} is not allowed; use a list of patterns")
        self.every_steps, self.grad_norms, self.grad_histograms = every_steps, grad_norms, grad_histograms
        self.activations = list(activations)
        self.hist = LogHistogram(histogram_bins, min_magnitude, max_magnitude)  # checks the bins and range
        self.records: list[dict[str, Any]] = []
        self._recording = False
        self._handles: list[Any] = []

    # ------------------------------------------------------------------------------------------- set-up
    def on_train_start(self, trainer: Any) -> None:
        model: nn.Module = trainer.model
        self._device = trainer.device
        self._params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._grad_modules = list(dict.fromkeys(n.rpartition(".")[0] for n, _ in self._params))
        row = {m: i for i, m in enumerate(self._grad_modules)}
        self._param_row = [row[n.rpartition(".")[0]] for n, _ in self._params]
        self._act_modules = [(n, m) for n, m in model.named_modules() if self._matches(n)]
        for pattern in self.activations:
            if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in self._act_modules):
                some = ", ".join(repr(n) for n, _ in list(model.named_modules())[:8])
                raise ValueError(
                    f"logging.stats.activations: pattern {pattern!r} matches no module of the model; "
                    f"module names look like {some}"
                )
        self._own = layout = self._layout()
        self._layouts = [layout]
        self._dist = trainer.dist
        if self._dist.enabled:  # once: each rank's layout (pipeline stages hold different modules)
            self._layouts = [None] * self._dist.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(self._layouts, layout)
        self._width = max(self._length(lay) for lay in self._layouts)
        # float64 holds int64 counts exactly up to 2**53 and float32 norms exactly; MPS has no float64.
        self._dtype = torch.float32 if self._device.type == "mps" else torch.float64
        # Made once: building them at a recording step would copy from the host.
        self._nan = torch.full((), math.nan, device=self._device)
        self._flags = torch.tensor([0.0, 1.0], device=self._device, dtype=self._dtype)[:, None]  # no grads / grads

    def _matches(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.activations)

    def _layout(self) -> dict[str, list[str]]:
        """What this rank records, in the order of its flat tensor."""
        return {
            "params": [n for n, _ in self._params] if self.grad_norms else [],
            "grad_modules": self._grad_modules if self.grad_histograms else [],
            "act_modules": [n for n, _ in self._act_modules],
        }

    def _length(self, layout: dict[str, list[str]]) -> int:
        b = self.hist.bins
        return 1 + len(layout["params"]) + b * (len(layout["grad_modules"]) + len(layout["act_modules"]))

    # ----------------------------------------------------------------------------------------- stepping
    def on_step_start(self, trainer: Any) -> None:
        if (trainer.global_step + 1) % self.every_steps:
            return
        self._recording = True
        b, dev = self.hist.bins, self._device
        self._norms = torch.full((len(self._own["params"]),), math.nan, device=dev)
        self._grad_counts = torch.zeros(len(self._own["grad_modules"]), b, dtype=torch.int64, device=dev)
        self._act_counts = torch.zeros(len(self._act_modules), b, dtype=torch.int64, device=dev)
        self._have_grads = False
        for row, (_, module) in enumerate(self._act_modules):
            self._handles.append(module.register_forward_hook(self._act_hook(row)))

    def _act_hook(self, row: int) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not torch.is_grad_enabled() or _in_backward():  # validation, or a checkpointed recomputation
                return
            for t in _float_tensors(output):
                self._act_counts[row] += self.hist.count(t).to(self._act_counts.device)

        return hook

    def _remove_hooks(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: Any, optimizer: Any) -> None:
        if not self._recording:
            return
        self._remove_hooks()  # the step's forward passes are over
        self._have_grads = True
        grads = [None if p.grad is None else _local(p.grad) for _, p in self._params]
        if self.grad_norms and grads:  # NaN marks a parameter without a gradient (left out of the record)
            norm = torch.linalg.vector_norm
            self._norms = torch.stack(
                [self._nan if g is None else norm(g, dtype=torch.float32).to(self._device) for g in grads]
            )
        if self.grad_histograms:
            for row, g in zip(self._param_row, grads, strict=True):
                if g is not None:
                    self._grad_counts[row] += self.hist.count(g).to(self._device)

    def on_step_end(self, trainer: Any) -> None:
        if not self._recording:
            return
        self._recording = False
        self._remove_hooks()
        flat = torch.cat([
            self._flags[int(self._have_grads)],
            self._norms.to(self._dtype),
            self._grad_counts.flatten().to(self._dtype),
            self._act_counts.flatten().to(self._dtype),
        ])  # fmt: skip
        flat = nn.functional.pad(flat, (0, self._width - flat.numel()))
        if self._dist.enabled:  # one collective, where the group's collectives run; then one copy to the host
            flat = flat.to(self._dist.comm_device)
            parts = [torch.empty_like(flat) for _ in range(self._dist.world_size)]
            torch.distributed.all_gather(parts, flat)
            gathered = torch.stack(parts).cpu()
        else:
            gathered = flat.cpu()[None]
        self.records = []
        if not self._dist.is_main:
            return
        epoch, world = int(trainer.epoch), self._dist.world_size
        for rank, layout in enumerate(self._layouts):
            self.records.append(self._decode(gathered[rank].tolist(), layout, epoch, rank, world))
        if trainer.logger is not None:
            for record in self.records:
                trainer.logger.log_stats(record, trainer.global_step)

    def _decode(self, flat: list[float], layout: dict[str, list[str]], epoch: int, rank: int, world: int) -> dict:
        """One rank's record (``stats.jsonl``'s format, without ``step``, which the sink adds)."""
        b = self.hist.bins
        record: dict[str, Any] = {"epoch": epoch, "rank": rank, "world_size": world, "edges": list(self.hist.edges)}
        have_grads, pos = flat[0] > 0, 1
        norms = dict(zip(layout["params"], flat[pos : pos + len(layout["params"])], strict=True))
        pos += len(layout["params"])
        if have_grads and self.grad_norms:
            record["grad_norm"] = {n: v for n, v in norms.items() if not math.isnan(v)}
            record["grad_norm_total"] = math.sqrt(sum(v * v for v in record["grad_norm"].values()))
        if have_grads and self.grad_histograms:
            record["grad_hist"] = {}
            for m in layout["grad_modules"]:
                record["grad_hist"][m] = [int(c) for c in flat[pos : pos + b]]
                pos += b
        else:
            pos += b * len(layout["grad_modules"])
        if self.activations:
            record["act_hist"] = {}
            for m in layout["act_modules"]:
                record["act_hist"][m] = [int(c) for c in flat[pos : pos + b]]
                pos += b
        return record

    # ------------------------------------------------------------------------------------------ cleanup
    def on_train_end(self, trainer: Any) -> None:
        self._remove_hooks()
        self._recording = False

    def on_exception(self, trainer: Any, exc: BaseException) -> None:
        self._remove_hooks()
        self._recording = False
