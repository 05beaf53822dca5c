"""Pipeline stages, one splitting per model family (gpt2, vit, bert_base), beside the tensor-parallel plans.

A stage runs blocks ``[a, b)``; the first stage also the embeddings, the last also the final norm and
head. Its parameter names are EXACTLY the whole model's (``blocks.3.attn.q.weight``): a stage module holds
the model's own submodules under the model's attribute names, with a parameter-free :class:`PassThrough` at
every block index outside ``[a, b)``. So checkpoints of a pipeline run load into the whole model, and DCP
reshards between layouts. :func:`prune_to_stages` removes from the model, in place, everything no stage
of this rank holds (the memory pipeline parallelism saves), so the model's own ``named_parameters`` are the
union of its stages' parameters, under the same names.

Data between stages is one activation tensor ``(N, L, dim)`` (bert: plus its ``(N, L)`` attention mask).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from deepseek.models.language import GPT2, Bert
from deepseek.models.vision import ViT


class PassThrough(nn.Module):
    """A block this stage does not run: no parameters, so the stage holds only its own blocks' weights."""

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x


@dataclass(frozen=True)
class StageFamily:
    """How one model family splits: the attributes only the first / last stage holds, and the stage's
    forward ``run(stage, first, last, a, b, *inputs)``."""

    first: tuple[str, ...]
    last: Callable[[nn.Module], tuple[str, ...]]
    run: Callable[..., Any]


def _gpt2_run(stage: Any, first: bool, last: bool, a: int, b: int, x: torch.Tensor) -> torch.Tensor:
    """First stage: ``(N, L)`` ids; others ``(N, L, dim)``. Last stage returns ``(N, L, vocab)`` logits."""
    if first:
        x = stage.tok(x) + stage.pos(torch.arange(x.shape[1], device=x.device))
    for block in stage.blocks[a:b]:
        x = block(x, use_cache=False)[0]
    return stage.head(stage.ln_f(x)) if last else x


def _vit_run(stage: Any, first: bool, last: bool, a: int, b: int, x: torch.Tensor) -> torch.Tensor:
    """First stage: ``(N, C, H, W)`` images; others ``(N, T, dim)`` tokens. Last: ``(N, classes)``."""
    if first:
        tokens = stage.patchify(x).flatten(2).transpose(1, 2)
        x = torch.cat([stage.cls.expand(len(x), -1, -1), tokens], dim=1) + stage.pos
    for block in stage.blocks[a:b]:
        x = block(x)
    return stage.head(stage.norm(x)[:, 0]) if last else x


def _bert_run(stage: Any, first: bool, last: bool, a: int, b: int, x: torch.Tensor, mask: Any = None) -> Any:
    """First stage: ``(N, L)`` ids (and the ``(N, L)`` attention mask, 1 for real tokens); others the
    hidden states ``(N, L, dim)`` and that mask. Last: the head's outputs, as :class:`Bert` returns them."""
    if first:
        pos = torch.arange(x.shape[1], device=x.device)
        x = stage.drop(stage.emb_norm(stage.word(x) + stage.position(pos) + stage.segment(torch.zeros_like(x))))
    pad = (mask == 0) if mask is not None else None
    for block in stage.blocks[a:b]:
        x = block(x, pad)
    if not last:
        return x if mask is None else (x, mask)
    if stage.head_kind == "mlm":
        return stage.mlm_decoder(stage.mlm_transform(x))
    pooled = torch.tanh(stage.pooler(x[:, 0]))
    return stage.classifier(stage.drop(pooled)) if stage.head_kind == "classification" else pooled


def _bert_last(model: nn.Module) -> tuple[str, ...]:
    kind = model.head_kind  # type: ignore[attr-defined]
    return ("mlm_transform", "mlm_decoder") if kind == "mlm" else ("pooler", "classifier")[: 2 if kind == "classification" else 1]


# The built model's class -> how it splits; a family not here has no pipeline splitting.
FAMILIES: dict[type, StageFamily] = {
    GPT2: StageFamily(("tok", "pos"), lambda m: ("ln_f", "head"), _gpt2_run),
    ViT: StageFamily(("patchify", "cls", "pos"), lambda m: ("norm", "head"), _vit_run),
    Bert: StageFamily(("word", "position", "segment", "emb_norm"), _bert_last, _bert_run),
}


def family_of(model: nn.Module) -> StageFamily:
    """How ``model`` splits into stages; ValueError naming the families that can."""
    if type(model) not in FAMILIES:
        raise ValueError(f"model {type(model).__name__} has no pipeline stages (parallel.pp > 1 needs one of: "
                         f"{', '.join(sorted(c.__name__ for c in FAMILIES))})")  # fmt: skip
    return FAMILIES[type(model)]


