"""The alpha-beta cost model (issue 18): every formula against hand arithmetic, the limits p = 2 and p = 1,024,
hierarchical = ring at g = 1 and g = p, compression, the presets and the report's overlap logic."""

from __future__ import annotations

import json
import math

import pytest

from deepseek.distributed import cost
from deepseek.distributed.cost import Link, coefficients, predict

N = 1000.0
LINK = Link(alpha=1e-6, beta=1e-9, gamma=1e-10)


@pytest.mark.parametrize(("op", "p", "algorithm", "expected"), [
    ("all_reduce", 4, "ring", (2 * 3, 2 * 3 / 4 * N, 3 / 4 * N)),  # 6 alpha + 1500 beta + 750 gamma
    ("all_reduce", 2, "ring", (2, N, N / 2)),
    ("all_reduce", 8, "tree", (2 * 3, 2 * 3 * N, 3 * N)),  # log2 8 = 3 levels, down and up, whole buffer
    ("all_reduce", 5, "tree", (2 * 3, 2 * 3 * N, 3 * N)),  # ceil(log2 5) = 3
    ("all_reduce", 8, "recursive_doubling", (3, 3 * N, 3 * N)),
    ("all_reduce", 6, "recursive_doubling", (2 + 2, 4 * N, 4 * N)),  # floor(log2 6) = 2, +2 fold steps
    ("all_reduce", 8, "rabenseifner", (2 * 3, 2 * 7 / 8 * N, 7 / 8 * N)),
    ("reduce_scatter", 4, "ring", (3, 3 / 4 * N, 3 / 4 * N)),
    ("reduce_scatter", 8, "recursive_halving", (3, 7 / 8 * N, 7 / 8 * N)),
    ("all_gather", 4, "ring", (3, 3 / 4 * N, 0)),
    ("all_gather", 8, "recursive_doubling", (3, 7 / 8 * N, 0)),
    ("broadcast", 4, "ring", (3, N, 0)),
    ("broadcast", 8, "tree", (3, 3 * N, 0)),
    ("all_reduce", 1, "tree", (0, 0, 0)),
])  # fmt: skip
def test_coefficients_match_hand_arithmetic(op, p, algorithm, expected):
    assert coefficients(op, p, N, algorithm) == pytest.approx(expected)


def test_predict_dots_the_coefficients_with_the_link():
    # ring, p = 4, n = 1000: 6 x 1e-6 + 1500 x 1e-9 + 750 x 1e-10 = 7.575e-6 s
    assert predict("all_reduce", 4, N, LINK) == pytest.approx(7.575e-6)
    with pytest.raises(ValueError, match="op/algorithm: all_reduce/bogus; allowed"):
        coefficients("all_reduce", 4, N, "bogus")


def test_limits_and_monotonicity_from_2_to_1024_ranks():
    ps = [2**k for k in range(1, 11)]
    ring = [predict("all_reduce", p, 1e8, LINK) for p in ps]
    assert ring == sorted(ring)  # more ranks, more steps
    _, b2, _ = coefficients("all_reduce", 2, 1e8)
    _, b1024, _ = coefficients("all_reduce", 1024, 1e8)
    assert b2 == pytest.approx(1e8) and b1024 == pytest.approx(2 * 1023 / 1024 * 1e8) and b1024 < 2e8
    # latency-bound (8 bytes): the tree's 2 log2 p steps beat the ring's 2 (p - 1) for p > 2, and tie at p = 2
    assert coefficients("all_reduce", 2, 8, "tree")[0] == coefficients("all_reduce", 2, 8)[0] == 2
    assert predict("all_reduce", 1024, 8, LINK, "tree") < predict("all_reduce", 1024, 8, LINK) / 50
    # bandwidth-bound (1 GB): the ring wins by about log2 p
    assert predict("all_reduce", 1024, 1e9, LINK, "tree") > 9 * predict("all_reduce", 1024, 1e9, LINK)


INTRA = Link(alpha=2e-6, beta=1 / 300e9)
INTER = Link(alpha=5e-6, beta=1 / 25e9, gamma=1e-12)


