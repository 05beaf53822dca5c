"""FLOP counting on torch's dispatcher, attributed to module paths, and reconciled with the analytic formula.

:func:`count_flops` runs a callable under :class:`torch.utils.flop_counter.FlopCounterMode` (torch's own
per-aten-op formulas) with two fixes found on torch 2.13:

* **Fused SDPA on CPU counted as 0.** ``F.scaled_dot_product_attention`` on CPU dispatches to
  ``aten._scaled_dot_product_flash_attention_for_cpu`` (and ``..._for_cpu_backward``), which have no formula in
  torch's registry, and the op does not decompose under the mode, so attention was "not counted at all". We pass
  torch's own SDPA formulas for these two ops through ``custom_mapping``. The math fallback
  (``_scaled_dot_product_attention_math``, taken e.g. with attention dropout in training) is CompositeImplicit:
  the dispatcher sees its ``bmm``s, counted once by the ``bmm`` formula, and never an SDPA op, so nothing is
  counted twice.
  torch's SDPA formulas count the full ``L x S`` score square also for ``is_causal=True``.
* **Backward FLOPs attributed to the wrong modules.** FlopCounterMode's ``ModuleTracker`` keeps a sibling
  "entered" in backward until the gradient of a shared input is complete, so the backward of ``q``/``k``/``v``
  projections reading the same input lands 1x/2x/3x on them. We attribute ourselves: forward ops go to the
  stack of running modules (forward hooks); every autograd node a module's forward creates is stamped with the
  module path (``node.metadata``), and a backward op goes to the path of
  ``torch._C._current_autograd_node()`` and its ancestors. Ops outside any module (the loss) count only in
  :attr:`FlopCount.total`.

A FLOP here is one multiply or one add (an ``(m, k) @ (k, n)`` matmul is ``2 m k n``); elementwise ops,
norms, softmax and bias adds are not counted (torch registers no formula for them).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

_STAMP = "deepseek_module"  # key in autograd Node.metadata: the module path whose forward created the node
_aten = torch.ops.aten
ATTENTION_OPS = (
    "aten._scaled_dot_product_flash_attention_for_cpu",
    "aten._scaled_dot_product_flash_attention",
    "aten._scaled_dot_product_efficient_attention",
    "aten._scaled_dot_product_cudnn_attention",
    "aten._flash_attention",
    "aten._efficient_attention",
)  # op-name prefixes of fused attention (forward and backward)


@dataclass
class FlopCount:
    """``total``: every counted FLOP of ``fn`` (the dispatcher count); ``by_module``: inclusive FLOPs per
    ``named_modules()`` path ("" is the root); ``by_operator``: aten op name -> FLOPs; ``self_by_module``: FLOPs of
    the ops a module runs itself, outside its children (sums to ``by_module[""]``)."""

    total: int
    by_module: dict[str, int]
    by_operator: dict[str, int]
    self_by_module: dict[str, int] = field(default_factory=dict)


def _cpu_sdpa_forward(query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """Shapes ``(N, heads, L, E)``: torch's formula for the other fused SDPA kernels (2 bmm)."""
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args: Any, out_shape=None, **kwargs: Any) -> int:
    """torch's backward formula for fused SDPA (score recompute + 4 bmm)."""
    return sdpa_backward_flop_count(grad_out, query, key, value)


CPU_SDPA_FORMULAS = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_forward,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward,
}


