"""Tensor-parallel plans of the encoder families built on :class:`~deepseek.models.blocks.MultiHeadAttention`
(q, k and v as separate Linears): bert_base (:class:`~deepseek.models.language.Bert`) and the encoder-decoder
``transformer`` (:class:`~deepseek.models.speech.Seq2SeqTransformer`); vit is in ``vision.py``.

Per layer, Megatron-style: q, k, v and the MLP's first Linear column-wise (each rank holds ``heads / tp`` whole
heads and ``hidden / tp`` MLP features), the attention output projection and the MLP's second Linear row-wise
(partial sums all-reduced, or reduce-scattered onto the sequence under sequence parallelism). Token embeddings
are sharded along the vocabulary. Every rank must feed the same inputs.

Sequence parallelism (bert): between the blocks the residual stream ``(N, L, dim)`` lives on each rank as its
``(N, L / tp, dim)`` slice (``L`` must divide by ``tp``); the post-norm LayerNorms run on the slice, the
attention and MLP all-gather it on entry. The embeddings, their LayerNorm and the heads run replicated: the
first block slices its input, the last one gathers its output. The encoder-decoder transformer has no sequence
parallel plan (its cross-attention would gather the memory in every decoder layer): asking for it is an error.

Loss parallelism: the head's logits stay sharded over the vocabulary or classes (``Shard(-1)`` DTensor) for
``torch.distributed.tensor.parallel.loss_parallel()``: bert's MLM decoder (tied to the word embedding), bert's
classifier and the transformer's output head. Without it, bert's pooler / classifier / MLM transform are
replicated (small), the MLM decoder is column-wise with gathered logits.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import (
    ColwiseParallel,
    PrepareModuleInput,
    PrepareModuleInputOutput,
    PrepareModuleOutput,
    RowwiseParallel,
    SequenceParallel,
    parallelize_module,
)

from deepseek.models.language import Bert
from deepseek.models.parallelize.replicate import replicate_the_rest
from deepseek.models.speech import Seq2SeqTransformer


def check_divides(family: str, tp: int, **sizes: Iterable[int]) -> None:
    """ValueError naming ``parallel.tp``, its value and ``sizes`` unless ``tp`` is a positive integer dividing
    every one of them (``heads=[12], dim=[768]`` ...)."""
    values = {name: sorted(set(v)) for name, v in sizes.items()}
    text = ", ".join(f"{name} {', '.join(map(str, v))}" for name, v in values.items())
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1 or any(n % tp for v in values.values() for n in v):
        raise ValueError(f"parallel.tp={tp!r} must be a positive integer dividing {family}'s {text}")


def attention_plan(prefix: str, residual: Shard | Replicate) -> dict[str, object]:
    """q/k/v column-wise, the output projection row-wise, for the MultiHeadAttention at ``prefix``."""
    plan: dict[str, object] = {f"{prefix}.{p}": ColwiseParallel() for p in ("q_proj", "k_proj", "v_proj")}
    return plan | {f"{prefix}.out_proj": RowwiseParallel(output_layouts=residual)}


def gather_input(*extra: None) -> PrepareModuleInput:
    """All-gather a module's first input ``(N, L / tp, dim)`` into the whole sequence; ``extra`` inputs as they are."""
    return PrepareModuleInput(
        input_layouts=(Shard(1), *extra), desired_input_layouts=(Replicate(), *extra), use_local_output=True
    )


def slice_and_gather_blocks(blocks: nn.ModuleList, tp_mesh: DeviceMesh, extra_inputs: int) -> None:
    """Sequence parallelism around a stack of blocks whose inputs and outputs outside are replicated: the first
    block keeps its rank's slice of the sequence (no communication), the last all-gathers its output. A block's
    first positional input is the ``(N, L, dim)`` stream; ``extra_inputs`` more (a mask, or None) pass as they are."""
    extra = (None,) * extra_inputs
    enter = {"input_layouts": (Replicate(), *extra), "desired_input_layouts": (Shard(1), *extra),
             "use_local_input": True}  # fmt: skip
    leave = {"output_layouts": Shard(1), "desired_output_layouts": Replicate(), "use_local_output": True}
    if len(blocks) == 1:
        parallelize_module(blocks[0], tp_mesh, PrepareModuleInputOutput(**enter, **leave))
        return
    enter["use_local_output"] = enter.pop("use_local_input")
    parallelize_module(blocks[0], tp_mesh, PrepareModuleInput(**enter))
    parallelize_module(blocks[-1], tp_mesh, PrepareModuleOutput(**leave))


def vocab_embedding() -> RowwiseParallel:
    """A token embedding sharded over its vocabulary rows; the partial lookups are all-reduced."""
    return RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())


def logits_head(loss_parallel: bool) -> ColwiseParallel:
    """A Linear over classes or vocabulary, column-wise: logits gathered, or left ``Shard(-1)`` for loss parallel."""
    return ColwiseParallel(
        input_layouts=Replicate(),
        output_layouts=Shard(-1) if loss_parallel else Replicate(),
        use_local_output=not loss_parallel,
    )


