"""``deepseek plan CONFIG --world N [--device NAME] [--json]``: the parallel plan, checked before launch.

Prints, per rank, the memory for parameters, gradients, optimizer state, activations and the gathered block,
the bytes each collective sends per step, and whether it fits the device (exit 1 when it does not). With
``dp_shard`` > 1 under ZeRO-2/3, the model is also sharded with ``fully_shard`` under torch's fake process
group for the whole world (rank 0 and the last rank), and the shards must match the plan's numbers. Under
``tp`` / ``pp`` the model's degrees are checked first (:func:`~deepseek.train.plan.check_model_degrees`), and
the table gains a section per dimension: tensor parallel (the rank's tp-local parameters, the activation share,
activation collectives), pipeline (each pp rank's parameters, micro-batches in flight, the bytes per stage
boundary, the bubble) and data parallel on what remains.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from deepseek.cli.errors import UsageError

DEVICES = ["h100-80gb", "a100-80gb", "a100-40gb", "v100-32gb", "cpu"]
MAX_WORLD = 65536


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "plan",
        help="check a config's parallel plan for N ranks and print per-rank memory and communication",
        description="Check the parallel degrees against the world size and print, per rank, the memory for "
        "parameters, gradients, optimizer state and activations, the bytes each collective sends per step, and "
        "whether the plan fits the device (exit 1 if not). Builds the model on the meta device: no memory.",
    )
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--world", type=int, help="number of ranks (default: WORLD_SIZE from torchrun's environment, else 1)")
    p.add_argument("--device", choices=DEVICES, default="a100-80gb", help="the device each rank runs on")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(fn=cmd_plan)


def _world(args: argparse.Namespace) -> int:
    raw = args.world if args.world is not None else os.environ.get("WORLD_SIZE", "1")
    try:
        world = int(raw)
    except ValueError:
        raise UsageError(f"WORLD_SIZE: {raw!r} is not a number of ranks; allowed: 1 to {MAX_WORLD}") from None
    if not 1 <= world <= MAX_WORLD:
        raise UsageError(f"--world: {world}; allowed: 1 to {MAX_WORLD}")
    return world


def cmd_plan(args: argparse.Namespace) -> int:
    from deepseek.config import load_config
    from deepseek.train.plan import check_model_degrees, make_plan, parallel_of, pipeline_blocks, resolve_degrees
    from deepseek.train.plan_inputs import boundary_shape, estimate_activations, meta_model, sample_batch
    from deepseek.train.plan_shard import check_sharding

    cfg = load_config(args.config, args.overrides)
    world = _world(args)
    deg = resolve_degrees(parallel_of(cfg), world)  # a ConfigError (exit 2) before any model is built
    model = meta_model(cfg)
    check_model_degrees(cfg, model)  # heads / blocks / experts against tp / pp / ep: exit 2 in one line
    boundary = None
    if deg.tp > 1 or deg.pp > 1:
        try:
            boundary = boundary_shape(model, pipeline_blocks(model), sample_batch(cfg))
        except Exception:  # noqa: BLE001 - a dataset that needs a download: the plan says it is not estimated
            boundary = None
    plan = make_plan(cfg, model, world, args.device, estimate_activations(cfg, model), boundary)
    checks = []
    # ZeRO-1 is DDP + ZeroRedundancyOptimizer: no fully_shard; tp / pp shard more than the 1-D check covers
    if deg.zero_stage >= 2 and deg.dp_shard > 1 and deg.tp == 1 and deg.pp == 1:
        for rank in sorted({0, world - 1}):
            checks.append(check_sharding(meta_model(cfg), deg, rank))  # fully_shard changes the model: a fresh one
    if bad := [c for c in checks if not c.ok]:
        name, planned, local = bad[0].mismatches[0]
        raise RuntimeError(f"plan and fully_shard disagree on rank {bad[0].rank}: {name} planned {planned} "
                           f"elements, sharded {local}")  # fmt: skip
    if args.json:
        out = plan.to_dict()
        out["shard_check"] = [{"rank": c.rank, "parameters": c.parameters, "local_elements": c.local_elements,
                               "ok": c.ok} for c in checks]  # fmt: skip
        print(json.dumps(out, indent=2))
    else:
        print(render(plan, checks))
    return 0 if plan.fits else 1


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def render(plan: Any, checks: list[Any]) -> str:
    """The plan as a plain-text table (one row per memory kind, then one per collective)."""
    d = plan.degrees
    lines = [
        f"plan: {plan.world} ranks = dp_replicate {d['dp_replicate']} x dp_shard {d['dp_shard']} x tp {d['tp']} "
        f"x pp {d['pp']}; strategy {plan.strategy}, zero_stage {d['zero_stage']}; "
        f"{plan.parameter_count:,} parameters",
    ]
    width = max([34 if plan.dimensions else 28, *(len(name) for name in plan.collectives)])
    who = f"pp rank {plan.dimensions['pp']['pp_rank']}, the largest" if "pp" in plan.dimensions else "rank 0"
    lines.append(f"{f'per rank ({who})':<{width + 2}} {'bytes':>12}")
    labels = {"parameters": "parameters", "gradients": "gradients", "optimizer_state": "optimizer state",
              "activations": "activations (estimate)", "gathered": "gathered (ZeRO-2/3)"}  # fmt: skip
    for key, label in labels.items():
        lines.append(f"  {label:<{width}} {_size(plan.memory[key]):>12}")
    if plan.memory["host"]:
        lines.append(f"  {'host memory (cpu_offload)':<{width}} {_size(plan.memory['host']):>12}")
    lines.append(f"  {'total on the device':<{width}} {_size(plan.device_total):>12}")
    lines.append(f"{'collectives per step':<{width + 2}} {'bytes sent per rank':>12}")
    for name, sent in plan.collectives.items() or [("none (one data-parallel rank)", None)]:
        lines.append(f"  {name:<{width}} {'' if sent is None else _size(sent):>12}")
    lines += _dimension_lines(plan.dimensions, width)
    for c in checks:
        lines.append(f"fully_shard check (fake process group, rank {c.rank}): {c.parameters} parameters, "
                     f"{c.local_elements:,} local elements, {'match' if c.ok else 'MISMATCH'}")  # fmt: skip
    lines += [f"note: {n}" for n in plan.notes]
    verdict = "fits" if plan.fits else "does NOT fit"
    lines.append(f"{verdict} {plan.device} ({_size(plan.device_bytes)}; the plan allows itself 90% of it)")
    return "\n".join(lines)



def _dimension_lines(dims: dict[str, Any], width: int) -> list[str]:
    """One section per parallel dimension (tp, pp, dp) of a plan with tp or pp > 1."""
    lines: list[str] = []
    if tp := dims.get("tp"):
        lines.append(f"tensor parallel (tp {tp['degree']}{', sequence parallel' if tp['sequence_parallel'] else ''})")
        lines.append(f"  {'parameters (tp-local, before dp)':<{width}} {_size(tp['parameters']):>12}")
        lines.append(f"  {'activations kept':<{width}} {tp['activation_ratio']:>12.3f}")
        lines += [f"  {k:<{width}} {_size(v):>12}" for k, v in tp["collectives"].items()]
    if pp := dims.get("pp"):
        lines.append(f"pipeline (pp {pp['degree']}, {pp['schedule']}, {pp['microbatches']} micro-batches, "
                     f"{pp['stages_per_rank']} stage(s) per rank)")  # fmt: skip
        for r, size in enumerate(pp["stage_parameters"]):
            lines.append(f"  {f'pp rank {r} parameters (before dp)':<{width}} {_size(size):>12}")
        lines.append(f"  {'micro-batches in flight':<{width}} {pp['in_flight']:>12}")
        lines.append(f"  {'stage boundary per micro-batch':<{width}} {_size(pp['boundary_bytes']):>12}")
        lines += [f"  {k:<{width}} {_size(v):>12}" for k, v in pp["collectives"].items()]
        lines.append(f"  {'bubble':<{width}} {pp['bubble']:>12.1%}")
    if dp := dims.get("dp"):
        lines.append(f"data parallel (dp {dp['degree']}) on the rank's {_size(dp['parameters'])} of parameters")
        lines += [f"  {k:<{width}} {_size(v):>12}" for k, v in dp["collectives"].items()]
    return lines
