"""ShardedSampler / ResumableDataLoader: disjoint rank shards, per-epoch shuffles, exact mid-epoch skip."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from deepseek.data import ResumableDataLoader, ShardedSampler, build_dataset


def test_ranks_cover_the_epoch_without_overlap():
    shards = [list(ShardedSampler(10, seed=1, rank=r, world_size=2, pad=False)) for r in (0, 1)]
    assert not set(shards[0]) & set(shards[1]) and sorted(shards[0] + shards[1]) == list(range(10))


def test_rank_batches_union_is_the_single_process_batch():
    one = list(ShardedSampler(64, seed=3))
    ranks = [list(ShardedSampler(64, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    for s in range(4):  # batch 8 a rank == batch 16 in one process
        assert sorted(ranks[0][8 * s : 8 * s + 8] + ranks[1][8 * s : 8 * s + 8]) == sorted(one[16 * s : 16 * s + 16])


def test_epochs_reshuffle_and_skip_resumes_mid_epoch():
    ds = TensorDataset(torch.arange(50))
    loader = ResumableDataLoader(ds, 8, seed=0)
    loader.set_epoch(1)
    full = [b[0].tolist() for b in loader]
    loader.set_epoch(2)
    assert [b[0].tolist() for b in loader] != full
    resumed = ResumableDataLoader(ds, 8, seed=0)
    resumed.load_state_dict({"epoch": 1, "batches": 3})
    resumed.set_epoch(1)  # what the Trainer calls first: the same epoch keeps the skip
    assert [b[0].tolist() for b in resumed] == full[3:]
    assert [b[0].tolist() for b in resumed] == full  # the skip applies once


def test_digits_split_is_stratified_and_seeded():
    a, b = build_dataset("digits"), build_dataset("digits")
    assert len(a.train) == 1437 and len(a.val) == 360 and a.input_shape == (1, 8, 8)
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])
    counts = torch.bincount(a.val.tensors[1], minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37


def test_a_skip_to_the_end_of_the_epoch_yields_nothing():
    loader = ResumableDataLoader(TensorDataset(torch.arange(20)), 8)
    loader.load_state_dict({"epoch": 0, "batches": 3})
    assert len(loader) == 0 and list(loader) == []
