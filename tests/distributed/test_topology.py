"""Topology: every mode's all-reduce equals a flat all-reduce (2 and 4 gloo ranks), node mapping, byte accounting."""

from __future__ import annotations

import os

import pytest
import torch.distributed as dist

from deepseek.distributed.topology import Topology, tree_fanout
from tests.gloo_ranks import run_ranks

SIZES = (1, 7, 33, 1001)  # odd sizes, most not divisible by ring_size


def _compare_modes(rank: int, configs: list[tuple[str, int, int]]) -> dict:
    import torch

    out: dict = {"diff": {}, "layout": {}, "bytes": {}}
    for mode, ring_size, depth in configs:
        topo = Topology(mode, ring_size, depth).setup()
        worst = 0.0
        for n in SIZES:
            gen = torch.Generator().manual_seed(1000 * rank + n)
            x = torch.randn(n, generator=gen) * 10
            flat = x.clone()
            dist.all_reduce(flat)
            mine = topo.all_reduce(x.clone().view(1, n))
            worst = max(worst, float((mine.view(-1) - flat).abs().max() / flat.abs().max()))
        key = f"{mode}/{ring_size}/{depth}"
        out["diff"][key] = worst
        out["layout"][key] = [topo.nodes, topo.node, topo.local_rank, topo.fanout]
        out["bytes"][key] = topo.bytes_sent(4000)
    os.environ["LOCAL_WORLD_SIZE"] = "1"  # this spawned rank's own environment: one rank per node
    out["from_env"] = Topology("tree").nodes
    try:
        Topology("hybrid", 3)
    except ValueError as err:
        out["error"] = str(err)
    return out


FOUR = [("ring", 2, 1), ("tree", 2, 1), ("tree", 2, 2), ("hybrid", 2, 1), ("hybrid", 2, 2), ("tree", 1, 2),
        ("hybrid", 1, 2), ("hybrid", 4, 1)]


@pytest.mark.distributed
@pytest.mark.slow
def test_four_ranks_as_two_nodes_of_two_match_flat_all_reduce() -> None:
    results = run_ranks(_compare_modes, 4, FOUR, timeout_s=120)
    for rank, res in results.items():
        for key, diff in res["diff"].items():
            assert diff < 1e-6, (rank, key, diff)
        assert res["layout"]["hybrid/2/1"] == [2, rank // 2, rank % 2, 1]
        assert res["layout"]["tree/1/2"] == [4, rank, 0, 2]  # 4 nodes need a binary tree of depth 2
        assert res["error"] == ("ring_size: 3 with a world of 4; allowed: a positive divisor of 4 (ranks per node)")
    b = {rank: res["bytes"] for rank, res in results.items()}
    # flat ring: 2 (p-1)/p n; a node's last rank sends to the next node
    assert [b[r]["ring/2/1"] for r in range(4)] == [{"intra": 6000, "inter": 0}, {"intra": 0, "inter": 6000}] * 2
    # tree: non-leaders send n to the leader; leaders broadcast n to 1 peer; node 0 sends n down, node 1 n up
    assert [b[r]["tree/2/1"] for r in range(4)] == [{"intra": 4000, "inter": 4000}, {"intra": 4000, "inter": 0}] * 2
    # hybrid: reduce-scatter + all-gather (r-1) s each on shard s = n/2; each rank sends its shard across once
    assert all(b[r]["hybrid/2/1"] == {"intra": 4000, "inter": 2000} for r in range(4))
    # 4 nodes of 1 in a binary tree: node 0 has children 1, 2; node 1 has child 3
    assert [b[r]["hybrid/1/2"]["inter"] for r in range(4)] == [8000, 8000, 4000, 4000]


@pytest.mark.distributed
def test_two_ranks_match_flat_all_reduce() -> None:
    configs = [("ring", 1, 1), ("tree", 1, 1), ("hybrid", 1, 1), ("tree", 2, 1), ("hybrid", 2, 3)]
    for rank, res in run_ranks(_compare_modes, 2, configs, timeout_s=60).items():
        assert max(res["diff"].values()) < 1e-6, (rank, res["diff"])
        assert res["from_env"] == 2


def test_tree_fanout_is_the_smallest_that_holds_the_nodes() -> None:
    assert [tree_fanout(n, 1) for n in (1, 2, 5, 9)] == [1, 1, 4, 8]
    assert [tree_fanout(n, 2) for n in (2, 3, 4, 7, 8, 13, 14)] == [1, 1, 2, 2, 3, 3, 4]
    assert tree_fanout(1024, 3) == 10  # 1 + 10 + 100 + 1000 >= 1024 > 1 + 9 + 81 + 729


def test_bad_mode_and_depth_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"^mode: 'mesh'; allowed: ring, tree, hybrid$"):
        Topology("mesh")
    with pytest.raises(ValueError, match=r"^tree_depth: 0; allowed: an integer >= 1$"):
        Topology("tree", 2, 0)