def test_hierarchical_is_the_ring_at_g_1_and_g_p_and_the_three_phases_between():
    for p in (2, 16, 1024):
        ring_inter = predict("all_reduce", p, 1e7, INTER)
        assert cost.hierarchical_all_reduce(p, 1, 1e7, INTRA, INTER) == pytest.approx(ring_inter)
        assert cost.hierarchical_all_reduce(p, p, 1e7, INTRA, INTER) == pytest.approx(predict("all_reduce", p, 1e7, INTRA))
        assert cost.hierarchical_reduce_scatter(p, 1, 1e7, INTRA, INTER) == pytest.approx(
            predict("reduce_scatter", p, 1e7, INTER))
        assert cost.hierarchical_all_gather(p, p, 1e7, INTRA, INTER) == pytest.approx(predict("all_gather", p, 1e7, INTRA))
    # p = 16, g = 4, n = 4000: intra RS 3 a_i + 3000 b_i; intra AG the same; inter all-reduce of 1000 bytes on
    # 4 nodes: 6 a_e + 1500 b_e + 750 g_e
    hand = 2 * (3 * 2e-6 + 3000 / 300e9) + 6 * 5e-6 + 1500 / 25e9 + 750 * 1e-12
    assert cost.hierarchical_all_reduce(16, 4, 4000, INTRA, INTER) == pytest.approx(hand)
    # bf16 on the network only: the inter all-reduce carries 500 bytes, the intra phases keep 4000
    hand_bf16 = 2 * (3 * 2e-6 + 3000 / 300e9) + 6 * 5e-6 + 750 / 25e9 + 375 * 1e-12
    assert cost.hierarchical_all_reduce(16, 4, 4000, INTRA, INTER, inter_ratio=0.5) == pytest.approx(hand_bf16)
    with pytest.raises(ValueError, match="ranks per node g: 3 for p=16"):
        cost.hierarchical_all_reduce(16, 3, 4000, INTRA, INTER)


def test_powersgd_bytes_follow_torchs_hook():
    # (64, 32): (64 + 32) x 4 x 2 = 768 < 2048 -> P 64x4, Q 32x4; (10,) stays whole; (4, 3, 3, 3) is a 4 x 27
    # matrix: (4 + 27) x 4 x 2 = 248 >= 108 -> stays whole (108 elements). x 4 bytes.
    assert cost.powersgd_bytes([(64, 32), (10,), (4, 3, 3, 3)], rank=4) == (256 * 4, 128 * 4, (10 + 108) * 4)
    with pytest.raises(ValueError, match="powersgd rank: 0"):
        cost.powersgd_bytes([(4, 4)], 0)


def test_presets_links_and_flat_bottlenecks():
    dgx, one_nic = cost.preset("dgx-a100"), cost.preset("a100-hdr-1nic")
    assert all(cost.preset(name).source for name in cost.CLUSTERS)
    assert dgx.intra.beta == pytest.approx(1 / 300e9) and dgx.nic.beta == pytest.approx(1 / 25e9)
    assert dgx.inter.beta == pytest.approx(1 / 25e9)  # one NIC per GPU
    assert one_nic.inter.beta == pytest.approx(8 / 25e9)  # 8 GPUs share one 25 GB/s port
    assert dgx.flat_link(8).beta == dgx.intra.beta  # one node: NVLink only
    assert dgx.flat_link(16).beta == pytest.approx(1 / 200e9)  # 8 rings, one per 25 GB/s NIC: the node's 200 GB/s
    assert dgx.flat_link(16, "tree").beta == pytest.approx(1 / 25e9)
    # bf16 everywhere = the ring on half the bytes
    assert cost.collective_time(dgx, "all_reduce", 64, 1e8, inter_ratio=0.5) == pytest.approx(
        cost.collective_time(dgx, "all_reduce", 64, 5e7))
    with pytest.raises(ValueError, match="ranks per node g: 8 for p=12"):
        dgx.ranks_per_node(12)
    with pytest.raises(ValueError, match="interconnect: 'infiniband'; allowed: dgx-a100"):
        cost.preset("infiniband")


