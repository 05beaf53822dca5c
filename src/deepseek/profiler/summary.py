"""``summary.json`` (schema ``deepseek.profile/1``, documented field by field in docs/profiler.md and in
:data:`SCHEMA`), the bottlenecks with advice, and the terminal table.

Times are seconds per profiled step (means over the steps); FLOPs are per step; shares are fractions of the step.
"""

from __future__ import annotations

import datetime
import math
from typing import Any

SCHEMA_ID = "deepseek.profile/1"
SPLIT = ("data_wait", "forward", "backward", "optimizer", "communication", "other")
NUM, OPT_NUM, STR, OPT_STR = "number", "number|null", "string", "string|null"
# Every field: its JSON type. Lists of objects give their items' fields. Tests check files against this.
SCHEMA: dict[str, Any] = {
    "schema": STR, "created": STR, "model": STR, "mode": STR, "device": STR, "device_name": STR,
    "precision": STR, "batch_size": "integer|null", "steps": "integer",
    "step_time_s": {"mean": NUM, "min": NUM, "max": NUM},
    "split_s": {k: NUM for k in SPLIT}, "split_share": {k: NUM for k in SPLIT},
    "modules": [{"name": STR, "forward_s": NUM, "backward_s": NUM, "flops": "integer|null"}],
    "operators": [{"name": STR, "calls": NUM, "self_s": NUM, "total_s": NUM, "flops": "integer|null"}],
    "flops": {"per_step": "integer|null", "dispatcher": "integer|null", "module_sum": "integer|null",
              "analytic": "integer|null", "analytic_formula": OPT_STR, "notes": ["string"]},
    "achieved_flops_per_s": OPT_NUM,
    "peak": {"flops_per_s": OPT_NUM, "dtype": STR, "how": STR},
    "mfu": OPT_NUM,
    "memory": {"peak_bytes": "integer|null", "device": STR, "how": STR},
    "bottlenecks": [{"what": STR, "share": NUM, "advice": STR}],
    "metrics": "object",
    "files": {"trace": STR, "flamegraph_stack": STR, "flamegraph_module": STR, "stacks": STR, "stacks_module": STR},
}  # fmt: skip
OPTIONAL = {"overhead"}  # {"profiled_step_s", "unprofiled_step_s", "ratio"} when measured


def _type_ok(value: Any, kind: str) -> bool:
    checks = {"number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
              "object": lambda v: isinstance(v, dict)}  # fmt: skip
    return any(checks[k](value) for k in kind.split("|"))


def schema_problems(value: Any, schema: Any = None, where: str = "") -> list[str]:
    """Every way ``value`` (a loaded summary.json) differs from :data:`SCHEMA`: missing, extra or mistyped keys."""
    schema = SCHEMA if schema is None else schema
    if isinstance(schema, str):
        return [] if _type_ok(value, schema) else [f"{where or '.'}: {value!r} is not {schema}"]
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [p for i, item in enumerate(value) for p in schema_problems(item, schema[0], f"{where}[{i}]")]
    if not isinstance(value, dict):
        return [f"{where}: not an object"]
    problems = [f"{where}.{k}: missing" for k in schema if k not in value]
    top_optional = OPTIONAL if schema is SCHEMA else set()
    problems += [f"{where}.{k}: not in the schema" for k in value if k not in schema and k not in top_optional]
    return problems + [p for k in schema if k in value for p in schema_problems(value[k], schema[k], f"{where}.{k}")]


def _op_kind_advice(name: str) -> str:
    if any(k in name for k in ("attention", "_flash", "softmax", "bmm", "baddbmm")):
        return "use fused attention (F.scaled_dot_product_attention) and bf16-mixed precision"
    if any(k in name for k in ("mm", "linear", "matmul", "conv")):
        return "matmul/conv bound: bf16-mixed precision on hardware with bf16 units, larger batches, dims multiple of 8"
    if any(k in name for k in ("copy_", "to", "contiguous", "cat", "clone")):
        return "memory copies: avoid dtype/layout conversions (.to, .contiguous) in the model's forward"
    return "elementwise/small ops: fuse them with torch.compile (train.compile: true)"


