"""StreamingLoader: one global order whatever the ranks and workers, each sample once, exact resume at a new
world size (in-process ranks), corrupt and missing shards."""

from __future__ import annotations

import shutil
from itertools import islice
from pathlib import Path

import pytest
import torch
from torch.utils.data import default_collate

from deepseek.data.shards.format import sha256_file as _sha
from deepseek.data.shards.reader import open_shards
from deepseek.data.shards.storage import CorruptShardError
from deepseek.data.shards.stream import StreamingLoader
from deepseek.data.transforms import Pipeline
from tests.data.shards.shard_sets import labels, tiny_dataset, write_set

N, PER_SHARD = 39, 5  # 8 shards, the last one short


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_set(tmp_path_factory.mktemp("shards") / "set", N, PER_SHARD)


def _loader(path: Path, batch: int, rank: int = 0, world: int = 1, **kw: object) -> StreamingLoader:
    return StreamingLoader(open_shards(path), batch, rank=rank, world_size=world, shuffle_window=2, **kw)


def _rank_batches(path: Path, batch: int, world: int, epoch: int = 0, **kw: object) -> list[list[list[int]]]:
    out = []
    for rank in range(world):
        loader = _loader(path, batch, rank, world, **kw)
        loader.set_epoch(epoch)
        out.append([labels(b) for b in loader])
    return out


def _interleave(per_rank: list[list[list[int]]], world: int, batch: int, start: int = 0) -> list[int]:
    """The global sequence from the ranks' batches: rank r's j-th sample of step s sits at s*B*W + r + j*W."""
    slots: dict[int, int] = {}
    for rank, batches in enumerate(per_rank):
        for step, items in enumerate(batches):
            for j, index in enumerate(items):
                position = start + step * batch * world + rank + j * world
                assert position not in slots
                slots[position] = index
    return [slots[p] for p in sorted(slots)]


def _reference(path: Path, epoch: int = 0, **kw: object) -> list[int]:
    return [i for b in _rank_batches(path, 1, 1, epoch, **kw)[0] for i in b]


def test_one_process_reads_every_sample_once_and_reshuffles_per_epoch_and_seed(shard_dir: Path) -> None:
    first = _reference(shard_dir)
    assert sorted(first) == list(range(N))
    assert first != _reference(shard_dir, epoch=1)
    assert first != _reference(shard_dir, seed=7)
    assert _reference(shard_dir, shuffle=False) == list(range(N))


@pytest.mark.parametrize("world", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [4, 5])
def test_any_world_reads_the_same_global_sequence(shard_dir: Path, world: int, batch: int) -> None:
    per_rank = _rank_batches(shard_dir, batch, world)
    assert len({len(b) for b in per_rank}) == 1  # every rank has the same number of batches ...
    assert {len(_loader(shard_dir, batch, r, world)) for r in range(world)} == {len(per_rank[0])}  # ... and len
    assert _interleave(per_rank, world, batch) == _reference(shard_dir)  # no sample lost or repeated


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on a 2-core machine
@pytest.mark.parametrize(("world", "workers"), [(1, 3), (3, 2), (4, 1)])  # each worker count, each world
def test_workers_do_not_change_the_sequence(shard_dir: Path, world: int, workers: int) -> None:
    per_rank = _rank_batches(shard_dir, 4, world, num_workers=workers)
    assert _interleave(per_rank, world, 4) == _reference(shard_dir)


def test_tail_smaller_than_the_world_gives_an_empty_batch_with_the_structure(shard_dir: Path) -> None:
    per_rank = _rank_batches(shard_dir, 3, 4)  # 39 = 12 * 3 + 3: the last step has 3 samples for 4 ranks
    assert [len(b[-1]) for b in per_rank] == [1, 1, 1, 0]
    last = list(_loader(shard_dir, 3, rank=3, world=4))[-1]
    assert last[0].shape == (0, 3) and last[1].shape == (0,)


def test_drop_last_drops_the_same_positions_on_every_rank(shard_dir: Path) -> None:
    per_rank = _rank_batches(shard_dir, 4, 3, drop_last=True)  # 39 // 12 = 3 full steps
    assert [len(b) for b in per_rank] == [3, 3, 3] and all(len(x) == 4 for b in per_rank for x in b)
    assert _interleave(per_rank, 3, 4) == _reference(shard_dir)[:36]