def test_cluster_from_spec_reads_local_constants_and_the_bench_json(tmp_path):
    local = cost.cluster_from_spec("local:1e-5,2e-9")
    assert local.gpus_per_node == 1 and local.intra == Link(1e-5, 2e-9, 0.0)
    # g = 1: hierarchical and flat ring are the same on this machine's one link class
    assert cost.collective_time(local, "all_reduce", 4, 1e6, hierarchical=True) == pytest.approx(
        predict("all_reduce", 4, 1e6, Link(1e-5, 2e-9)))
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"alpha": 3e-5, "beta": 1e-9, "gamma": 5e-10, "world": 2, "backend": "gloo"}))
    for spec in (str(path), f"local:{path}"):
        assert cost.cluster_from_spec(spec).nic == Link(3e-5, 1e-9, 5e-10)
    (tmp_path / "bad.json").write_text(json.dumps({"world": 1}))
    for spec in ("local:1e-5", "local:a,b", str(tmp_path / "bad.json")):
        with pytest.raises(ValueError, match="interconnect"):
            cost.cluster_from_spec(spec)
    with pytest.raises(ValueError, match="beta: -1.0"):
        cost.cluster_from_spec("local:1e-5,-1")


def test_overlap_runs_buckets_one_after_another_as_gradients_become_ready():
    sizes = [1, 1, 1]  # ready at 0.1, 0.2, 0.3 s of a 0.3 s backward
    # each 0.1 s: done at 0.2, 0.3, 0.4 -> only the last bucket's 0.1 s is exposed
    assert cost.overlap([0.1, 0.1, 0.1], sizes, 0.3) == pytest.approx(0.1)
    # each 0.3 s: done at 0.4, 0.7, 1.0 -> 0.7 s exposed
    assert cost.overlap([0.3, 0.3, 0.3], sizes, 0.3) == pytest.approx(0.7)
    assert cost.overlap([0.3, 0.3, 0.3], sizes, 0.0) == pytest.approx(0.9)  # no backward to hide behind
    mib = 2**20
    assert cost.ddp_buckets(60 * mib) == [mib, 25 * mib, 25 * mib, 9 * mib]


def test_comm_report_shares_and_hiding():
    dgx = cost.preset("dgx-a100")
    grad = 400 * 2**20
    rows = {r.mode: r for r in cost.comm_report(grad, 16, dgx, compute_s=1.0, shapes=[(grad // 4 // 1024, 1024)])}
    assert list(rows) == list(cost.MODES)
    sizes = cost.ddp_buckets(grad)
    ring = rows["ring"]
    assert ring.comm_s == pytest.approx(sum(cost.collective_time(dgx, "all_reduce", 16, s) for s in sizes))
    assert ring.share == pytest.approx(ring.comm_s / (1.0 + ring.comm_s))
    assert ring.hidden and ring.step_s == pytest.approx(1.0 + ring.exposed_s)  # 4 ms of comm under 0.67 s backward
    assert 0 < ring.exposed_s <= cost.HIDDEN_TOLERANCE * 1.0  # the last bucket follows the backward pass
    # on NVLink + 8 HDR ports: ring = 17 buckets x 30 steps x 4 us (2.04 ms) + 2 x 15/16 x 400 MiB / 200 GB/s
    # (3.93 ms); PowerSGD's two all-reduces per bucket (P, Q; no 1-D tensors here) cost 4.08 ms of latency alone,
    # more than bf16 (2.04 + 1.97 ms); on one 100 GbE port per node the bytes dominate and PowerSGD wins
    assert ring.comm_s == pytest.approx(17 * 30 * 4e-6 + 2 * 15 / 16 * grad / 200e9)
    assert rows["bf16"].comm_s < rows["powersgd"].comm_s < ring.comm_s
    slow = {r.mode: r for r in cost.comm_report(grad, 16, cost.preset("pcie4-roce100"), 1.0,
                                                 shapes=[(grad // 4 // 1024, 1024)])}  # fmt: skip
    assert slow["powersgd"].comm_s < slow["bf16"].comm_s < slow["ring"].comm_s
    assert slow["bf16"].comm_s == pytest.approx(slow["ring"].comm_s / 2, rel=0.05)  # bandwidth-bound: half
    # a backward too short to hide it: more than the last bucket is exposed
    short = {r.mode: r for r in cost.comm_report(grad, 16, dgx, compute_s=1e-3)}
    assert not short["ring"].hidden and short["ring"].exposed_s > short["ring"].comm_s - 1e-3
    assert "powersgd" not in short  # no shapes, no PowerSGD row
    with pytest.raises(ValueError, match="mode: 'gossip'"):
        cost.comm_report(grad, 16, dgx, 1.0, modes=("gossip",))
    assert math.isclose(cost.comm_report(0, 16, dgx, 1.0, modes=("ring",))[0].comm_s, 0.0)
