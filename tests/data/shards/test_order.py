"""The global order of a shard set (pure functions): a permutation per epoch, rank- and worker-free."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from deepseek.data.shards.order import EpochOrder, resume_position, step_positions, steps_per_epoch

SIZES = [7, 5, 9, 3, 8, 6, 1]  # uneven shards, N = 39
FIRSTS = np.concatenate([[0], np.cumsum(SIZES)[:-1]]).tolist()
N = sum(SIZES)


def _order(seed: int = 0, epoch: int = 0, window: int = 3, shuffle: bool = True) -> np.ndarray:
    return EpochOrder(FIRSTS, SIZES, seed=seed, epoch=epoch, shuffle=shuffle, shuffle_window=window).indices(
        np.arange(N)
    )


@pytest.mark.parametrize("window", [1, 2, 3, 7, 10])
def test_each_epoch_is_a_permutation_of_all_samples(window: int) -> None:
    assert sorted(_order(window=window).tolist()) == list(range(N))


def test_order_depends_on_seed_and_epoch_only() -> None:
    base = _order(seed=1, epoch=2)
    assert np.array_equal(base, _order(seed=1, epoch=2))
    assert not np.array_equal(base, _order(seed=1, epoch=3))
    assert not np.array_equal(base, _order(seed=2, epoch=2))
    assert np.array_equal(_order(shuffle=False), np.arange(N))


def test_window_groups_keep_samples_of_their_shards_together() -> None:
    order = EpochOrder(FIRSTS, SIZES, seed=3, epoch=0, shuffle_window=2)
    got = order.indices(np.arange(N))
    position = 0
    for group in range(len(order.group_ends)):
        shards = order.group_shards(group)
        expected = {i for s in shards for i in range(FIRSTS[s], FIRSTS[s] + SIZES[s])}
        end = int(order.group_ends[group])
        assert set(got[position:end].tolist()) == expected
        position = end


def test_positions_map_the_same_in_any_chunking() -> None:
    order = EpochOrder(FIRSTS, SIZES, seed=5, epoch=1, shuffle_window=2)
    whole = order.indices(np.arange(N))
    pieces = np.concatenate([order.indices(np.arange(N)[i::4]) for i in range(4)])
    assert sorted(pieces.tolist()) == sorted(whole.tolist())
    assert [int(order.indices(np.array([p]))[0]) for p in range(N)] == whole.tolist()


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 4, 5])
def test_steps_cover_every_position_once_on_any_world(world: int, batch: int) -> None:
    steps = steps_per_epoch(N, batch, world)
    seen: list[int] = []
    for step in range(steps):
        per_rank = [step_positions(step, r, world, batch, N) for r in range(world)]
        assert all(len(p) <= batch for p in per_rank)
        seen += sorted(int(p) for ps in per_rank for p in ps)
    assert seen == list(range(N))  # the union of the ranks' s-th batches, in position order, is the epoch


def test_tail_smaller_than_world_gives_empty_batches_not_repeats() -> None:
    world, batch = 4, 3  # N = 39 = 3 * 12 + 3: the last step has 3 positions for 4 ranks
    last = steps_per_epoch(N, batch, world) - 1
    sizes = [len(step_positions(last, r, world, batch, N)) for r in range(world)]
    assert sizes == [1, 1, 1, 0]


def test_drop_last_drops_the_incomplete_global_step_on_every_rank() -> None:
    world, batch = 2, 5
    assert steps_per_epoch(N, batch, world, drop_last=True) == N // (batch * world)
    assert steps_per_epoch(N, batch, world, drop_last=False) == -(-N // (batch * world))


def test_resume_position_counts_in_the_saving_world() -> None:
    state = {"anchor_position": 10, "anchor_batches": 2, "batch_size": 3, "world_size": 2, "batches": 5}
    assert resume_position(state) == 10 + 3 * 3 * 2
    assert resume_position(state, samples=20) == 20
    with pytest.raises(ValueError, match="anchor_position"):
        resume_position({"batches": 1})


def test_a_billion_samples_never_materialise_an_epoch_sized_array() -> None:
    shards = 1000
    sizes = [1_000_000] * shards  # N = 10^9
    firsts = [i * 1_000_000 for i in range(shards)]
    tracemalloc.start()
    order = EpochOrder(firsts, sizes, seed=0, epoch=0, shuffle_window=2)
    got = order.indices(np.arange(10**9 - 50, 10**9))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(order) == 10**9 and len(set(got.tolist())) == 50
    assert peak < 64 * 2**20  # one group (2 shards of 10^6 int64 = 16 MB) at a time; the epoch would be 8 GB
