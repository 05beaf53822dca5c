"""Exact mid-epoch resume at another world size with real processes on gloo: 2 ranks read k steps and save the
loader state; 4 ranks (and 1) resume from it; together they read the epoch, each sample once."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import Any

import pytest

from tests.data.shards.shard_sets import write_set
from tests.gloo_ranks import run_ranks

N, PER_SHARD, BATCH, STEPS = 53, 6, 3, 2


def _loader(path: str, workers: int) -> Any:
    import torch.distributed as dist

    from deepseek.data.shards.reader import open_shards
    from deepseek.data.shards.stream import StreamingLoader

    loader = StreamingLoader(
        open_shards(path), BATCH, rank=dist.get_rank(), world_size=dist.get_world_size(), num_workers=workers, seed=3
    )
    loader.set_epoch(2)
    return loader


def _first_steps(rank: int, path: str) -> tuple[list[int], dict, int]:
    loader = _loader(path, workers=0)
    seen = [i for batch in islice(loader, STEPS) for i in batch[1].tolist()]
    return seen, {**loader.state_dict(), "batches": STEPS}, len(loader)  # what a Trainer checkpoint holds


def _resume(rank: int, path: str, state: dict, workers: int) -> tuple[list[int], int, int]:
    import torch.distributed as dist

    loader = _loader(path, workers)
    loader.load_state_dict(state)
    expected = len(loader)
    batches = [batch[1].tolist() for batch in loader]
    counts = [None] * dist.get_world_size()
    dist.all_gather_object(counts, len(batches))  # every rank takes the same number of steps (DDP needs it)
    assert len(set(counts)) == 1, counts
    return [i for b in batches for i in b], len(batches), expected


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_resumed_on_four_and_on_one_read_the_rest_of_the_epoch(tmp_path: Path) -> None:
    path = str(write_set(tmp_path / "set", N, PER_SHARD))
    first = run_ranks(_first_steps, 2, path, timeout_s=120)
    states = [state for _, state, _ in first.values()]
    assert all(state == states[0] for state in states)  # any rank's state serves
    before = [i for seen, _, _ in first.values() for i in seen]
    assert len(before) == 2 * STEPS * BATCH
    for new_world, workers in ((4, 0), (1, 2)):
        rest = run_ranks(_resume, new_world, path, states[0], workers, timeout_s=120)
        after = [i for seen, _, _ in rest.values() for i in seen]
        assert all(got == expected for _, got, expected in rest.values())  # __len__ told the truth
        assert sorted(before + after) == list(range(N)), new_world  # the epoch, each sample exactly once
