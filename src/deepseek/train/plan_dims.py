"""The plan's tensor- and pipeline-parallel dimensions: which parameters (and which slice of each) a rank
holds, its activations, its tensor-parallel and point-to-point traffic, and the pipeline bubble.

Per rank, T = tp, S = pp x pp_stages_per_rank stages, m = micro-batches, v = pp_stages_per_rank:

- tp parameters: the layers the model's plan shards hold ``1/T`` of their weight (gpt2: q, k, v and the MLP's
  first Linear column-wise, weight rows and bias ``/T``; the attention output and the MLP's second Linear
  row-wise, weight columns ``/T``, bias replicated; the token embedding and its tied head vocab-sharded, rows
  ``/T``); norms, positions and row-wise biases stay whole. bert, vit and the encoder-decoder transformer
  likewise (:data:`TP_LAYOUTS`, after their plans in :mod:`deepseek.models.parallelize`): bert's word embedding
  vocab-sharded and its tied MLM decoder column-wise (bias ``/T``), the transformer's two embeddings
  vocab-sharded and its head column-wise; vit's patch embedding, class token, positions and head whole. Heads
  made column-wise only by ``loss_parallel`` are counted whole. A dim cut ``T`` ways holds ``ceil(n / T)`` on
  rank 0 (DTensor's ``Shard``). Models without a layout here: every Linear weight inside the blocks ``/T`` (the
  Megatron pattern), the rest whole. FSDP2 then shards each tp-local tensor's dim 0 over ``dp_shard``.
- pp parameters: stage ``s`` holds its blocks (an even split, or ``pp_split``); the modules registered before
  the blocks (embeddings) sit on the first stage, those after (final norm, head: a tied head is a copy there)
  on the last; pp rank ``r`` holds stages ``r, r + pp, ...`` (v of them). The plan reports the pp rank that
  holds the most parameter bytes.
- activations: the meta estimate ``A`` of one per-rank batch (:mod:`deepseek.train.plan_inputs`) x the share
  of blocks on the rank x micro-batches in flight / m (GPipe: all m; 1F1B: ``min(m, pp)`` on the first stage;
  interleaved: ``min(m, pp)`` per local stage), and under tp Korthikanti et al.'s per-layer ratio
  ``(10 + (24 + 5 a L / d) / T) / (34 + 5 a L / d)`` (a heads, L sequence, d dim: attention and MLP inner
  activations ``/T``, norm and residual inputs whole), or ``A / T`` with sequence parallel.
- tp communication (bytes each rank sends per step): per block on the rank, 2 all-reduces of the
  ``(batch x seq x dim)`` activation in forward and 2 in backward, ring ``2 (T-1)/T`` each (sequence parallel:
  the same bytes as 4 all-gathers + 4 reduce-scatters of ``(T-1)/T``), times ``accumulate_grad_batches``;
  embedding and head collectives are not counted.
- pp communication: per micro-batch and stage boundary one block output ``(batch/m x seq x dim)`` forward
  and its gradient backward; a rank sends forward from each of its stages but the last, backward from each
  but the first: ``m x stages x B`` each way, times ``accumulate_grad_batches``.
- bubble: ``(pp - 1) / (m + pp - 1)``, divided by ``v`` for interleaved 1F1B.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:  # plan.py imports this module
    from deepseek.config import Config
    from deepseek.config.schema import ParallelSection

# Per model class name: (column-wise Linear name suffixes, row-wise Linear name suffixes, vocab-sharded Embedding
# names), as the family's plan in deepseek.models.parallelize shards them (a suffix matches whole name parts).
_QKV = ("q_proj", "k_proj", "v_proj")
TP_LAYOUTS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "GPT2": (("attn.q", "attn.k", "attn.v", "mlp.0"), ("attn.proj", "mlp.2"), ("tok", "head")),
    "Bert": ((*_QKV, "ffn.0", "mlm_decoder"), ("out_proj", "ffn.2"), ("word",)),
    "ViT": ((*_QKV, "mlp.0"), ("out_proj", "mlp.3"), ()),
    "Seq2SeqTransformer": ((*_QKV, "linear1", "head"), ("out_proj", "linear2"), ("src_embed", "tgt_embed")),
}


@dataclass(frozen=True)
class LocalParam:
    """One parameter as a rank holds it after tp (``shape``: its tp-local shape) and pp (a tied weight held by
    two stages counts on each)."""

    name: str
    shape: tuple[int, ...]
    element_size: int
    block: int | None  # index among the pipeline blocks, None for the modules around them
    pid: int  # id() of the parameter: a tied weight is held once per rank

    @property
    def nbytes(self) -> int:
        return self.numel * self.element_size

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def meta(self) -> torch.Tensor:
        """A meta tensor of the tp-local shape (for the dp sharding formulas)."""
        return torch.empty(self.shape, device="meta")


def pipeline_blocks(model: nn.Module) -> nn.ModuleList | None:
    """The blocks a pipeline splits into stages: ``model.blocks``, else the model's only top-level
    ``nn.ModuleList`` (None when there is no such list)."""
    if isinstance(getattr(model, "blocks", None), nn.ModuleList):
        return model.blocks
    lists = [m for m in model.children() if isinstance(m, nn.ModuleList)]
    return lists[0] if len(lists) == 1 else None


def _cut(n: int, ways: int) -> int:
    return math.ceil(n / ways)  # rank 0's share of a dim DTensor shards `ways` ways


def tp_shape(module_name: str, module: nn.Module, kind: str, shape: torch.Size, tp: int, layout: tuple | None):
    """The tp-local shape of ``module``'s parameter ``kind`` (``weight``/``bias``) under ``tp``."""
    shape = tuple(shape)
    if tp == 1 or not shape:
        return shape
    if layout is None:  # Megatron pattern, unknown model: Linear weights inside the blocks cut along dim 0
        inside = isinstance(module, nn.Linear) and kind == "weight" and ".blocks." in f".{module_name}"
        return (_cut(shape[0], tp), *shape[1:]) if inside else shape
    col, row, vocab = layout
    if _matches(module_name, col) or (module_name in vocab and kind == "weight"):
        return (_cut(shape[0], tp), *shape[1:])
    if _matches(module_name, row) and kind == "weight":
        return (shape[0], _cut(shape[1], tp))
    return shape


