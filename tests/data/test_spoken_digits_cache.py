"""The spoken-digits cache under concurrency: several processes (ranks, DataLoader workers, parallel jobs)
building one empty cache directory at once all get the same complete set of valid WAVs, and a
half-written cache (missing clips, stale temporaries, no manifest) is completed, never used as is."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import shutil
import traceback
import wave
from pathlib import Path

import pytest

from deepseek.data.bundled import synthesize_spoken_digits

pytestmark = [
    pytest.mark.skipif(
        shutil.which("espeak-ng") is None or shutil.which("sox") is None,
        reason="spoken_digits needs espeak-ng and sox (apt-get install espeak-ng sox)",
    ),
    pytest.mark.slow,  # one full synthesis of the 360 clips takes ~20 s on 2 cores
]
PROCESSES = 3
TIMEOUT_S = 240.0


def _digests(items: list[tuple[Path, int]]) -> list[tuple[str, int, str]]:
    """``(file name, digit, sha256 of the bytes)`` for each clip, in the order returned."""
    return [(p.name, d, hashlib.sha256(p.read_bytes()).hexdigest()) for p, d in items]


def _build(cache: str, start: mp.synchronize.Barrier, results: mp.Queue) -> None:
    """Child process: wait for the others, then build the shared cache; report digests or the traceback."""
    try:
        start.wait(timeout=TIMEOUT_S)
        results.put(("ok", _digests(synthesize_spoken_digits(Path(cache)))))
    except BaseException:  # the parent asserts on the message: any failure must reach it
        results.put(("error", traceback.format_exc()))


def _assert_valid_wav(path: Path) -> None:
    with wave.open(str(path), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (1, 2, 16000), path
        assert f.getnframes() > 1000, path


def _leftovers(cache: Path) -> list[str]:
    """Names in the cache that are neither a clip, the manifest nor the lock file."""
    return sorted(p.name for p in cache.iterdir() if p.suffix != ".wav" or ".tmp" in p.name or ".raw" in p.name)


@pytest.fixture(scope="module")
def concurrent_build(tmp_path_factory) -> tuple[Path, list[tuple[str, object]]]:
    """``PROCESSES`` spawned processes build one empty cache directory at the same moment."""
    cache = tmp_path_factory.mktemp("spoken") / "cache"
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(PROCESSES), ctx.Queue()
    procs = [ctx.Process(target=_build, args=(str(cache), start, results)) for _ in range(PROCESSES)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=TIMEOUT_S) for _ in procs]
    for p in procs:
        p.join(timeout=TIMEOUT_S)
        assert p.exitcode == 0
    return cache, outcomes


def test_processes_building_one_cache_at_once_all_get_the_same_valid_clips(concurrent_build):
    cache, outcomes = concurrent_build
    errors = [message for status, message in outcomes if status != "ok"]
    assert not errors, errors[0]
    first = outcomes[0][1]
    assert len(first) == 360 and all(digests == first for _, digests in outcomes)
    for name, _, _ in first:
        _assert_valid_wav(cache / name)
    assert _leftovers(cache) == sorted(["MANIFEST.json", ".lock"])


def test_half_written_cache_is_completed_not_used(concurrent_build):
    cache, _ = concurrent_build
    expected = _digests(synthesize_spoken_digits(cache))  # complete (whatever the concurrent build left)
    (cache / "MANIFEST.json").unlink(missing_ok=True)  # as if the builder was killed before it finished
    (cache / expected[0][0]).unlink()
    (cache / expected[1][0]).write_bytes(b"RIFF")  # a clip written by a tool that does not rename atomically
    (cache / f".{expected[2][0]}.12345.tmp.wav").write_bytes(b"half")  # a killed builder's temporary
    assert _digests(synthesize_spoken_digits(cache)) == expected
    assert _leftovers(cache) == sorted(["MANIFEST.json", ".lock"])
