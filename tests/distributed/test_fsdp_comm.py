"""HierarchicalReduceScatter against torch's flat reduce-scatter, raw and under FSDP2 (gloo, 127.0.0.1)."""

from __future__ import annotations

import pytest

from tests.gloo_ranks import run_ranks

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

SIZES = (1, 7, 1000)  # elements per rank's chunk


def _raw_checks(rank: int, ring_size: int) -> dict[str, float]:
    """Max |hierarchical - flat| per op over SIZES, and the stats of those calls."""
    import torch
    import torch.distributed as dist
    from torch.distributed import ReduceOp

    from deepseek.distributed.fsdp_comm import HierarchicalReduceScatter
    from deepseek.distributed.topology import Topology

    world = dist.get_world_size()
    comm = HierarchicalReduceScatter(Topology("ring", ring_size))
    gen = torch.Generator().manual_seed(100 + rank)
    diffs = {"SUM": 0.0, "AVG": 0.0, "PREMUL_SUM": 0.0}
    for c in SIZES:
        inp = torch.randn(world * c, generator=gen)
        flat = torch.empty(c)
        dist.reduce_scatter_single(flat, inp.clone(), op=ReduceOp.SUM)  # gloo has no PREMUL_SUM: scale by hand
        for name, op, want in (("SUM", ReduceOp.SUM, flat), ("AVG", ReduceOp.AVG, flat / world),
                               ("PREMUL_SUM", ReduceOp.PREMUL_SUM(0.25), flat * 0.25)):  # fmt: skip
            out = comm.allocate((c,), dtype=torch.float32, device=torch.device("cpu"))
            before = inp.clone()
            assert comm(out, inp, dist.group.WORLD, op) is None
            assert torch.equal(inp, before), "the input must not change"
            diffs[name] = max(diffs[name], (out - want).abs().max().item())
    stats = comm.pop_step_stats()
    return {**diffs, **{k: float(v) for k, v in stats.items()}, "again": float(comm.pop_step_stats()["calls"])}


def _train(rank: int, ring_size: int | None) -> tuple[list[list[float]], dict[str, float], int]:
    """5 SGD steps of a small MLP under fully_shard (each Linear, then the root); ``ring_size`` None: torch's
    reduce-scatter. Returns the full parameters, the comm's stats and the input bytes FSDP reduce-scattered."""
    import torch
    import torch.distributed as dist
    import torch.nn as nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from deepseek.distributed.fsdp_comm import install_hierarchical_reduce_scatter
    from deepseek.distributed.topology import Topology

    world = dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 5), nn.ReLU(), nn.Linear(5, 3))
    padded = sum(-(-p.shape[0] // world) * world * p[0].numel() for p in model.parameters()) * 4
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    comm = install_hierarchical_reduce_scatter(model, Topology("ring", ring_size)) if ring_size else None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(10 + rank)  # each rank its own batch: the mean over ranks matters
    for _ in range(5):
        x, y = torch.randn(8, 6, generator=gen), torch.randn(8, 3, generator=gen)
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    params = [p.full_tensor().reshape(-1).tolist() for p in model.parameters()]
    stats = {k: float(v) for k, v in comm.pop_step_stats().items()} if comm else {}
    return params, stats, 5 * padded


def _bad_input(rank: int) -> list[str]:
    """The errors for a group other than the topology's and for an op it does not reduce with."""
    import torch
    import torch.distributed as dist
    from torch.distributed import ReduceOp

    from deepseek.distributed.fsdp_comm import HierarchicalReduceScatter
    from deepseek.distributed.topology import Topology

    comm = HierarchicalReduceScatter(Topology("hybrid", 1))
    sub = dist.new_group([0, 1])
    calls = [(dist.group.WORLD, ReduceOp.MAX)] + ([(sub, ReduceOp.SUM)] if rank < 2 else [])
    errors = []
    for group, op in calls:
        try:
            comm(torch.empty(1), torch.zeros(dist.get_world_size(group)), group, op)
            errors.append("no error")
        except ValueError as e:
            errors.append(str(e))
    return errors


def _worker(rank: int, ring_sizes: list[int]) -> dict:
    out: dict = {"raw": {}, "fsdp": {}}
    for r in ring_sizes:
        out["raw"][r] = _raw_checks(rank, r)
    base, _, _ = _train(rank, None)
    for r in ring_sizes:
        params, stats, nbytes = _train(rank, r)
        diff = max(abs(a - b) for pa, pb in zip(params, base) for a, b in zip(pa, pb))
        out["fsdp"][r] = {"diff": diff, "stats": stats, "nbytes": nbytes}
    import torch.distributed as dist

    if dist.get_world_size() == 4:
        out["bad_input"] = _bad_input(rank)
    return out


def _expected_bytes(nbytes: int, world: int, ring: int, rank: int) -> dict[str, int]:
    nodes, chunk = world // ring, nbytes // world
    flat = (world - 1) * chunk
    return {"bytes": (ring - 1) * nodes * chunk + (nodes - 1) * chunk, "bytes_inter": (nodes - 1) * chunk,
            "bytes_uncompressed": flat,
            "bytes_inter_uncompressed": flat if nodes > 1 and rank % ring == ring - 1 else 0}  # fmt: skip


def _check(results: dict, world: int, ring_sizes: list[int]) -> None:
    raw_bytes = sum(world * c * 4 for c in SIZES) * 3  # three ops per size
    for rank, out in results.items():
        for r in ring_sizes:
            raw = out["raw"][r]
            assert raw["SUM"] < 1e-5 and raw["AVG"] < 1e-5 and raw["PREMUL_SUM"] < 1e-5, (rank, r, raw)
            assert raw["calls"] == 3 * len(SIZES) and raw["again"] == 0 and raw["seconds"] > 0
            for key, want in _expected_bytes(raw_bytes, world, r, rank).items():
                assert raw[key] == want, (rank, r, key, raw[key], want)
            fsdp = out["fsdp"][r]
            assert fsdp["diff"] < 1e-6, (rank, r, fsdp["diff"])
            assert fsdp["stats"]["calls"] == 5 * 3  # three Linear modules, five steps; the root owns no parameter
            for key, want in _expected_bytes(fsdp["nbytes"], world, r, rank).items():
                assert fsdp["stats"][key] == want, (rank, r, key)
            assert fsdp["stats"]["bytes"] == fsdp["stats"]["bytes_uncompressed"]  # same total as a flat ring


def test_four_ranks_as_two_nodes_of_two() -> None:
    results = run_ranks(_worker, 4, [2], timeout_s=120)
    _check(results, 4, [2])
    for rank, out in results.items():
        assert out["bad_input"][0] == "op: RedOpType.MAX; allowed: SUM, AVG or PREMUL_SUM"
        assert len(out["bad_input"]) == (2 if rank < 2 else 1)
    for rank in (0, 1):
        assert results[rank]["bad_input"][1].startswith("group: ranks [0, 1] (size 2); allowed:"), results[rank]
    # the inter leg: half of the flat ring's chunks cross nodes, from every rank instead of each node's last one
    assert [results[r]["fsdp"][2]["stats"]["bytes_inter_uncompressed"] > 0 for r in range(4)] == [0, 1, 0, 1]


def test_two_ranks_degenerate_legs() -> None:
    """ring_size 2: one node of 2 (no inter leg); ring_size 1: two nodes of 1 (no intra leg)."""
    results = run_ranks(_worker, 2, [2, 1], timeout_s=120)
    _check(results, 2, [2, 1])
    assert all(results[r]["fsdp"][2]["stats"]["bytes_inter"] == 0 for r in (0, 1))
