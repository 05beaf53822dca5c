"""The read path's per-epoch and per-batch costs, as behaviour: each shard's sha256 is computed once for a
loader and all its worker processes (not once per worker per epoch), a batch imports no modules (a forked
worker would import them again every epoch), and an open shard's columns are wrapped once, not per batch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from torch.utils.data import default_collate

from deepseek.data.shards import format as shard_format
from deepseek.data.shards import reader as shard_reader
from deepseek.data.shards import storage as shard_storage
from deepseek.data.shards.reader import open_shards
from deepseek.data.shards.stream import StreamingLoader
from tests.data.shards.shard_sets import labels, write_set

N, PER_SHARD = 40, 5  # 8 shards


@pytest.fixture()
def shard_dir(tmp_path: Path) -> Path:
    return write_set(tmp_path / "set", N, PER_SHARD)


def test_each_shard_is_hashed_once_for_the_loader_and_all_its_workers(shard_dir, tmp_path, monkeypatch) -> None:
    hashed = tmp_path / "hashed.log"  # one line per sha256 computed, whichever process computed it
    real = shard_format.sha256_file

    def logged(path):
        with open(hashed, "a") as log:
            log.write(f"{Path(path).name}\n")
        return real(path)

    monkeypatch.setattr(shard_storage, "sha256_file", logged)  # forked workers inherit the patch
    loader = StreamingLoader(open_shards(shard_dir), 4, num_workers=2, shuffle_window=2)
    for epoch in range(3):  # a new pair of worker processes each epoch
        loader.set_epoch(epoch)
        assert sorted(y for b in loader for y in labels(b)) == list(range(N))
    lines = hashed.read_text().split()
    assert sorted(set(lines)) == [f"shard-{k:05d}.arrow" for k in range(8)]
    assert len(lines) <= 2 * 8, lines  # the first epoch's two workers may both hash a shard; later epochs never


def test_a_corrupted_shard_is_still_caught_by_a_new_loader_after_an_earlier_one_verified_it(shard_dir) -> None:
    loader = StreamingLoader(open_shards(shard_dir), 8, num_workers=1)
    assert sorted(y for b in loader for y in labels(b)) == list(range(N))
    path = shard_dir / "shard-00002.arrow"
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(shard_storage.CorruptShardError, match="shard-00002.arrow"):
        list(StreamingLoader(open_shards(shard_dir), 8, num_workers=1))


@pytest.mark.slow  # a fresh interpreter: about 8 s
def test_reading_batches_imports_no_modules(shard_dir) -> None:
    """Run in a fresh interpreter: anything imported lazily while reading is imported again by every worker."""
    script = textwrap.dedent(f"""
        import sys
        from deepseek.data.shards.reader import open_shards
        from deepseek.data.shards.stream import StreamingLoader
        loader = StreamingLoader(open_shards({str(shard_dir)!r}), 4, shuffle_window=2)
        before = set(sys.modules)
        for batch in loader:
            pass
        new = sorted(m for m in set(sys.modules) - before if not m.startswith("torch.profiler"))
        print(new)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_an_open_shard_is_wrapped_once_for_many_batches(shard_dir, monkeypatch) -> None:
    shards = open_shards(shard_dir)
    calls = []
    real = shards.storage.open_table
    monkeypatch.setattr(shards.storage, "open_table", lambda n: calls.append(n) or real(n))
    views = []
    real_views = shard_reader.ColumnViews
    monkeypatch.setattr(shard_reader, "ColumnViews", lambda *a: views.append(1) or real_views(*a))
    for start in range(0, N, 3):
        indices = [(start + 7 * k) % N for k in range(6)]
        assert labels(shards.read_batch(indices)) == indices
        expected = default_collate([shards[i] for i in indices])
        assert all((a == b).all() for a, b in zip(shards.read_batch(indices), expected))
    assert sorted(set(calls)) == list(range(8))
    assert len(views) == len(calls)  # wrapped when opened, reused by every batch while open
