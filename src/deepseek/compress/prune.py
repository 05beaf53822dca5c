"""Structured pruning: remove whole channels, FFN neurons and attention heads (smaller dense tensors).

::

    report = ds.compress.prune(model, example_inputs=x, sparsity=0.5, importance="l2")
    report = ds.compress.prune(model, x, flops_target=0.4, importance="taylor", calib_batch=(x, y))
    ds.Trainer(model, ...).fit(train, val)   # fine-tune what is left

Built on ``torch-pruning``, whose dependency graph follows coupled layers (a convolution, its
BatchNorm and the next layer's inputs; residual additions; concatenations; the heads of
attention heads where q, k and v are separate layers), so the pruned model stays consistent.
ds's own attention (bert_base, vit, the encoder-decoder transformer) and Hugging Face's keep q, k and v as
separate layers, so whole heads are pruned there; ``nn.MultiheadAttention`` packs them to the model width, so
in models still built on it only the FFN neurons and channels go. ds adds the target (channel
sparsity, or a fraction of the original FLOPs reached in ``steps`` rounds), the importance by
name (L1, L2 or first-order Taylor on a batch), the classifier left whole, and the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

IMPORTANCE = ("l1", "l2", "taylor")


@dataclass
class PruneReport:
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    steps: int

    def as_dict(self) -> dict[str, float]:
        return {
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_ratio": self.params_after / self.params_before,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_ratio": self.macs_after / max(self.macs_before, 1),
            "steps": self.steps,
        }


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name not in IMPORTANCE:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCE)}; got {name!r}")
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.GroupMagnitudeImportance(p=1 if name == "l1" else 2)


def _separate_qkv(m: nn.Module) -> bool:
    return hasattr(m, "num_attention_heads") and all(
        isinstance(getattr(m, a, None), nn.Linear) for a in ("query", "key", "value")
    )


def _ds_attention(m: nn.Module) -> bool:
    return isinstance(getattr(m, "heads", None), int) and all(
        isinstance(getattr(m, a, None), nn.Linear) for a in ("q_proj", "k_proj", "v_proj")
    )


def prune(
    model: nn.Module,
    example_inputs: Any,
    *,
    sparsity: float | None = 0.5,
    flops_target: float | None = None,
    importance: str = "l2",
    calib_batch: tuple[Any, torch.Tensor] | None = None,
    loss_fn: Callable[..., torch.Tensor] = nn.functional.cross_entropy,
    ignored: Sequence[str] = (),
    prune_heads: bool = True,
    steps: int = 10,
) -> PruneReport:
    """Prune ``model`` in place and return the parameter and MAC counts before and after.

    ``sparsity``: the share of channels/neurons/heads removed from each prunable layer.
    ``flops_target``: instead, prune in up to ``steps`` rounds until the MACs are at most this
    fraction of the original. The last ``nn.Linear`` (the classifier) and the modules named in
    ``ignored`` keep their outputs. ``importance="taylor"`` needs ``calib_batch=(inputs, targets)``.
    """
    import torch_pruning as tp

    if flops_target is None and not (sparsity and 0 < sparsity < 1):
        raise ValueError(f"sparsity must be in (0, 1) (or set flops_target); got {sparsity!r}")
    if flops_target is not None and not 0 < flops_target < 1:
        raise ValueError(f"flops_target is a fraction of the original FLOPs, in (0, 1); got {flops_target!r}")
    if importance == "taylor" and calib_batch is None:
        raise ValueError("importance='taylor' needs calib_batch=(inputs, targets) for its gradients")
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    # Keep the classifier's outputs and the model width: in Hugging Face BERT-style encoders the
    # attention and FFN output projections (and the pooler) write the residual stream.
    keep_width = [m for n, m in linears if n.endswith(("attention.output.dense", ".output.dense", "pooler.dense"))]
    ignored_layers = [model.get_submodule(n) for n in ignored] + [m for _, m in linears[-1:]] + keep_width
    # Heads prune where q, k and v are separate Linear layers (Hugging Face attention: MiniLM, BERT; ds's);
    # nn.MultiheadAttention packs them to the model width, so there only FFN neurons and channels go.
    attention = [m for m in model.modules() if _separate_qkv(m)]
    heads = {lin: m.num_attention_heads for m in attention for lin in (m.query, m.key, m.value)}
    # ds's own attention (bert_base, vit, transformer): q, k and v are separate too; whole heads go together
    heads |= {lin: m.heads for m in model.modules() if _ds_attention(m) for lin in (m.q_proj, m.k_proj, m.v_proj)}
    model.eval()
    macs0, params0 = tp.utils.count_ops_and_params(model, example_inputs)
    rounds = steps if flops_target is not None else 1
    pruner = tp.pruner.MetaPruner(
        model, example_inputs, importance=_importance(importance), pruning_ratio=0.9 if flops_target else sparsity,
        iterative_steps=rounds if flops_target else 1, ignored_layers=ignored_layers, num_heads=heads,
        prune_num_heads=prune_heads and bool(heads), prune_head_dims=False, head_pruning_ratio=sparsity or 0.5,
    )  # fmt: skip
    done = 0
    while done < rounds:
        done += 1
        if importance == "taylor":
            model.zero_grad()
            inputs, targets = calib_batch  # type: ignore[misc]
            loss_fn(model(inputs), targets).backward()
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
        if flops_target is None or macs <= flops_target * macs0:
            break
    model.zero_grad(set_to_none=True)
    for m in attention:  # keep the module's bookkeeping in step with its pruned projections
        m.num_attention_heads = m.query.out_features // m.attention_head_size
        m.all_head_size = m.query.out_features
    for m in model.modules():
        if _ds_attention(m):
            m.heads = m.q_proj.out_features // m.head_dim
    macs1, params1 = tp.utils.count_ops_and_params(model, example_inputs)
    return PruneReport(int(params0), int(params1), int(macs0), int(macs1), done)
