"""The alpha-beta fit recovers known constants from synthetic timings; the benchmark's size parsing and bus factors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from deepseek.distributed.bench import bus_factor, parse_ops, parse_sizes
from deepseek.distributed.cost import Link, predict
from deepseek.distributed.fit import fit_link, nnls

TRUE = Link(alpha=30e-6, beta=1 / 2.5e9, gamma=1 / 6e9)
SIZES = [2**k for k in range(10, 27)]  # 1 KiB .. 64 MiB


def _samples(ops, ps, noise, seed=0):
    rng = np.random.default_rng(seed)
    rows = [(op, p, n) for op in ops for p in ps for n in SIZES]
    seconds = [predict(op, p, n, TRUE) * (1 + noise * rng.standard_normal()) for op, p, n in rows]
    return [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], seconds


def test_fit_recovers_alpha_beta_gamma_from_noisy_timings_at_several_world_sizes():
    ops, ps, sizes, seconds = _samples(["all_reduce", "all_gather", "reduce_scatter"], [2, 4, 8], noise=0.03)
    fit = fit_link(ops, ps, sizes, seconds)
    assert fit.gamma_identified
    assert fit.link.alpha == pytest.approx(TRUE.alpha, rel=0.05)
    assert fit.link.beta == pytest.approx(TRUE.beta, rel=0.05)
    assert fit.link.gamma == pytest.approx(TRUE.gamma, rel=0.10)
    assert 0.01 < fit.rms_rel_error() < 0.06  # about the 3% noise put in
    assert fit.max_rel_error(65536) < 0.15
    assert len(fit.rel_errors) == len(sizes)


def test_exact_timings_fit_exactly_and_the_errors_are_relative_to_the_measurement():
    fit = fit_link("all_gather", 4, SIZES, [predict("all_gather", 4, n, TRUE) for n in SIZES])
    assert fit.link.alpha == pytest.approx(TRUE.alpha, rel=1e-6)
    assert fit.link.beta == pytest.approx(TRUE.beta, rel=1e-6)
    assert fit.link.gamma == 0.0 and not fit.gamma_identified  # no reduction in an all-gather
    assert fit.max_rel_error(0) < 1e-6
    doubled = fit_link("all_gather", 4, SIZES[:2] + SIZES[-2:], [1e-3, 1e-3, 1.0, 1.0])
    assert doubled.rel_errors == pytest.approx([p / t - 1 for p, t in zip(doubled.predicted, doubled.seconds)])
    assert math.isnan(doubled.max_rel_error(2**40))  # no sample that large


def test_all_reduce_alone_cannot_separate_gamma_from_beta_so_beta_carries_both():
    fit = fit_link("all_reduce", [2, 4, 8] * 3, SIZES[:9], [predict("all_reduce", p, n, TRUE)
                                                            for p, n in zip([2, 4, 8] * 3, SIZES[:9])])  # fmt: skip
    assert not fit.gamma_identified and fit.link.gamma == 0.0
    assert fit.link.beta == pytest.approx(TRUE.beta + TRUE.gamma / 2, rel=1e-6)  # b = 2c for a ring all-reduce
    assert fit.max_rel_error(0) < 1e-6


def test_constants_stay_non_negative_when_the_timings_fall_with_size():
    fit = fit_link("broadcast", 2, [1024, 2048, 4096], [3e-3, 2e-3, 1e-3])
    assert fit.link.alpha >= 0 and fit.link.beta >= 0 and fit.link.gamma == 0
    x = nnls(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([1.0, -2.0]))
    assert x.tolist() == [1.0, 0.0]


def test_bad_samples_are_one_line_value_errors():
    with pytest.raises(ValueError, match=r"^seconds: .*positive finite"):
        fit_link("all_reduce", 2, [1024, 2048], [1e-3, 0.0])
    with pytest.raises(ValueError, match=r"^p: 1; .*2 ranks"):
        fit_link("all_reduce", 1, [1024], [1e-3])
    with pytest.raises(ValueError, match=r"^op: 3 values for 2 samples"):
        fit_link(["all_reduce"] * 3, 2, [1024, 2048], [1e-3, 2e-3])
    with pytest.raises(ValueError, match=r"^op/algorithm: gather/ring"):
        fit_link("gather", 2, [1024], [1e-3])


def test_parse_sizes_doubles_a_range_and_takes_lists_with_binary_units():
    assert parse_sizes("1K..8K") == [1024, 2048, 4096, 8192]
    assert parse_sizes("1K..256M")[-1] == 256 * 2**20 and len(parse_sizes("1K..256M")) == 19
    assert parse_sizes("512,4K,1M,1G") == [512, 4096, 2**20, 2**30]
    assert parse_sizes("3K..7K") == [3072, 6144]  # doubling stops at the last size or below


@pytest.mark.parametrize(
    "text, message",
    [("1K..2Q", "'2Q' is not a size"), ("8K..1K", "larger than the last"), ("", "no size given"),
     ("0", "out of range"), ("32G", "out of range"), ("1K,,x", "'x' is not a size")],
)  # fmt: skip
def test_bad_sizes_name_the_option_the_value_and_what_is_allowed(text, message):
    with pytest.raises(ValueError, match=r"^--sizes ") as err:
        parse_sizes(text)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_parse_ops_checks_names():
    assert parse_ops("all") == ["all_reduce", "reduce_scatter", "all_gather", "broadcast", "all_to_all"]
    assert parse_ops("all_gather, broadcast") == ["all_gather", "broadcast"]
    with pytest.raises(ValueError, match=r"^--ops 'all_reduce,gather': unknown op gather; allowed: all or"):
        parse_ops("all_reduce,gather")


def test_bus_factors_are_nccl_tests_ones():
    assert bus_factor("all_reduce", 4) == pytest.approx(1.5)
    assert bus_factor("all_reduce", 2) == pytest.approx(1.0)
    assert bus_factor("reduce_scatter", 4) == bus_factor("all_gather", 4) == bus_factor("all_to_all", 4) == 0.75
    assert bus_factor("broadcast", 8) == 1.0
    with pytest.raises(ValueError, match="^op: 'gather'"):
        bus_factor("gather", 2)


def _bench_worker(rank: int) -> list:
    from deepseek.distributed.bench import OPS, run_bench

    rows = run_bench(OPS, [1000, 4096], iters=3, warmup=1, budget_s=0.01)
    return [[r.op, r.nbytes, r.count, r.world, r.iters, r.time_s, r.algbw, r.busbw] for r in rows]


@pytest.mark.distributed
def test_run_bench_on_three_gloo_ranks_agrees_across_ranks_and_splits_buffers_evenly():
    from tests.gloo_ranks import run_ranks

    results = run_ranks(_bench_worker, 3, timeout_s=120)
    assert results[0] == results[1] == results[2]  # the max over ranks, the same iteration counts
    rows = {(r[0], r[1]): r for r in results[0]}
    assert len(results[0]) == 10
    assert rows[("all_gather", 996)][2] == 249  # 250 floats rounded down to a multiple of 3 ranks
    assert rows[("all_reduce", 1000)][2] == 250
    for op, nbytes, _, world, iters, seconds, algbw, busbw in results[0]:
        assert world == 3 and 1 <= iters <= 3 and seconds > 0
        assert algbw == pytest.approx(nbytes / seconds) and busbw == pytest.approx(algbw * bus_factor(op, 3))