def test_batches_equal_default_collate_of_the_samples(shard_dir: Path) -> None:
    data = tiny_dataset(N)
    for batch in _loader(shard_dir, 4, world=2, rank=1):
        expected = default_collate([data[i] for i in labels(batch)])
        assert all(torch.equal(a, b) for a, b in zip(batch, expected))


def test_a_collate_function_and_a_pipeline_get_the_samples(shard_dir: Path) -> None:
    seen = []
    batches = list(_loader(shard_dir, 4, collate_fn=lambda s: seen.extend(int(y) for _, y in s) or len(s)))
    assert sum(batches) == N and sorted(seen) == list(range(N))
    piped = [labels(b) for b in _loader(shard_dir, 4, collate_fn=Pipeline([]))]
    assert [i for b in piped for i in b] == _reference(shard_dir)


@pytest.mark.parametrize(("old", "new", "done", "workers"), [(2, 4, 2, 0), (4, 2, 1, 2), (3, 1, 2, 0), (2, 3, 3, 2)])
def test_resume_at_another_world_size_reads_the_rest_of_the_epoch(
    shard_dir: Path, old: int, new: int, done: int, workers: int
) -> None:
    before, state = [], {}
    for rank in range(old):
        loader = _loader(shard_dir, 4, rank, old, num_workers=workers)
        loader.set_epoch(1)
        before += [i for b in islice(loader, done) for i in labels(b)]
        state = {**loader.state_dict(), "batches": done}  # what the Trainer saves and passes back
    after = []
    lengths = set()
    for rank in range(new):
        loader = _loader(shard_dir, 4, rank, new, num_workers=workers)
        loader.set_epoch(1)
        loader.load_state_dict(state)
        lengths.add(len(loader))
        per_rank = [labels(b) for b in loader]
        assert len(per_rank) in lengths
        after += [i for b in per_rank for i in b]
    assert len(lengths) == 1
    assert sorted(before + after) == list(range(N))  # together the epoch, each sample once


def test_resume_twice_counts_batches_from_each_anchor(shard_dir: Path) -> None:
    seen = []
    state: dict = {}
    for world, steps in ((2, 1), (3, 1), (1, None)):
        batches = state.get("batches", 0)
        for rank in range(world):
            loader = _loader(shard_dir, 2, rank, world)
            if state:
                loader.load_state_dict(state)
            seen += [i for b in islice(loader, steps) for i in labels(b)]
            state_now = {**loader.state_dict(), "batches": batches + (steps or 0)}
        state = state_now
    assert sorted(seen) == list(range(N))