def _matches(module_name: str, suffixes: tuple[str, ...]) -> bool:
    """Whether ``module_name`` ends in one of ``suffixes`` (whole parts: ``attn.q`` is not ``attn.q_proj``)."""
    return any(module_name == s or module_name.endswith(f".{s}") for s in suffixes)


def local_params(model: nn.Module, blocks: nn.ModuleList | None, tp: int) -> list[LocalParam]:
    """Every parameter use by module (tied weights once per owning module), tp-local, with its block index."""
    layout = TP_LAYOUTS.get(type(model).__name__)
    block_of = {id(b): i for i, b in enumerate(blocks or [])}
    out: list[LocalParam] = []
    for name, module in model.named_modules():
        block = next((block_of[id(m)] for m in _ancestors(model, name) if id(m) in block_of), None)
        for kind, p in module.named_parameters(recurse=False):
            shape = tp_shape(name, module, kind, p.shape, tp, layout)
            out.append(LocalParam(f"{name}.{kind}" if name else kind, shape, p.element_size(), block, id(p)))
    return out


def once(params: list[LocalParam]) -> list[LocalParam]:
    """``params`` with each tied weight kept once (its first use)."""
    seen: set[int] = set()
    return [p for p in params if not (p.pid in seen or seen.add(p.pid))]


