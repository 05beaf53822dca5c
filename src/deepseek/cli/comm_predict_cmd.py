"""``deepseek comm predict CONFIG [key=value ...] --world 16..1024 --interconnect NAME (--compute-ms X | --profile)``.

For the config's model (built on the meta device: no memory), the gradient bytes a data-parallel step
all-reduces (trainable parameters x 4 bytes: every precision the config allows keeps fp32 parameters, so DDP
all-reduces fp32 gradients), and per world size and mode (ring, tree, hierarchical, hierarchical with bf16
between nodes, bf16, PowerSGD) the predicted communication time of :func:`deepseek.distributed.cost.comm_report`:
its share of the step without overlap, and what stays exposed when DDP overlaps its buckets with the backward
pass. The compute time per step is given (``--compute-ms``) or measured (``--profile``: 3 forward+backward
steps of the model on one batch of the config's data on this machine's CPU, after one warm-up; the median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from deepseek.cli.errors import UsageError

MAX_WORLD = 65536


def add_predict_parser(comm_subparsers: Any) -> None:
    """Add ``predict`` to ``deepseek comm``'s subcommands."""
    p = comm_subparsers.add_parser(
        "predict",
        help="predict the gradient all-reduce time and its share of the step from the alpha-beta cost model",
        description="Predict, per world size and all-reduce mode, the communication time of a data-parallel step "
        "for the config's model, its share of the step, and whether overlap with the backward pass hides it.",
    )
    p.add_argument("config", nargs="?", help="the config file (not needed with `--interconnect list`)")
    p.add_argument("overrides", nargs="*", metavar="key.path=value")
    p.add_argument("--world", default="16..1024", help="ranks: LO..HI (doubling), a comma list, or one number")
    p.add_argument("--interconnect", default="dgx-a100",
                   help="a preset (`list` prints them), local:ALPHA,BETA[,GAMMA] or a `comm bench --json` file")
    p.add_argument("--compute-ms", type=float, help="compute (forward+backward+optimizer) per step on one rank, ms")
    p.add_argument("--profile", action="store_true", help="measure the compute time: 3 steps on this CPU")
    p.add_argument("--backward-fraction", type=float, default=2 / 3, help="share of compute in the backward pass")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket size in MiB (bucket_cap_mb)")
    p.add_argument("--powersgd-rank", type=int, default=4, help="PowerSGD's matrix approximation rank")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(fn=cmd_predict)


def parse_world(text: str) -> list[int]:
    """``"16..1024"`` -> 16, 32, ..., 1024; ``"16,64"`` -> 16, 64; ``"8"`` -> 8."""
    bad = UsageError(f"--world: {text!r}; allowed: LO..HI (doubling, e.g. 16..1024), a comma list or one "
                     f"number, each 1 to {MAX_WORLD}")  # fmt: skip
    try:
        if ".." in text:
            lo, hi = (int(v) for v in text.split(".."))
            worlds = []
            while lo <= hi and lo >= 1:
                worlds.append(lo)
                lo *= 2
        else:
            worlds = [int(v) for v in text.split(",")]
    except ValueError:
        raise bad from None
    if not worlds or any(not 1 <= w <= MAX_WORLD for w in worlds):
        raise bad
    return worlds


def list_presets() -> str:
    """The interconnect presets, one line each with their sources."""
    from deepseek.distributed import cost

    lines = []
    for name in cost.CLUSTERS:
        c = cost.preset(name)
        lines.append(f"{name:<14} {c.gpus_per_node} GPUs/node, intra {1 / c.intra.beta / 1e9:g} GB/s alpha "
                     f"{c.intra.alpha * 1e6:g} us; {c.nics_per_node} x {1 / c.nic.beta / 1e9:g} GB/s per node, alpha "
                     f"{c.nic.alpha * 1e6:g} us\n    source: {c.source}")  # fmt: skip
    lines.append("local:ALPHA,BETA[,GAMMA] or [local:]FILE.json (deepseek comm bench --json): this machine's fit")
    return "\n".join(lines)


def gradient_shapes(cfg: Any) -> list[tuple[int, ...]]:
    """Shapes of the trainable parameters of the config's model, built on the meta device."""
    from deepseek.train.plan_inputs import meta_model

    return [tuple(p.shape) for p in meta_model(cfg).parameters() if p.requires_grad]