def _copy(shard_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(shard_dir, target)
    return target


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_flipped_byte_fails_the_epoch_naming_the_shard(shard_dir: Path, tmp_path: Path) -> None:
    target = _copy(shard_dir, tmp_path)
    _flip_byte(target / "shard-00003.arrow")
    loader = StreamingLoader(open_shards(target), 4)
    with pytest.raises(CorruptShardError, match=r"shard 'shard-00003.arrow' of '.*copy': sha256 mismatch \(expected"):
        list(loader)


def test_a_missing_shard_is_named_when_the_set_opens(shard_dir: Path, tmp_path: Path) -> None:
    target = _copy(shard_dir, tmp_path)
    (target / "shard-00005.arrow").unlink()
    with pytest.raises(CorruptShardError, match=r"shard 'shard-00005.arrow' of '.*copy': missing"):
        open_shards(target)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_skip_mode_warns_and_every_rank_leaves_the_same_samples_out(tmp_path: Path, compression: str | None) -> None:
    target = write_set(tmp_path / "set", N, PER_SHARD, compression=compression)
    suffix = ".arrow.zst" if compression else ".arrow"
    _flip_byte(target / f"shard-00003{suffix}")
    (target / f"shard-00006{suffix}").unlink()
    per_rank = []
    for rank in range(2):
        with pytest.warns(UserWarning) as warned:
            shards = open_shards(target, on_corrupt="skip", cache_dir=tmp_path / "cache")
        assert [str(w.message).split("': ")[-1] for w in warned] == [
            f"sha256 mismatch (expected {shards.index.shards[3].sha256}, got {_sha(target / f'shard-00003{suffix}')}); "
            "skipping its 5 samples",
            "missing; skipping its 5 samples",
        ]
        assert f"shard 'shard-00003{suffix}' of '{target}'" in str(warned[0].message)
        loader = StreamingLoader(shards, 4, rank=rank, world_size=2)
        per_rank.append([labels(b) for b in loader])
        assert len(loader) == len(per_rank[0])
    lost = set(range(15, 20)) | set(range(30, 35))
    assert sorted(_interleave(per_rank, 2, 4)) == sorted(set(range(N)) - lost)


def test_a_bad_cached_copy_is_fetched_again(tmp_path: Path) -> None:
    from deepseek.data.shards import storage

    target = write_set(tmp_path / "set", N, PER_SHARD, compression="zstd")  # zstd: read through the cache
    expected = [labels(b) for b in StreamingLoader(open_shards(target, cache_dir=tmp_path / "cache"), 4)]
    cached = sorted((tmp_path / "cache").glob("*shard-00002.arrow"))
    assert len(cached) == 1
    _flip_byte(cached[0])
    storage._VERIFIED.clear()  # as in a new process: each cached shard is checked on its first open
    again = open_shards(target, cache_dir=tmp_path / "cache")
    assert [labels(b) for b in StreamingLoader(again, 4)] == expected
    assert again.storage.fetches == 1  # only the bad copy was fetched again


def test_splits_read_back_with_their_metadata_and_a_single_set_is_train(shard_dir: Path, tmp_path: Path) -> None:
    from deepseek.data.datasets import DatasetSplits
    from deepseek.data.shards.reader import open_shard_splits
    from deepseek.data.shards.writer import write_splits

    splits = DatasetSplits(tiny_dataset(20), tiny_dataset(7), num_classes=20, input_shape=(3,), info={"k": 1})
    write_splits(splits, tmp_path / "splits", shard_size=5 * 20)
    back = open_shard_splits(tmp_path / "splits")
    assert (len(back.train), len(back.val), back.num_classes, back.input_shape) == (20, 7, 20, (3,))
    assert back.info == {"k": 1} and torch.equal(back.val[6][0], tiny_dataset(7)[6][0])
    single = open_shard_splits(shard_dir)
    assert len(single.train) == N and single.val is None and single.input_shape == (3,)


def _fetch_shard_zero(path: str, cache: str, out: object) -> None:
    shards = open_shards(path, cache_dir=cache)
    shards.storage.local_path(0)
    out.put(shards.storage.fetches)  # type: ignore[attr-defined]


def _waits_on(lock_file: Path, pid: int) -> bool:
    """Whether process ``pid`` is blocked on an flock of ``lock_file`` (a ``->`` line in /proc/locks)."""
    inode = f":{lock_file.stat().st_ino} "
    return any(
        "->" in line and f" {pid} " in line and inode in line for line in Path("/proc/locks").read_text().splitlines()
    )


@pytest.mark.distributed
def test_a_process_finds_the_shard_another_process_is_fetching(tmp_path: Path) -> None:
    import fcntl
    import multiprocessing

    from tests import process_tree

    target = write_set(tmp_path / "set", N, PER_SHARD, compression="zstd")
    elsewhere = open_shards(target, cache_dir=tmp_path / "other")
    ready = elsewhere.storage.local_path(0)  # the decompressed shard, fetched into another cache
    cache = tmp_path / "cache"
    final = cache / ready.name
    cache.mkdir()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    with open(final.with_name(final.name + ".lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # this process is "fetching" shard 0
        child = ctx.Process(target=_fetch_shard_zero, args=(str(target), str(cache), out))
        child.start()
        try:
            assert process_tree.poll(lambda: _waits_on(Path(lock.name), child.pid), timeout=60)
            shutil.copy(ready, final)  # our fetch completes while the child waits
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    assert out.get(timeout=60) == 0  # the child found the shard instead of fetching it again
    child.join(timeout=60)
    assert child.exitcode == 0