def _ancestors(model: nn.Module, name: str) -> list[nn.Module]:
    mods, cur = [], model
    for part in name.split(".") if name else []:
        cur = getattr(cur, part) if not part.isdigit() else cur[int(part)]
        mods.append(cur)
    return mods


def stage_blocks(n_blocks: int, stages: int, split: list[int] | None) -> list[range]:
    """Block indices of each of ``stages`` stages (``split``: blocks per stage; else an even split)."""
    sizes = split if split is not None else [n_blocks // stages] * stages
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [range(s, s + n) for s, n in zip(starts, sizes)]


def pp_rank_params(model: nn.Module, params: list[LocalParam], blocks: nn.ModuleList | None, pp: int,
                   stages_per_rank: int, split: list[int] | None) -> list[list[LocalParam]]:  # fmt: skip
    """The parameters each pp rank holds (see the module docstring)."""
    if pp == 1 or blocks is None:
        return [once(params)]
    stages = pp * stages_per_rank
    ranges = stage_blocks(len(blocks), stages, split)
    order = [name for name, _ in model.named_children()]
    blocks_name = next(name for name, m in model.named_children() if m is blocks)
    out: list[list[LocalParam]] = []
    for r in range(pp):
        held = [s for s in range(stages) if s % pp == r]
        mine = [p for p in params if p.block is not None and any(p.block in ranges[s] for s in held)]
        for p in params:
            if p.block is None:
                top = p.name.split(".", 1)[0]
                before = top in order and order.index(top) < order.index(blocks_name)
                if (before and 0 in held) or (not before and stages - 1 in held):
                    mine.append(p)
        out.append(once(mine))
    return out


def in_flight(schedule: str, microbatches: int, pp: int) -> int:
    """Micro-batches whose activations the first stage holds at once, per local stage."""
    return microbatches if schedule == "gpipe" else min(microbatches, pp)


def bubble(pp: int, microbatches: int, schedule: str, stages_per_rank: int) -> float:
    """The idle fraction of a pipeline step: ``(pp-1)/(m+pp-1)``, / ``v`` for interleaved 1F1B."""
    frac = (pp - 1) / (microbatches + pp - 1)
    return frac / stages_per_rank if schedule == "interleaved_1f1b" else frac


def tp_activation_ratio(tp: int, sequence_parallel: bool, heads: int, seq: int, dim: int) -> float:
    """The share of a layer's activations one of ``tp`` ranks keeps (Korthikanti et al. 2022, eq. 2-4)."""
    if tp == 1:
        return 1.0
    if sequence_parallel:
        return 1 / tp
    attention = 5 * heads * seq / dim
    return (10 + (24 + attention) / tp) / (34 + attention)


def tp_collectives(tp: int, sequence_parallel: bool, blocks: int, boundary_bytes: int, micro: int) -> dict[str, int]:
    """Bytes one rank sends per step for tensor parallelism: 4 activation collectives per block (2 forward,
    2 backward) of ``boundary_bytes`` (one per-rank batch's ``(batch x seq x dim)``), ring algorithms."""
    if tp == 1:
        return {}
    part = (tp - 1) / tp * boundary_bytes * blocks * micro
    if sequence_parallel:
        return {"tp all_gather (activations)": round(4 * part), "tp reduce_scatter (activations)": round(4 * part)}
    return {"tp all_reduce (activations)": round(8 * part)}


def pp_collectives(pp: int, stages_per_rank: int, microbatches: int, boundary_bytes: int, micro: int,
                   rank: int) -> dict[str, int]:  # fmt: skip
    """Bytes pp rank ``rank`` sends per step: per micro-batch, ``boundary_bytes / m`` forward from each stage
    but the last, its gradient backward from each stage but the first."""
    if pp == 1:
        return {}
    stages = pp * stages_per_rank
    held = [s for s in range(stages) if s % pp == rank]
    per_micro = boundary_bytes // microbatches
    forward = sum(s < stages - 1 for s in held) * microbatches * per_micro * micro
    backward = sum(s > 0 for s in held) * microbatches * per_micro * micro
    return {"pp send (activations)": forward, "pp send (gradients)": backward}


def rank_dimensions(cfg: Config, par: ParallelSection, deg: Any, model: nn.Module, activations: int | None,
                    boundary: tuple[tuple[int, ...], int] | None) -> dict[str, Any]:  # fmt: skip
    """The parameters (meta tensors of their tp-local shapes) and activations of the rank that holds the most
    under tp and pp, and the ``tp`` / ``pp`` entries of ``Plan.dimensions`` (see the module docstring).
    ``deg`` is a :class:`deepseek.train.plan.Degrees` (not imported: plan imports this module)."""
    if deg.tp == 1 and deg.pp == 1:
        return {"params": list(model.parameters()), "activations": activations, "notes": []}
    blocks = pipeline_blocks(model)
    held = pp_rank_params(model, local_params(model, blocks, deg.tp), blocks, deg.pp, par.pp_stages_per_rank,
                          par.pp_split)  # fmt: skip
    stage_bytes = [sum(p.nbytes for p in mine) for mine in held]
    rank = stage_bytes.index(max(stage_bytes))
    mine = held[rank]
    n_blocks = len(blocks) if blocks is not None else 0
    my_blocks = sorted({p.block for p in mine if p.block is not None})
    block_bytes = [sum(p.nbytes for p in mine if p.block == b) for b in my_blocks]
    micro, accumulate = par.pp_microbatches or deg.pp, cfg.train.accumulate_grad_batches
    batch_bytes = math.prod(boundary[0]) * boundary[1] if boundary else 0
    notes = [] if boundary else ["tp/pp traffic: not estimated (no block output on the meta device)"]
    out: dict[str, Any] = {"params": [p.meta() for p in mine], "block_bytes": block_bytes, "notes": notes}
    share = len(my_blocks) / n_blocks if n_blocks else 1.0
    if activations is not None and deg.pp > 1:  # the rank's blocks, micro-batches in flight per local stage
        activations = round(activations * share * in_flight(par.pp_schedule, micro, deg.pp) / micro)
    if deg.tp > 1:
        heads = getattr(getattr(blocks[0], "attn", None), "heads", 1) if n_blocks else 1
        seq, dim = (boundary[0][1], boundary[0][-1]) if boundary and len(boundary[0]) == 3 else (1, 1)
        ratio = tp_activation_ratio(deg.tp, par.sequence_parallel, heads, seq, dim)
        activations = None if activations is None else round(activations * ratio)
        out["tp"] = {"degree": deg.tp, "sequence_parallel": par.sequence_parallel, "activation_ratio": ratio,
                     "parameters": sum(p.nbytes for p in mine),
                     "collectives": tp_collectives(deg.tp, par.sequence_parallel, len(my_blocks), batch_bytes,
                                                   accumulate)}  # fmt: skip
    if deg.pp > 1:
        out["pp"] = {"degree": deg.pp, "schedule": par.pp_schedule, "microbatches": micro,
                     "stages_per_rank": par.pp_stages_per_rank, "pp_rank": rank, "stage_parameters": stage_bytes,
                     "blocks": len(my_blocks), "in_flight": in_flight(par.pp_schedule, micro, deg.pp),
                     "boundary_bytes": batch_bytes // micro,
                     "bubble": bubble(deg.pp, micro, par.pp_schedule, par.pp_stages_per_rank),
                     "collectives": pp_collectives(deg.pp, par.pp_stages_per_rank, micro, batch_bytes, accumulate,
                                                   rank)}  # fmt: skip
        notes.append(f"pp rank {rank} holds the most ({len(my_blocks)} of {n_blocks} blocks); bubble "
                     f"{out['pp']['bubble']:.1%} with {micro} micro-batches ({par.pp_schedule})")  # fmt: skip
    out["activations"] = activations
    return out