class _ModuleAttribution:
    """Which module paths an op belongs to, in forward (hook stack) and backward (stamped autograd nodes)."""

    def __init__(self, model: nn.Module) -> None:
        self.stack: list[tuple[str, int]] = []  # (path, autograd sequence number when its forward began)
        self.handles = []
        for path, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(path)))
            self.handles.append(module.register_forward_hook(self._post(path), always_call=True))

    def _pre(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any) -> None:
            self.stack.append((path, torch._C._autograd._get_sequence_nr()))

        return hook

    def _post(self, path: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            start = self.stack.pop()[1] if self.stack and self.stack[-1][0] == path else 0
            todo = [t.grad_fn for t in tree_leaves(output) if isinstance(t, torch.Tensor) and t.grad_fn is not None]
            seen: set[int] = set()
            while todo:  # every node this forward created: sequence number at or after `start`
                node = todo.pop()
                if node is None or id(node) in seen or node._sequence_nr() < start:
                    continue
                seen.add(id(node))
                node.metadata.setdefault(_STAMP, path)  # children stamped theirs first: innermost wins
                todo.extend(n for n, _ in node.next_functions)

        return hook

    def current(self) -> list[str]:
        """The paths to credit, innermost last."""
        node = torch._C._current_autograd_node()
        innermost = [p for p, _ in self.stack[-1:]]
        if node is not None and node.metadata.get(_STAMP) is not None:  # backward (or a checkpointed recompute)
            innermost.append(node.metadata[_STAMP])
        # by name: a container that is never called itself (ModuleList) still includes its children
        return list(dict.fromkeys(a for p in innermost for a in _ancestors(p)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _ancestors(path: str) -> list[str]:
    """``"a.b.c"`` -> ``["", "a", "a.b", "a.b.c"]``."""
    parts = path.split(".") if path else []
    return [""] + [".".join(parts[: i + 1]) for i in range(len(parts))]


class _AttributingCounter(FlopCounterMode):
    """FlopCounterMode whose per-module bookkeeping is :class:`_ModuleAttribution` (see module docstring)."""

    def __init__(self, attribution: _ModuleAttribution) -> None:
        super().__init__(display=False, depth=None, custom_mapping=CPU_SDPA_FORMULAS)
        self.attribution = attribution
        self.inclusive: dict[str, int] = defaultdict(int)
        self.own: dict[str, int] = defaultdict(int)
        self.ops: dict[str, int] = defaultdict(int)

    def _count_flops(self, func_packet: Any, out: Any, args: Any, kwargs: Any) -> Any:
        if func_packet in self.flop_registry:
            flops = int(self.flop_registry[func_packet](*args, **kwargs, out_val=out))
            self.ops[str(func_packet)] += flops
            paths = self.attribution.current()
            for path in paths:
                self.inclusive[path] += flops
            if paths:
                self.own[max(paths, key=lambda p: (p != "") + p.count("."))] += flops
            self.flop_counts["Global"][func_packet] += flops
        return out


def count_flops(model: nn.Module, fn: Callable[[], Any]) -> FlopCount:
    """Run ``fn()`` (a forward, or forward and backward, of ``model``) and count its FLOPs on the dispatcher."""
    attribution = _ModuleAttribution(model)
    try:
        with _AttributingCounter(attribution) as counter:
            fn()
    finally:
        attribution.remove()
    return FlopCount(
        total=int(counter.get_total_flops()),
        by_module={p: counter.inclusive.get(p, 0) for p, _ in model.named_modules()},
        by_operator=dict(sorted(counter.ops.items())),
        self_by_module={p: counter.own.get(p, 0) for p, _ in model.named_modules()},
    )


def _multiplier(mode: str) -> int:
    if mode not in ("train", "infer"):
        raise ValueError(f"mode={mode!r}: expected 'train' or 'infer'")
    return 3 if mode == "train" else 1  # backward = 2x forward (grad wrt input and wrt weight)


def analytic_transformer_flops(
    *, params_non_embedding: int, layers: int, d_model: int, seq_len: int, tokens: int, mode: str, causal: bool = False
) -> tuple[int, str]:
    """Kaplan et al. (2020) / PaLM (Chowdhery et al. 2022, app. B) FLOPs of ``tokens`` tokens.

    Per token: ``2N`` forward (one multiply-add per weight) plus attention ``2 * 2 * layers * seq_len * d_model``
    (scores ``QK^T`` and ``PV``, each ``2 * seq_len * d_model`` per token and layer); training multiplies both by
    3 (``6N + 12 * layers * seq_len * d_model``, PaLM's formula). ``causal=True`` halves the attention term (what
    a kernel that skips masked blocks needs); torch's dispatcher formulas count the full square, so compare
    them with ``causal=False``. Returns ``(flops, formula with the numbers)``.
    """
    mult = _multiplier(mode)
    attn_per_token = 4 * layers * seq_len * d_model // (2 if causal else 1)
    flops = mult * (2 * params_non_embedding + attn_per_token) * tokens
    factor = f"{mult} * " if mult != 1 else ""
    half = " / 2 (causal)" if causal else ""
    formula = (
        f"{factor}(2 * N + 4 * layers * seq_len * d_model{half}) * tokens = {factor}(2 * {params_non_embedding:,} + "
        f"4 * {layers} * {seq_len} * {d_model}{half}) * {tokens:,} = {flops:,}"
    )
    return flops, formula


_ATTENTION_NAMES = ("Attention", "SelfAttention", "MultiheadAttention")


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Outermost modules whose class name ends in "Attention" (ours, nn.MultiheadAttention, HF BERT's)."""
    found: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if type(module).__name__.endswith(_ATTENTION_NAMES) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, module))
    return found


def _d_model(module: nn.Module) -> int | None:
    for attrs in (("embed_dim",), ("all_head_size",), ("heads", "head_dim"), ("num_heads", "head_dim")):
        values = [getattr(module, a, None) for a in attrs]
        if all(isinstance(v, int) for v in values):
            return math.prod(values)
    linear = next((m for m in module.modules() if isinstance(m, nn.Linear)), None)
    return linear.in_features if linear is not None else None


def _owned_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Module, int]]:
    """(path, module, element count of the parameters it holds itself) for every module but embeddings, each
    tensor once. An embedding's table is a lookup (no FLOPs), so it is left out, unless an output head shares it
    (tied weights): then it is counted at the head, whose matmul uses it."""
    seen: set[int] = set()
    for path, module in model.named_modules():
        if isinstance(module, nn.Embedding):
            continue
        fresh = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in fresh)
        yield path, module, sum(p.numel() for p in fresh)