def check_bert(model: Bert, tp: int) -> None:
    """ValueError naming ``parallel.tp`` unless ``tp`` divides bert's heads, ``dim`` and MLP width."""
    check_divides(
        "bert_base", tp, heads=[b.attn.heads for b in model.blocks], dim=[model.word.embedding_dim],
        mlp=[b.ffn[0].out_features for b in model.blocks],
    )  # fmt: skip


def parallelize_bert(model: Bert, tp_mesh: DeviceMesh, *, sequence_parallel: bool = False,
                     loss_parallel: bool = False) -> Bert:  # fmt: skip
    """Shard ``model`` in place over the 1-D ``tp_mesh`` and return it. Inputs as for the unsharded model (ids
    ``(N, L)`` or the dict with ``attention_mask``); output ``(N, num_classes)`` / ``(N, L, vocab)`` plain, or
    with ``loss_parallel`` a DTensor sharded on its last dim. Errors come before anything is sharded."""
    if not isinstance(model, Bert):
        raise TypeError(f"parallelize_bert takes a Bert, got {type(model).__name__}")
    check_bert(model, tp_mesh.size())
    if loss_parallel and model.head_kind == "none":
        raise ValueError("parallel.loss_parallel=True needs a head over classes or vocabulary; bert_base head='none' has none")
    residual = Shard(1) if sequence_parallel else Replicate()
    for block in model.blocks:
        plan = attention_plan("attn", residual) | {
            "ffn.0": ColwiseParallel(), "ffn.2": RowwiseParallel(output_layouts=residual),
        }  # fmt: skip
        if sequence_parallel:  # post-norm: each LayerNorm's output is the next residual, a local slice
            plan |= {"ln1": SequenceParallel(use_local_output=True), "ln2": SequenceParallel(use_local_output=True),
                     "attn": gather_input(), "ffn": gather_input()}  # fmt: skip
        parallelize_module(block, tp_mesh, plan)
    if sequence_parallel:
        slice_and_gather_blocks(model.blocks, tp_mesh, extra_inputs=1)  # block(x, pad)
    parallelize_module(model, tp_mesh, {"word": vocab_embedding()})
    if model.head_kind == "mlm":  # the decoder is tied to the word embedding: one Shard(0) weight (as gpt2)
        model.mlm_decoder.weight = model.word.weight
        parallelize_module(model, tp_mesh, {"mlm_decoder": logits_head(loss_parallel)})
        model.mlm_decoder.weight = model.word.weight  # the plan wraps it in a new Parameter: tie again
    elif model.head_kind == "classification" and loss_parallel:
        parallelize_module(model, tp_mesh, {"classifier": logits_head(True)})
    return replicate_the_rest(model, tp_mesh)


def check_transformer(model: Seq2SeqTransformer, tp: int) -> None:
    """ValueError naming ``parallel.tp`` unless ``tp`` divides the transformer's heads, ``d_model`` and ``ff``."""
    layers = [*model.core.encoder.layers, *model.core.decoder.layers]
    check_divides(
        "transformer", tp, heads=[layer.self_attn.heads for layer in layers],
        d_model=[model.src_embed.embedding_dim], ff=[layer.linear1.out_features for layer in layers],
    )  # fmt: skip


def parallelize_transformer(model: Seq2SeqTransformer, tp_mesh: DeviceMesh, *, sequence_parallel: bool = False,
                            loss_parallel: bool = False) -> Seq2SeqTransformer:  # fmt: skip
    """Shard ``model`` in place over the 1-D ``tp_mesh`` and return it: ``(src (N, S), tgt (N, T))`` ids ->
    logits ``(N, T, tgt_vocab)``, plain or (``loss_parallel``) a DTensor sharded on the vocabulary."""
    if not isinstance(model, Seq2SeqTransformer):
        raise TypeError(f"parallelize_transformer takes a Seq2SeqTransformer, got {type(model).__name__}")
    check_transformer(model, tp_mesh.size())
    if sequence_parallel:
        raise ValueError(
            "parallel.sequence_parallel=True is not planned for the encoder-decoder transformer (allowed: false)"
        )
    mlp = {"linear1": ColwiseParallel(), "linear2": RowwiseParallel()}
    for layer in model.core.encoder.layers:
        parallelize_module(layer, tp_mesh, attention_plan("self_attn", Replicate()) | mlp)
    for layer in model.core.decoder.layers:
        plan = attention_plan("self_attn", Replicate()) | attention_plan("multihead_attn", Replicate())
        parallelize_module(layer, tp_mesh, plan | mlp)
    top = {"src_embed": vocab_embedding(), "tgt_embed": vocab_embedding(), "head": logits_head(loss_parallel)}
    parallelize_module(model, tp_mesh, top)
    return replicate_the_rest(model, tp_mesh)
