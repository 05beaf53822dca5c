"""Tensor-parallel plan of the vision transformer (:class:`~deepseek.models.vision.ViT`: vit_tiny,
vit_base_patch16), on DTensor's ``parallelize_module``.

Per pre-norm :class:`~deepseek.models.blocks.EncoderBlock`: q, k, v and the MLP's first Linear column-wise
(``heads / tp`` whole heads and ``hidden / tp`` MLP features per rank), the attention output projection and the
MLP's second Linear row-wise. The patch embedding (a convolution), the class token, the positions, the final
LayerNorm and the classification head are replicated (small); with ``loss_parallel`` the head is column-wise
over the classes and its logits stay a ``Shard(-1)`` DTensor.

With ``sequence_parallel`` the residual stream between the blocks ``(N, L, dim)`` lives on each rank as its
``(N, L / tp, dim)`` slice and the blocks' LayerNorms run on it; ``L`` is the patches plus the class token, so
``patches + 1`` must divide by ``tp`` (e.g. 3 x 3 patches for tp 2). It does not cover the class token and
position add before the blocks nor the final LayerNorm and the pooling of the class token after them: the
first block slices its input and the last one gathers its output.
"""

from __future__ import annotations

from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel, parallelize_module

from deepseek.models.parallelize.encoders import (
    attention_plan,
    check_divides,
    gather_input,
    logits_head,
    slice_and_gather_blocks,
)
from deepseek.models.parallelize.replicate import replicate_the_rest
from deepseek.models.vision import ViT


def check_vit(model: ViT, tp: int) -> None:
    """ValueError naming ``parallel.tp`` unless ``tp`` divides the ViT's heads, ``dim`` and MLP width."""
    check_divides(
        "vit", tp, heads=[b.attn.heads for b in model.blocks], dim=[model.pos.shape[-1]],
        mlp=[b.mlp[0].out_features for b in model.blocks],
    )  # fmt: skip


def parallelize_vit(model: ViT, tp_mesh: DeviceMesh, *, sequence_parallel: bool = False,
                    loss_parallel: bool = False) -> ViT:  # fmt: skip
    """Shard ``model`` in place over the 1-D ``tp_mesh`` and return it: images ``(N, C, H, W)`` (the same on
    every rank) -> logits ``(N, num_classes)``, plain or (``loss_parallel``) a DTensor sharded on the classes.
    Errors (``parallel.tp``, ``parallel.sequence_parallel``) come before anything is sharded."""
    if not isinstance(model, ViT):
        raise TypeError(f"parallelize_vit takes a ViT, got {type(model).__name__}")
    tp = tp_mesh.size()
    check_vit(model, tp)
    length = model.pos.shape[1]
    if sequence_parallel and length % tp:
        raise ValueError(
            f"parallel.sequence_parallel=True needs the ViT's {length} tokens (patches + class token) to divide by "
            f"parallel.tp={tp}"
        )
    residual = Shard(1) if sequence_parallel else Replicate()
    for block in model.blocks:
        plan = attention_plan("attn", residual) | {
            "mlp.0": ColwiseParallel(), "mlp.3": RowwiseParallel(output_layouts=residual),
        }  # fmt: skip
        if sequence_parallel:
            plan |= {"norm1": SequenceParallel(use_local_output=True), "norm2": SequenceParallel(use_local_output=True),
                     "attn": gather_input(), "mlp": gather_input()}  # fmt: skip
        parallelize_module(block, tp_mesh, plan)
    if sequence_parallel:
        slice_and_gather_blocks(model.blocks, tp_mesh, extra_inputs=0)  # block(x)
    if loss_parallel:
        parallelize_module(model, tp_mesh, {"head": logits_head(True)})
    return replicate_the_rest(model, tp_mesh)
