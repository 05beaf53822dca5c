"""Tensor-parallel plans of the language family (Megatron-style, on DTensor's ``parallelize_module``).

gpt2 (:class:`~deepseek.models.language.GPT2`), per block: q, k, v and the MLP's first Linear column-wise
(each rank holds ``heads / tp`` whole heads and ``4 * dim / tp`` MLP features), the attention output
projection and the MLP's second Linear row-wise (their partial sums are all-reduced, or reduce-scattered
along the sequence under sequence parallelism). The token embedding and the LM head tied to it are sharded
along the vocabulary (one shared ``Shard(0)`` weight); the head's logits are gathered, or left
vocab-sharded for ``torch.distributed.tensor.parallel.loss_parallel``.

With ``sequence_parallel`` the residual stream between the attention and MLP ``(N, L, dim)`` lives on each
rank as its ``(N, L / tp, dim)`` slice of the sequence, the LayerNorms run on that slice, and the attention
and MLP all-gather it on entry; the sequence length must then divide by ``tp``. Only the cache-free forward
(training, evaluation) is planned: ``generate`` / ``stream`` with a KV cache are not.
"""

from __future__ import annotations

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from deepseek.models.language import GPT2, GPT2Block
from deepseek.models.parallelize.replicate import replicate_the_rest


def check_tp_degree(model: GPT2, tp: int) -> None:
    """ValueError naming ``parallel.tp``, its value and the sizes unless ``tp`` divides gpt2's attention heads
    (so each rank holds whole heads) and its hidden sizes (``dim``, the MLP's ``4 * dim``)."""
    blocks = _held_blocks(model)
    heads = {block.attn.heads for block in blocks}
    dims = {block.mlp[0].in_features for block in blocks}
    hidden = {block.mlp[0].out_features for block in blocks}
    sizes = (f"heads {', '.join(map(str, sorted(heads)))}, dim {', '.join(map(str, sorted(dims)))}, "
             f"mlp {', '.join(map(str, sorted(hidden)))}")  # fmt: skip
    if not isinstance(tp, int) or tp < 1 or any(n % tp for n in (*heads, *dims, *hidden)):
        raise ValueError(f"parallel.tp={tp!r} must be a positive integer dividing gpt2's {sizes}")


def _held_blocks(model: nn.Module) -> list[GPT2Block]:
    """The gpt2 blocks ``model`` runs: all of a whole model's; a pipeline stage's own (not its pass-throughs)."""
    return [block for block in model.blocks if isinstance(block, GPT2Block)]  # type: ignore[union-attr]


def _is_gpt2(model: nn.Module) -> bool:
    """A whole gpt2, or a pipeline stage of one (:class:`~deepseek.models.parallelize.stages.Stage`)."""
    return isinstance(model, GPT2) or getattr(model, "family", None) is GPT2


def _block_plan(sequence_parallel: bool) -> dict[str, object]:
    """The ``parallelize_module`` plan of one :class:`~deepseek.models.language.GPT2Block`."""
    # Under sequence parallelism the row-wise outputs are reduce-scattered back onto the sequence slice.
    residual = Shard(1) if sequence_parallel else Replicate()
    plan: dict[str, object] = {
        "attn.q": ColwiseParallel(),
        "attn.k": ColwiseParallel(),
        "attn.v": ColwiseParallel(),
        "attn.proj": RowwiseParallel(output_layouts=residual),
        "mlp.0": ColwiseParallel(),
        "mlp.2": RowwiseParallel(output_layouts=residual),
    }
    if sequence_parallel:
        gather = {"desired_input_layouts": (Replicate(), None), "use_local_output": True}
        plan |= {
            "ln1": SequenceParallel(),
            "ln2": SequenceParallel(),
            "attn": PrepareModuleInput(input_layouts=(Shard(1), None), **gather),  # (x, past=None)
            "mlp": PrepareModuleInput(
                input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),), use_local_output=True
            ),
        }
    return plan


def parallelize_gpt2(
    model: GPT2, tp_mesh: DeviceMesh, *, sequence_parallel: bool = False, loss_parallel: bool = False
) -> GPT2:
    """Shard ``model`` (a gpt2, or a pipeline stage of one) in place over the 1-D ``tp_mesh`` and return it.

    A stage's parts are the ones it holds: its blocks (pass-throughs skipped), the embeddings on the first
    stage, the final norm and head on the last. The head is tied to the token embedding only where one module
    holds both (under pipeline parallelism the last stage's head is a copy of its own, sharded alike).

    Every rank must feed the same token ids ``(N, L)``. The output is the logits ``(N, L, vocab)`` as a plain
    tensor, or with ``loss_parallel`` a DTensor sharded on the vocabulary (``Shard(-1)``), whose
    cross-entropy is computed inside ``torch.distributed.tensor.parallel.loss_parallel()``.
    Raises ValueError (see :func:`check_tp_degree`) before anything is sharded.
    """
    if not _is_gpt2(model):
        raise TypeError(f"parallelize_gpt2 takes a GPT2 or a pipeline stage of one, got {type(model).__name__}")
    check_tp_degree(model, tp_mesh.size())
    for block in _held_blocks(model):
        parallelize_module(block, tp_mesh, _block_plan(sequence_parallel))
    tok, head = getattr(model, "tok", None), getattr(model, "head", None)
    tied = tok is not None and head is not None and head.weight is tok.weight
    residual = Shard(1) if sequence_parallel else Replicate()
    top: dict[str, object] = {
        # vocab-parallel embedding: each rank looks up its rows, the partial sums are reduced (or scattered)
        "tok": RowwiseParallel(input_layouts=Replicate(), output_layouts=residual),
        "head": ColwiseParallel(
            input_layouts=residual,
            output_layouts=Shard(-1) if loss_parallel else Replicate(),
            use_local_output=not loss_parallel,
        ),
    }
    if sequence_parallel:
        # (L, dim) positions: each rank keeps its slice of the sequence, to add to its slice of the tokens
        top["pos"] = PrepareModuleOutput(output_layouts=Replicate(), desired_output_layouts=Shard(0))
        top["ln_f"] = SequenceParallel()
    # A stage plans only what it holds (tok and pos on the first, ln_f and head on the last).
    top = {name: style for name, style in top.items() if getattr(model, name, None) is not None}
    if "tok" in top:
        parallelize_module(model, tp_mesh, {"tok": top.pop("tok")})
    if tied:  # share the sharded weight (both Shard(0) over the vocabulary) before the head's plan runs, which
        model.head.weight = model.tok.weight  # then keeps that DTensor instead of distributing a second copy
    if top:
        parallelize_module(model, tp_mesh, top)
    if tied:
        model.head.weight = model.tok.weight  # the plan wraps it in a new Parameter: tie again
    return replicate_the_rest(model, tp_mesh)
