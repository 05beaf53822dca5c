"""A shard set three times larger than a memory budget streams through one epoch in a child process whose peak
resident memory grows by less than the budget; the same data held in memory (a TensorDataset) grows past it,
so the measurement can tell the two apart.

RSS, not an address-space limit: memory maps and torch's import reserve far more address space than they use.
Mapped shard pages count in RSS while mapped, so the loader must unmap the shards the order has left.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import Dataset

from tests import process_tree

BUDGET = 64 * 2**20  # bytes of data memory the streaming epoch may add to the process
FEATURES = 4096  # float32: 16 KiB a sample
SAMPLES = 12_800  # 200 MiB of data: > 3x the budget
SHARD_BYTES = 8 * 2**20

_CHILD = r"""
import json, sys
import psutil, torch
import pandas, pyarrow.compute  # imported lazily by pyarrow on the first decode (~45 MB): imports, not data
from torch.utils.data import DataLoader, TensorDataset
from deepseek.data.shards.reader import open_shards
from deepseek.data.shards.stream import StreamingLoader

mode, path, samples, features = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
me = psutil.Process()
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS: the imports' own peak does not count
base = me.memory_info().rss  # after the imports: what the data path adds is measured from here
peak, seen = base, 0
if mode == "stream":
    loader = StreamingLoader(open_shards(path), 64, shuffle_window=2)
else:  # the same data, held in memory
    x = torch.arange(samples, dtype=torch.float32).unsqueeze(1).repeat(1, features)
    loader = DataLoader(TensorDataset(x, torch.arange(samples)), 64, shuffle=True)
for x, y in loader:
    seen += len(y)
    peak = max(peak, me.memory_info().rss)
status = open("/proc/self/status").read()
high_water = int(status.split("VmHWM:")[1].split()[0]) * 1024  # kB: the peak RSS since the reset
print(json.dumps({"seen": seen, "growth": max(peak, high_water) - base, "sampled": peak - base}))
"""


class _Rows(Dataset):
    """``SAMPLES`` samples ``(x, y)`` made on demand (x (FEATURES,) float32 = index, y = index): the writer
    never holds the whole set in this process either."""

    def __len__(self) -> int:
        return SAMPLES

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.full((FEATURES,), float(index)), index


def _epoch_growth(mode: str, path: Path) -> dict:
    cmd = [sys.executable, "-c", _CHILD, mode, str(path), str(SAMPLES), str(FEATURES)]
    done = process_tree.run(cmd, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_an_epoch_of_a_set_three_times_the_budget_stays_under_it(tmp_path: Path) -> None:
    from deepseek.data.shards.writer import write_shards

    index = write_shards(_Rows(), tmp_path / "set", shard_size=SHARD_BYTES)
    stored = sum(s.bytes for s in index.shards)
    assert stored >= 3 * BUDGET
    streamed = _epoch_growth("stream", tmp_path / "set")
    assert streamed["seen"] == SAMPLES
    assert streamed["growth"] < BUDGET, f"streaming grew RSS by {streamed['growth'] / 2**20:.0f} MiB ({streamed})"
    in_memory = _epoch_growth("memory", tmp_path / "set")
    assert in_memory["seen"] == SAMPLES
    assert in_memory["growth"] > BUDGET  # the same data in memory does not fit: the measurement can fail