def profile_compute_s(cfg: Any, steps: int = 3) -> float:
    """Median seconds of ``steps`` forward+backward passes (sum of the outputs as the loss) on one batch of the
    config's training data, on the CPU, after one warm-up step. The optimizer step is not included."""
    import torch
    from torch.utils._pytree import tree_flatten
    from torch.utils.data import default_collate

    from deepseek.data import build_dataset
    from deepseek.runs import build_model

    model = build_model(cfg).train()
    sample = build_dataset(cfg.data.name, **cfg.data.kwargs).train[0]
    inputs = default_collate([sample[0] if isinstance(sample, (tuple, list)) else sample] * cfg.data.batch_size)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        leaves, _ = tree_flatten(model(inputs))
        loss = sum(t.float().sum() for t in leaves if torch.is_tensor(t) and t.is_floating_point())
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def cmd_predict(args: argparse.Namespace) -> int:
    from deepseek.distributed import cost

    if args.config == "list" or args.interconnect == "list":
        print(list_presets())
        return 0
    if args.config is None:
        raise UsageError("config: missing; allowed: a config file path (or `--interconnect list`)")
    worlds = parse_world(args.world)
    try:
        cluster = cost.cluster_from_spec(args.interconnect)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if (args.compute_ms is None) == (not args.profile):
        raise UsageError("--compute-ms / --profile: give exactly one; allowed: --compute-ms X (ms > 0) or --profile")
    if args.compute_ms is not None and not args.compute_ms > 0:
        raise UsageError(f"--compute-ms: {args.compute_ms}; allowed: a number of milliseconds > 0")
    for key, value, ok in (("--backward-fraction", args.backward_fraction, 0 <= args.backward_fraction <= 1),
                           ("--bucket-mb", args.bucket_mb, args.bucket_mb > 0),
                           ("--powersgd-rank", args.powersgd_rank, args.powersgd_rank >= 1)):  # fmt: skip
        if not ok:
            raise UsageError(f"{key}: {value}; allowed: {'0 to 1' if 'fraction' in key else 'a number > 0'}")
    from deepseek.config import load_config

    cfg = load_config(args.config, args.overrides)
    shapes = gradient_shapes(cfg)
    grad_bytes = 4 * sum(_numel(s) for s in shapes)
    compute_s = args.compute_ms / 1e3 if args.compute_ms is not None else profile_compute_s(cfg)
    out: dict[str, Any] = {"config": args.config, "interconnect": cluster.name, "source": cluster.source,
                           "gradient_bytes": grad_bytes, "compute_ms": compute_s * 1e3,
                           "compute_from": "--compute-ms" if args.compute_ms is not None else "profiled on CPU",
                           "backward_fraction": args.backward_fraction, "worlds": {}}  # fmt: skip
    for world in worlds:
        try:
            rows = cost.comm_report(grad_bytes, world, cluster, compute_s, args.backward_fraction, shapes=shapes,
                                    powersgd_rank=args.powersgd_rank, bucket_bytes=int(args.bucket_mb * 2**20))
        except ValueError as exc:
            raise UsageError(f"--world {world} on {cluster.name}: {exc}") from None
        out["worlds"][world] = [{"mode": r.mode, "comm_ms": r.comm_s * 1e3, "share_no_overlap": r.share,
                                 "exposed_ms": r.exposed_s * 1e3, "step_ms": r.step_s * 1e3, "hidden": r.hidden}
                                for r in rows]  # fmt: skip
    print(json.dumps(out, indent=2) if args.json else render(out))
    return 0


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def render(out: dict[str, Any]) -> str:
    """Plain-text tables: one per world size, one row per mode."""
    lines = [f"gradients: {out['gradient_bytes']:,} bytes (fp32) per step; compute {out['compute_ms']:.3f} ms "
             f"({out['compute_from']}), backward {out['backward_fraction']:.0%} of it; interconnect "
             f"{out['interconnect']}",  # fmt: skip
             "overlap: DDP buckets all-reduced one after another as their gradients become ready, at a constant "
             "rate over the backward pass (the last bucket's all-reduce always follows it); hidden = yes when what stays exposed adds "
             "at most 1% to the step"]  # fmt: skip
    for world, rows in out["worlds"].items():
        lines.append(f"world {world}")
        lines.append(f"  {'mode':<18} {'comm ms':>10} {'share (no overlap)':>19} {'exposed ms':>11} "
                     f"{'step ms':>10}  hidden")  # fmt: skip
        for r in rows:
            lines.append(f"  {r['mode']:<18} {r['comm_ms']:>10.3f} {r['share_no_overlap']:>19.1%} "
                         f"{r['exposed_ms']:>11.3f} {r['step_ms']:>10.3f}  {'yes' if r['hidden'] else 'no'}")
    return "\n".join(lines)