def bottlenecks(
    split_share: dict[str, float],
    operators: list[dict[str, Any]],
    step_s: float,
    mfu: float | None,
    kernels: dict[str, float] | None,
    operator_phase: dict[str, str] | None = None,
    top: int = 4,
) -> list[dict[str, Any]]:
    """The biggest costs of a step with what to try for each, largest share first. Operators count only where
    they run mostly in forward or backward (the optimizer's and data loading's have their own advice)."""
    found = []
    rules = {
        "data_wait": (0.05, "data loading is {p} of the step: raise data.num_workers, pin memory, or pre-process "
                      "once (data shards) instead of per step"),
        "optimizer": (0.15, "the optimizer step is {p} of the step: use a fused/foreach optimizer "
                      "(AdamW fused=True on CUDA) or fewer, larger parameter tensors"),
        "communication": (0.1, "waiting on collectives is {p} of the step: larger batches per rank, gradient "
                          "accumulation, or compressed gradients (PowerSGD) / bucketed overlap"),
        "other": (0.1, "{p} of the step is outside data, forward, backward and optimizer (logging, checkpoints, "
                  "callbacks, host syncs): log and validate less often"),
    }  # fmt: skip
    for key, (threshold, advice) in rules.items():
        share = split_share.get(key, 0.0)
        if share >= threshold:
            found.append({"what": key, "share": share, "advice": advice.format(p=f"{share:.0%}")})
    model_ops = [op for op in operators if (operator_phase or {}).get(op["name"], "forward") in ("forward", "backward")]
    for op in model_ops[:2]:
        share = op["self_s"] / step_s if step_s > 0 else 0.0
        if share >= 0.05:
            found.append(
                {
                    "what": op["name"],
                    "share": share,
                    "advice": f"{op['name']} is {share:.0%} of the step: {_op_kind_advice(op['name'])}",
                }
            )
    if kernels and kernels.get("launches_per_step", 0) and kernels.get("busy_s_per_step", 0.0) < 0.5 * step_s:
        idle = 1 - kernels["busy_s_per_step"] / step_s
        found.append({"what": "gpu_idle", "share": idle, "advice": f"the GPU runs no kernel {idle:.0%} of the step "
                      f"({kernels['launches_per_step']:.0f} launches): launch-bound, try torch.compile or CUDA graphs, "
                      "or a larger batch"})  # fmt: skip
    if mfu is not None and mfu < 0.05:
        found.append({"what": "mfu", "share": 1 - mfu, "advice": f"MFU is {100 * mfu:.2g}%: the step is far from the peak; "
                      "fix the shares above first, then a larger batch or bf16-mixed precision"})  # fmt: skip
    return sorted(found, key=lambda b: -b["share"])[:top]


def build_summary(
    *,
    meta: dict[str, Any],
    profile: Any,
    flops: dict[str, Any] | None,
    flop_count: Any,
    peak: Any,
    memory: dict[str, Any],
    metrics: dict[str, Any],
    files: dict[str, str],
) -> dict[str, Any]:
    """The summary dict (see :data:`SCHEMA`). ``profile`` is an :class:`~deepseek.profiler.analysis.Profile`;
    ``flops`` is :func:`deepseek.profiler.flops.reconcile`'s dict and ``flop_count`` its FlopCount (None when
    FLOPs could not be counted); ``peak`` a :class:`~deepseek.profiler.peaks.Peak`."""
    times = profile.step_times_s or [0.0]
    mean = sum(times) / len(times)
    split = {k: max(profile.split_s.get(k, 0.0), 0.0) for k in SPLIT}
    share = {k: (v / mean if mean > 0 else 0.0) for k, v in split.items()}
    by_module = flop_count.by_module if flop_count is not None else {}
    names = [n for n in dict.fromkeys([*by_module, *profile.module_forward_s]) if n]
    modules = [{"name": n, "forward_s": profile.module_forward_s.get(n, 0.0),
                "backward_s": profile.module_backward_s.get(n, 0.0),
                "flops": int(by_module[n]) if n in by_module else None} for n in names]  # fmt: skip
    by_op = {k.replace(".", "::", 1) if "::" not in k else k: v for k, v in
             (flop_count.by_operator.items() if flop_count is not None else [])}  # fmt: skip
    operators = [{**op, "flops": int(by_op[op["name"]]) if op["name"] in by_op else None} for op in profile.operators]
    per_step = int(flop_count.total) if flop_count is not None else None
    achieved = per_step / mean if per_step is not None and mean > 0 else None
    mfu = achieved / peak.flops_per_s if achieved is not None and peak.flops_per_s else None
    flops_out = {"per_step": per_step, "dispatcher": None, "module_sum": None, "analytic": None,
                 "analytic_formula": None, "notes": []}  # fmt: skip
    if flops is not None:
        flops_out.update({k: flops.get(k) for k in ("dispatcher", "module_sum", "analytic", "analytic_formula")})
        flops_out["notes"] = [str(n) for n in flops.get("notes", [])]
    return {
        "schema": SCHEMA_ID,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "steps": profile.steps,
        "step_time_s": {"mean": mean, "min": min(times), "max": max(times)},
        "split_s": split,
        "split_share": share,
        "modules": modules,
        "operators": operators,
        "flops": flops_out,
        "achieved_flops_per_s": achieved,
        "peak": {"flops_per_s": peak.flops_per_s, "dtype": peak.dtype, "how": peak.how},
        "mfu": mfu,
        "memory": memory,
        "bottlenecks": bottlenecks(share, profile.operators, mean, mfu,
                                   profile.kernels if meta.get("device", "").startswith("cuda") else None,
                                   profile.operator_phase),
        "metrics": metrics,
        "files": files,
    }  # fmt: skip