def reconcile(model: nn.Module, count: FlopCount, *, seq_len: int, tokens: int, mode: str) -> dict:
    """Three counts of ``count`` (from :func:`count_flops` over ``tokens`` tokens of ``seq_len``) and why they
    differ: ``dispatcher`` (torch's per-op formulas), ``module_sum`` (the root's direct children plus the root's
    own ops: equals the dispatcher less the ops run outside the model), ``analytic`` (the 6N/2N + attention
    formula; None when the model has no attention modules). ``notes`` explain ``dispatcher - analytic`` item by
    item with numbers; for transformers ``breakdown`` holds the items (FLOPs, dispatcher minus analytic) and
    ``unexplained`` what they leave: the items partition the module tree, so only an embedding module's own ops
    (none in practice) would land there."""
    mult = _multiplier(mode)
    children = [name for name, _ in model.named_children()]
    module_sum = sum(count.by_module.get(c, 0) for c in children) + count.self_by_module.get("", 0)
    notes = []
    outside = count.total - module_sum
    if outside:
        notes.append(
            f"{outside:,} FLOPs ran outside the model's modules (e.g. the loss): in the dispatcher count "
            "but not in module_sum"
        )
    attn = attention_modules(model)
    result: dict[str, Any] = {"dispatcher": count.total, "module_sum": module_sum, "analytic": None,
                              "analytic_formula": None, "notes": notes}  # fmt: skip
    d_model = _d_model(attn[0][1]) if attn else None
    if not attn or d_model is None:
        notes.append("no attention modules: the analytic transformer formula does not apply")
        return result
    n_params = sum(n for _, _, n in _owned_parameters(model))
    analytic, formula = analytic_transformer_flops(params_non_embedding=n_params, layers=len(attn), d_model=d_model,
                                                   seq_len=seq_len, tokens=tokens, mode=mode)  # fmt: skip
    result.update(analytic=analytic, analytic_formula=formula)
    embeddings = {id(m.weight): p for p, m in model.named_modules() if isinstance(m, nn.Embedding)}
    per_token = tokens * mult  # analytic: 2 FLOPs per weight per token, x3 for training
    attn_disp, bias, rows = 0, 0, []
    other: dict[str, int] = defaultdict(int)  # module type -> dispatcher self FLOPs - 2 * own parameters * tokens
    for path, module, n_own in _owned_parameters(model):
        own = count.self_by_module.get(path, 0)
        if isinstance(module, nn.Linear):
            n_bias = module.bias.numel() if module.bias is not None else 0
            bias -= 2 * n_bias * per_token
            if own != 2 * (n_own - n_bias) * per_token:
                rows.append((path, own, 2 * (n_own - n_bias) * per_token))
            if id(module.weight) in embeddings:
                weights = module.weight.numel()
                notes.append(f"N includes the {weights:,} weights of {path!r}, tied to the embedding "
                             f"{embeddings[id(module.weight)]!r}: its matmul is real work (nanoGPT's MFU counts it too); "
                             f"Kaplan's non-embedding N leaves it out: {2 * weights * per_token:,} FLOPs less")  # fmt: skip
        elif type(module).__name__.endswith(_ATTENTION_NAMES):
            attn_disp += own - 2 * n_own * per_token  # score and value products; in-projections (own weights) as 2N
        elif own != 2 * n_own * per_token:
            other[type(module).__name__] += own - 2 * n_own * per_token
    attn_analytic = mult * 4 * len(attn) * seq_len * d_model * tokens
    fused_bwd = sum(v for k, v in count.by_operator.items() if k.startswith(ATTENTION_OPS) and "backward" in k)
    breakdown = {"outside the model": outside, "attention": attn_disp - attn_analytic, "bias adds": bias,
                 "Linears off 2*weights*tokens": sum(o - e for _, o, e in rows),
                 **{f"{k} parameters": v for k, v in sorted(other.items())}}  # fmt: skip
    notes.append(
        f"attention ({len(attn)} layers, d_model {d_model}, seq_len {seq_len}): dispatcher {attn_disp:,} vs analytic "
        f"{attn_analytic:,} ({attn_disp - attn_analytic:+,}). torch counts the full score square, also for causal "
        f"models (a causal-skipping kernel needs half: {attn_analytic // 2:,})"
        + (f"; its fused-SDPA backward formula ({fused_bwd:,}) recomputes QK^T: 5 products, not 4" if fused_bwd else "")
    )
    if bias:
        notes.append(f"bias adds: {bias:+,}: the analytic 2N counts 2 FLOPs per bias per token, the dispatcher counts "
                     "addmm as its matmul only")  # fmt: skip
    if rows:
        listed = ", ".join(f"{p} {o:,} vs {e:,}" for p, o, e in rows[:4]) + (
            f" and {len(rows) - 4} more" * (len(rows) > 4)
        )
        notes.append(f"Linears that did not run on every token (pooler/classifier on the first token) or without an "
                     f"input gradient: {breakdown['Linears off 2*weights*tokens']:+,} ({listed})")  # fmt: skip
    for kind, delta in sorted(other.items()):
        why = "the op (a norm: elementwise) has no FLOP formula" if "Norm" in kind else "its own ops count otherwise"
        notes.append(f"{kind} parameters: {delta:+,}: in N at 2 FLOPs per parameter per token, but {why}")
    explained = sum(breakdown.values())
    result.update(breakdown=breakdown, unexplained=count.total - analytic - explained)
    notes.append(
        f"dispatcher - analytic = {count.total - analytic:+,} ({(count.total - analytic) / analytic:+.1%}); "
        f"unexplained after the items above: {result['unexplained']:+,}"
    )
    return result