def stage_bounds(depth: int, num_stages: int, split: Sequence[int] | None = None) -> list[tuple[int, int]]:
    """The ``[a, b)`` block range of each of ``num_stages`` stages: ``split`` (blocks per stage) when given,
    else as even as possible (earlier stages take the remainder). ValueError naming ``parallel.pp_split``."""
    if split is None:
        if num_stages > depth:
            raise ValueError(f"parallel.pp: {num_stages} stages need at least {num_stages} blocks; the model has {depth}")
        base, extra = divmod(depth, num_stages)
        split = [base + (1 if s < extra else 0) for s in range(num_stages)]
    split = list(split)
    if len(split) != num_stages or sum(split) != depth or any(int(n) < 1 for n in split):
        raise ValueError(f"parallel.pp_split: {split} is not allowed; give {num_stages} block counts "
                         f">= 1 that add up to the model's {depth} blocks")  # fmt: skip
    starts = [sum(split[:s]) for s in range(num_stages)]
    return [(a, a + n) for a, n in zip(starts, split)]


class Stage(nn.Module):
    """Stage ``index`` of ``num_stages``: blocks ``[a, b)`` of ``model`` (and its embeddings / head on the
    first / last stage), under the model's own parameter names; ``forward`` takes what the stage before
    sent (the first stage: the model's inputs)."""

    def __init__(self, model: nn.Module, index: int, num_stages: int, bounds: tuple[int, int]) -> None:
        super().__init__()
        family = family_of(model)
        self.index, self.num_stages, (self.a, self.b) = index, num_stages, bounds
        self.is_first, self.is_last = index == 0, index == num_stages - 1
        self._run = family.run
        self.family = type(model)  # the whole model's class: which tensor-parallel plan shards this stage
        blocks = model.blocks  # type: ignore[attr-defined]
        self.blocks = nn.ModuleList([blocks[i] if self.a <= i < self.b else PassThrough() for i in range(len(blocks))])
        held = (family.first if self.is_first else ()) + (family.last(model) if self.is_last else ())
        for name in held:
            setattr(self, name, getattr(model, name))
        for name in ("drop", "head_kind"):  # parameter-free parts the bert forward reads
            if hasattr(model, name) and not hasattr(self, name):
                setattr(self, name, getattr(model, name))

    def forward(self, *inputs: Any) -> Any:
        return self._run(self, self.is_first, self.is_last, self.a, self.b, *inputs)


def build_stages(
    model: nn.Module, indices: Sequence[int], num_stages: int, split: Sequence[int] | None = None
) -> list[Stage]:
    """The stages ``indices`` of ``model`` split ``num_stages`` ways, then :func:`prune_to_stages`."""
    bounds = stage_bounds(len(model.blocks), num_stages, split)  # type: ignore[attr-defined]
    stages = [Stage(model, s, num_stages, bounds[s]) for s in indices]
    prune_to_stages(model, stages)
    return stages


def prune_to_stages(model: nn.Module, stages: Sequence[Stage]) -> None:
    """Remove from ``model``, in place, every block, embedding and head no stage in ``stages`` holds."""
    family = family_of(model)
    blocks = model.blocks  # type: ignore[attr-defined]
    for i in range(len(blocks)):
        if not any(s.a <= i < s.b for s in stages):
            blocks[i] = PassThrough()
    parts = (family.first, any(s.is_first for s in stages)), (family.last(model), any(s.is_last for s in stages))
    for names, kept in parts:
        if not kept:
            for name in names:
                setattr(model, name, None)


def tied_names(model: nn.Module) -> list[tuple[str, str]]:
    """Pairs of names of one shared parameter (gpt2: ``("tok.weight", "head.weight")``), before pruning."""
    first: dict[int, str] = {}
    pairs = []
    for name, p in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(p), name) != name:
            pairs.append((first[id(p)], name))
    return pairs


def first_stage_args(inputs: Any) -> tuple[torch.Tensor, ...]:
    """The first stage's positional inputs from a batch's inputs: a tensor as it is; bert's dict as
    ``(input_ids, attention_mask)`` (``token_type_ids`` are not sent between stages: ValueError)."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,)
    if isinstance(inputs, dict) and "input_ids" in inputs:
        if "token_type_ids" in inputs:
            raise ValueError("parallel.pp: token_type_ids are not supported under pipeline parallelism; "
                             "drop them from the batch (segment 0 is used)")  # fmt: skip
        mask = inputs.get("attention_mask")
        return (inputs["input_ids"],) if mask is None else (inputs["input_ids"], mask)
    raise ValueError(f"parallel.pp: the model's inputs must be a tensor or a dict with input_ids; got {type(inputs).__name__}")
