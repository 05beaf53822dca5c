"""Per-rank parameter, gradient and optimizer-state memory under DDP, ZeRO-1/2/3, tensor and pipeline parallel x FSDP2,
measured in real ranks beside what ``deepseek plan`` predicts, and each strategy's throughput beside DDP's.

``zero3_tp2`` (issue 16) is gpt2's tensor-parallel plan (``deepseek.models.parallelize.parallelize_gpt2``) on
the inner dim of a ``(dp_shard, tp)`` mesh and FSDP2 ZeRO-3 on the outer one, built directly (no strategy
object): tp 2 at 2 ranks, dp 2 x tp 2 at 4; both ranks of a tp group read one batch. ``pp2`` is the ``pipeline``
strategy object (1F1B, 2 micro-batches, its default ZeRO-2 on the data dimension), stepped by its own
``run_window`` as the trainer does: pp 2 at 2 ranks, dp 2 x pp 2 at 4; both ranks of a pipeline read one batch.

Every (strategy, world) runs in its own freshly spawned ranks (gloo on 127.0.0.1 on CPU, NCCL with one GPU
per rank on CUDA) through the framework's own strategy objects (``ddp``; ``fsdp`` with ``zero_stage`` 1/2/3)
on ds.models' GPT-2 (``--dim``, ``--depth``, ``--vocab``, ``--seq``; AdamW, fp32). What is measured per rank:

- state, after a training step (gradients not yet zeroed): the bytes of the storages behind the parameters
  (a DTensor counts its local shard), their gradients and the optimizer's state tensors
  (``ZeroRedundancyOptimizer``: its local optimizer, which holds only this rank's share), each storage once;
- gathered: the most bytes of whole parameters FSDP2 holds all-gathered at once during forward and backward
  (sampled at each tensor autograd saves or unpacks; ZeRO-2 keeps every block gathered from forward to backward);
- a cross-check: on CPU there is no allocator counter, so the process's resident set size growth (now, and
  at its peak, ``ru_maxrss``) above the RSS before the model was built, with glibc's mmap threshold fixed at
  64 KiB so freed tensors leave the RSS; on CUDA ``torch.cuda.memory_allocated`` above the same point. Both
  include what the counting leaves out (DDP's gradient buckets, communication buffers, activations kept).

The prediction is :func:`deepseek.train.plan.make_plan` for the same config and world (the rank that holds
the most); the table compares it with the rank that holds the most. Targets (issue 15): ZeRO-3's per-rank
state within 10% of 1/N of DDP's, and the plan within 15% of the measurement. Throughput: samples/s and
tokens/s over ``--steps`` steps after ``--warmup`` (the slowest rank's time), with the ratio to DDP's.

    python benchmarks/parallel_memory.py [--worlds 2,4] [--steps 6] [--warmup 2] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import multiprocessing as mp
import os
import queue
import resource
import time
import traceback
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

STRATEGIES = {"ddp": 0, "zero1": 1, "zero2": 2, "zero3": 3}  # name -> ZeRO stage (0: plain DDP)
# name -> (ZeRO stage, tp): gpt2's tensor-parallel plan on the inner mesh dim, FSDP2 on the rest (dp x tp)
TP_LAYOUTS = {"zero3_tp2": (3, 2)}
# name -> (ZeRO stage, pp): the pipeline strategy (1F1B), FSDP2 over the rest of the world (dp x pp)
PP_LAYOUTS = {"pp2": (2, 2)}
STATE_KEYS = ("parameters", "gradients", "optimizer_state")


# ----------------------------------------------------------------------------------------- measurement
def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor: this rank's shard


def storage_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the storages behind ``tensors`` (DTensors: their local shards), each storage counted once
    (views, tied weights and flat buffers are not counted twice; a storage freed to size 0 counts 0)."""
    seen: dict[tuple[str, int], int] = {}
    for t in tensors:
        if t is None:
            continue
        storage = _local(t).untyped_storage()
        if storage.nbytes():
            seen[(str(storage.device), storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """This rank's bytes of parameters, gradients and optimizer state (``ZeroRedundancyOptimizer``: its local
    optimizer's state, this rank's share)."""
    params = list(model.parameters())
    local_optimizer = getattr(optimizer, "optim", optimizer)
    states = [v for s in local_optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return {
        "parameters": storage_bytes(params),
        "gradients": storage_bytes(p.grad for p in params),
        "optimizer_state": storage_bytes(states),
    }


def gathered_bytes(model: nn.Module) -> int:
    """Bytes of whole (all-gathered) parameters FSDP2 holds right now, beyond the shards; 0 without FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    unsharded = []
    for module in model.modules():
        # FSDP2 keeps no public handle on its gathered parameters; its parameter group does (torch 2.6+).
        group = module._get_fsdp_state()._fsdp_param_group if isinstance(module, FSDPModule) else None
        unsharded += [getattr(p, "_unsharded_param", None) for p in (group.fsdp_params if group else [])]
    return storage_bytes(unsharded)


@contextlib.contextmanager
def peak_gathered(model: nn.Module) -> Iterator[list[int]]:
    """Samples :func:`gathered_bytes` whenever autograd saves a tensor (forward) or unpacks one (backward)
    inside the block; the yielded list's max is the peak (each block's parameters are gathered then)."""
    samples = [gathered_bytes(model)]

    def sample(t: torch.Tensor) -> torch.Tensor:
        samples.append(gathered_bytes(model))
        return t

    with torch.autograd.graph.saved_tensors_hooks(sample, sample):
        yield samples


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


# ----------------------------------------------------------------------------------------- config and plan
def layout(name: str) -> tuple[int, int, int]:
    """(ZeRO stage, tp degree, pp degree) of a name of :data:`STRATEGIES`, :data:`TP_LAYOUTS` or :data:`PP_LAYOUTS`."""
    if name in PP_LAYOUTS:
        return PP_LAYOUTS[name][0], 1, PP_LAYOUTS[name][1]
    return (*TP_LAYOUTS[name], 1) if name in TP_LAYOUTS else (STRATEGIES[name], 1, 1)


def config(args: argparse.Namespace, zero_stage: int, tp: int = 1, pp: int = 1) -> Any:
    """The config both the ranks and the plan use: GPT-2 of the benchmark's size, AdamW, ``zero_stage``, ``tp``,
    ``pp`` (1F1B over ``pp`` micro-batches)."""
    from deepseek.config import load_config

    data = {
        "model": {"name": "gpt2", "vocab_size": args.vocab, "max_positions": args.seq, "dim": args.dim,
                  "depth": args.depth, "heads": max(1, args.dim // 64)},
        "data": {"name": "chatterbot_lm", "seq_len": args.seq, "stride": args.seq, "batch_size": args.batch},
        "optim": {"name": "adamw", "lr": 1e-3},
        "train": {"loss": "token_cross_entropy"},
        "parallel": {"zero_stage": zero_stage, "tp": tp, "pp": pp, "pp_microbatches": pp if pp > 1 else None},
    }  # fmt: skip
    return load_config(None, (), data=data)


def predicted(args: argparse.Namespace, zero_stage: int, world: int, tp: int = 1, pp: int = 1) -> dict[str, int]:
    """What ``deepseek plan`` says per rank for this config and world: its memory dict (bytes)."""
    from deepseek.train.plan import make_plan
    from deepseek.train.plan_inputs import meta_model

    cfg = config(args, zero_stage, tp, pp)
    return make_plan(cfg, meta_model(cfg), world, "cpu", None).memory


# ----------------------------------------------------------------------------------------- the ranks
def tensor_parallel(model: nn.Module, world: int, tp: int, device: torch.device) -> nn.Module:
    """``model`` sharded on a ``(dp_shard, tp)`` mesh: gpt2's tensor-parallel plan over tp, then FSDP2 (ZeRO-3)
    per block and the root over dp_shard (the layout the fsdp strategy gives ``parallel.tp``)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from deepseek.models.parallelize import parallelize_gpt2

    mesh = init_device_mesh(device.type, (world // tp, tp), mesh_dim_names=("dp_shard", "tp"))
    parallelize_gpt2(model, mesh["tp"])
    for block in model.blocks:
        fully_shard(block, mesh=mesh["dp_shard"])
    return fully_shard(model, mesh=mesh["dp_shard"])


def rank_run(rank: int, world: int, args: argparse.Namespace, zero_stage: int, tp: int = 1,
             pp: int = 1) -> dict[str, Any]:  # fmt: skip
    """Train ``args.warmup + args.steps`` steps in the current process group; measure this rank (``tp`` > 1:
    sharded by :func:`tensor_parallel`, ZeRO-3 on the data dimension; ``pp`` > 1: the pipeline strategy)."""
    import deepseek.train.fsdp  # noqa: F401 - registers and defines the fsdp strategy
    from deepseek.optim import build_optimizer
    from deepseek.runs import build_model
    from deepseek.train.distributed import DistInfo
    from deepseek.train.fsdp import FSDP
    from deepseek.train.pipeline import Pipeline
    from deepseek.train.strategy import DDP

    cuda = torch.cuda.is_available()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    cfg = config(args, zero_stage, tp, pp)
    gc.collect()
    base_rss, base_alloc = _rss_bytes(), (torch.cuda.memory_allocated(device) if cuda else 0)
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    if tp > 1:  # no strategy object: the layout directly, as the fsdp strategy will build it
        strategy, train_model = None, tensor_parallel(model, world, tp, device)
        optimizer = build_optimizer(cfg.optim.name, model.parameters(), **cfg.optim.kwargs)
    else:
        strategy = Pipeline(pp=pp, microbatches=pp, zero_stage=zero_stage) if pp > 1 else (
            DDP() if zero_stage == 0 else FSDP(zero_stage=zero_stage))  # fmt: skip
        train_model = strategy.setup(model, DistInfo(rank, rank, world, device), device)
        optimizer = build_optimizer(cfg.optim.name, model.parameters(), **cfg.optim.kwargs)
        optimizer = strategy.setup_optimizer(optimizer, model)
    # a tp group reads one batch, and so does a pipeline (ranks are pp-major: its ranks share rank % dp)
    gen = torch.Generator().manual_seed(rank // tp if pp == 1 else rank % (world // pp))
    tokens = torch.randint(0, args.vocab, (args.warmup + args.steps, args.batch, args.seq + 1), generator=gen)
    out: dict[str, Any] = {}
    # a pipeline stage is an FSDP2 root of its own, outside the model's module tree: sampled beside it
    sharded = nn.ModuleList([model, *strategy.stages]) if pp > 1 else model
    for step, batch in enumerate(tokens.to(device)):
        if step == args.warmup:
            torch.cuda.synchronize(device) if cuda else None
            dist.barrier()
            start = time.perf_counter()
        with peak_gathered(sharded) if step == 0 else contextlib.nullcontext([]) as gathered:
            if pp > 1:  # the schedule runs forward and backward of every micro-batch on this rank's stage
                strategy.run_window([(batch[:, :-1], batch[:, 1:])], _token_loss, device)
            else:
                _token_loss(train_model(batch[:, :-1]), batch[:, 1:]).backward()
        if step == 0:
            out["gathered"] = max(gathered)
        optimizer.step()
        if step == 0:
            out.update(state_bytes(model, optimizer), parameter_tensors=len(list(model.parameters())))
            out["rss_growth"] = _rss_bytes() - base_rss
            out["alloc_growth"] = (torch.cuda.memory_allocated(device) - base_alloc) if cuda else None
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize(device) if cuda else None
    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64, device=device)
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the step rate is the slowest rank's
    out["seconds"] = elapsed.item()
    out["peak_rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base_rss
    del train_model, optimizer, sharded
    if strategy is not None:
        strategy.teardown(model)
    gc.collect()  # DDP's reference cycles freed while the group lives (see DDP.teardown)
    return out


def _token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(N, L, vocab)`` logits against ``(N, L)`` token ids."""
    return nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())


def _rank_main(rank: int, world: int, port: int, args: argparse.Namespace, name: str, results: Any) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    try:
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=args.timeout))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world,
                                timeout=timedelta(seconds=args.timeout))  # fmt: skip
        try:
            value = rank_run(rank, world, args, *layout(name))
        finally:
            dist.destroy_process_group()
            del store
            gc.collect()  # a group freed at interpreter exit can abort gloo's threads
        results.put((rank, value))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the benchmark
        where = traceback.extract_tb(exc.__traceback__)[-1]  # a bare assert has no message: say where it failed
        results.put((rank, f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"))


def run_world(args: argparse.Namespace, name: str, world: int) -> list[dict[str, Any]]:
    """:func:`rank_run` on ``world`` spawned ranks; each rank's measurements, by rank."""
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, timeout=timedelta(seconds=args.timeout),
                          wait_for_workers=False)  # fmt: skip
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_rank_main, args=(r, world, store.port, args, name, results)) for r in range(world)]
    for proc in procs:
        proc.start()
    by_rank: dict[int, Any] = {}
    deadline = time.monotonic() + args.timeout
    try:
        while len(by_rank) < world:
            try:
                rank, value = results.get(timeout=1.0)
                by_rank[rank] = value
            except queue.Empty:
                if dead := [p.exitcode for p in procs if p.exitcode not in (None, 0)]:
                    raise RuntimeError(f"a rank died without reporting (exit codes {dead})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the ranks did not finish in {args.timeout} s") from None
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.kill()
    if failed := {r: v for r, v in by_rank.items() if isinstance(v, str)}:
        raise RuntimeError(f"rank {min(failed)} failed: {failed[min(failed)]}")
    return [by_rank[r] for r in range(world)]


# ----------------------------------------------------------------------------------------- report
def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(args: argparse.Namespace, runs: dict[tuple[str, int], list[dict]], on_cuda: bool) -> list[str]:
    """The memory and throughput tables, one line each; the rank that holds the most stands for each run."""
    lines = []
    cross = "CUDA allocated growth" if on_cuda else "RSS growth (now / peak)"
    lines.append(f"{'strategy':<10}{'world':>6}  {'params':>8}{'grads':>8}{'optim':>8}{'state':>8}{'plan':>8}"
                 f"{'plan/meas':>10}{'<=15%':>6}{'gathered':>10}{'plan':>8}  {cross}  (MiB per rank)")  # fmt: skip
    for (name, world), ranks in runs.items():
        top = max(ranks, key=lambda r: sum(r[k] for k in STATE_KEYS))
        state = sum(top[k] for k in STATE_KEYS)
        zero_stage, tp, pp = layout(name)
        plan = predicted(args, zero_stage, world, tp=tp, pp=pp)
        plan_state = sum(plan[k] or 0 for k in STATE_KEYS)
        ratio = plan_state / state
        growth = _mib(top["alloc_growth"]) if on_cuda else f"{_mib(top['rss_growth'])} / {_mib(top['peak_rss_growth'])}"
        lines.append(f"{name:<10}{world:>6}  {_mib(top['parameters']):>8}{_mib(top['gradients']):>8}"
                     f"{_mib(top['optimizer_state']):>8}{_mib(state):>8}{_mib(plan_state):>8}{ratio:>10.3f}"
                     f"{_verdict(abs(ratio - 1) <= 0.15):>6}{_mib(top['gathered']):>10}{_mib(plan['gathered']):>8}"
                     f"  {growth}")  # fmt: skip
    for world in args.worlds:
        if ("ddp", world) in runs and ("zero3", world) in runs:
            ddp = max(sum(r[k] for k in STATE_KEYS) for r in runs[("ddp", world)])
            z3 = max(sum(r[k] for k in STATE_KEYS) for r in runs[("zero3", world)])
            share = z3 / (ddp / world)
            lines.append(f"ZeRO-3 at {world} ranks: per-rank state {_mib(z3)} MiB = {share:.3f} x (DDP's {_mib(ddp)} "
                         f"MiB / {world}); within 10%: {_verdict(abs(share - 1) <= 0.10)}")  # fmt: skip
    lines.append("")
    lines.append(f"{'strategy':<10}{'world':>6}{'samples/s':>11}{'tokens/s':>11}{'vs ddp':>8}")
    for (name, world), ranks in runs.items():
        _, tp, pp = layout(name)
        rate = args.steps * args.batch * world / (tp * pp) / ranks[0]["seconds"]  # a tp group or pipeline: one batch
        ddp_runs = runs.get(("ddp", world))
        ddp_rate = args.steps * args.batch * world / ddp_runs[0]["seconds"] if ddp_runs else None
        vs = f"{rate / ddp_rate:.2f}x" if ddp_rate else "-"
        lines.append(f"{name:<10}{world:>6}{rate:>11.1f}{rate * args.seq:>11.0f}{vs:>8}")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worlds", default="2,4", help="comma-separated world sizes")
    names = [*STRATEGIES, *TP_LAYOUTS, *PP_LAYOUTS]
    p.add_argument("--strategies", default=",".join(names), help=f"some of {', '.join(names)}")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first one is measured)")
    p.add_argument("--quick", action="store_true", help="a smaller model and 3 timed steps")
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--seq", type=int, default=64)
    p.add_argument("--batch", type=int, default=4, help="sequences per rank per step")
    p.add_argument("--timeout", type=int, default=300, help="seconds a run may take before it fails")
    args = p.parse_args()
    if args.quick:
        args.dim, args.depth, args.vocab, args.steps = 128, 2, 2048, 3
    args.worlds = [int(w) for w in args.worlds.split(",")]
    names = args.strategies.split(",")
    if bad := [n for n in names if n not in {*STRATEGIES, *TP_LAYOUTS, *PP_LAYOUTS}]:
        p.error(f"--strategies: {bad[0]!r}; allowed: {', '.join([*STRATEGIES, *TP_LAYOUTS, *PP_LAYOUTS])}")
    on_cuda = torch.cuda.is_available()
    if on_cuda and max(args.worlds) > torch.cuda.device_count():
        p.error(f"--worlds: {max(args.worlds)} ranks need as many GPUs; this machine has {torch.cuda.device_count()}")
    # glibc keeps freed heap memory mapped, so RSS would count every allocation ever made; with a fixed
    # mmap threshold, tensors above 64 KiB get their own mapping and go back on free. The ranks inherit it.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "65536"
    fits = [(n, w) for w in args.worlds for n in names if w % (layout(n)[1] * layout(n)[2]) == 0]
    for name, world in sorted({(n, w) for w in args.worlds for n in names} - set(fits), key=str):
        _, tp, pp = layout(name)
        print(f"{name} at world {world}: skipped (tp {tp} x pp {pp} does not divide the world size)")
    runs = {(name, world): run_world(args, name, world) for name, world in fits}
    count = sum(p.numel() for p in _meta_params(args))
    print(f"GPT-2 dim={args.dim} depth={args.depth} vocab={args.vocab} seq={args.seq}, {count / 1e6:.2f} M parameters, "
          f"AdamW fp32, batch {args.batch} per rank, {'NCCL on CUDA' if on_cuda else 'gloo on CPU'}; "
          f"{args.steps} timed steps after {args.warmup}")  # fmt: skip
    print("\n".join(report(args, runs, on_cuda)))


def _meta_params(args: argparse.Namespace) -> list[nn.Parameter]:
    from deepseek.train.plan_inputs import meta_model

    return list(meta_model(config(args, 0)).parameters())


if __name__ == "__main__":
    main()
