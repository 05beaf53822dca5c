"""Reading run directories: tolerant, incremental JSON-lines reads, run and profile discovery, paths kept inside."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from deepseek.viz.runs import OutsideLogdirError, discover, read_jsonl, read_profile, resolve_under
from tests.viz.fixtures import metrics_records, write_jsonl, write_profile

REPO = Path(__file__).resolve().parents[2]


def test_a_growing_file_is_read_incrementally_and_a_half_written_line_waits(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "metrics.jsonl", metrics_records(2), tail='{"step": 3, "train/lo')
    first = read_jsonl(path)
    assert [r["step"] for r in first.records] == [1, 2, 2]
    assert first.partial_tail and "half-written" in first.notes[0]
    assert first.next_offset == path.read_bytes().index(b'{"step": 3')  # the partial line is read again later
    with open(path, "a") as f:
        f.write('ss": 0.5}\n{"step": 4, "train/loss": 0.25}\n')
    second = read_jsonl(path, first.next_offset)
    assert second.records == [{"step": 3, "train/loss": 0.5}, {"step": 4, "train/loss": 0.25}]
    assert not second.partial_tail and second.notes == [] and second.next_offset == path.stat().st_size
    assert read_jsonl(path, second.next_offset).records == []  # nothing new: nothing read


def test_bad_lines_are_skipped_and_counted_and_non_finite_numbers_read_as_null(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": NaN}\nnot json\n[1, 2]\n\n{"step": 2, "train/loss": Infinity}\n')
    chunk = read_jsonl(path)
    assert chunk.records == [{"step": 1, "train/loss": None}, {"step": 2, "train/loss": None}]
    assert chunk.bad_lines == 2 and chunk.notes == ["metrics.jsonl: 2 line(s) that are no JSON object skipped"]
    json.dumps(chunk.as_dict(), allow_nan=False)  # what the app sends: strict JSON


def test_a_rewritten_file_restarts_and_a_long_one_comes_in_chunks(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "metrics.jsonl", metrics_records(4))
    size = path.stat().st_size
    write_jsonl(path, metrics_records(1))
    again = read_jsonl(path, size)
    assert again.restarted and again.offset == 0 and [r["step"] for r in again.records] == [1]
    write_jsonl(path, metrics_records(40))
    offset, steps, rounds = 0, [], 0
    while True:
        chunk = read_jsonl(path, offset, max_bytes=500)
        steps += [r["step"] for r in chunk.records if "train/loss" in r]
        offset, rounds = chunk.next_offset, rounds + 1
        assert not chunk.partial_tail  # a cut at the chunk's end is no half-written line
        if not chunk.more:
            break
    assert steps == list(range(1, 41)) and rounds > 3
    with pytest.raises(ValueError, match="offset: -1"):
        read_jsonl(path, -1)
    assert read_jsonl(tmp_path / "missing.jsonl").records == []


def test_discover_finds_runs_old_runs_and_profiles_but_not_run_summaries(tmp_path: Path) -> None:
    shutil.copytree(REPO / "tests" / "fixtures" / "run_v1", tmp_path / "old", ignore=shutil.ignore_patterns("*.pt"))
    write_jsonl(tmp_path / "group" / "new" / "metrics.jsonl", metrics_records(3))
    write_jsonl(tmp_path / "group" / "new" / "stats.jsonl", [])
    (tmp_path / "group" / "new" / "format.json").write_text('{"format_version": 2}')
    (tmp_path / "group" / "new" / "summary.json").write_text("{broken")  # a run's summary: not a profile
    write_profile(tmp_path / "group" / "new" / "profile")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "summary.json").write_text('{"schema": "deepseek.prof')
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "summary.json").write_text('{"val": {}}')  # valid JSON of another kind: ignored
    write_jsonl(tmp_path / ".hidden" / "metrics.jsonl", metrics_records(1))
    found = discover(tmp_path)
    assert found["runs"] == [{"name": "group/new", "has_stats": True, "format_version": 2},
                             {"name": "old", "has_stats": False, "format_version": 0}]  # fmt: skip
    profiles = {p["path"]: p["error"] for p in found["profiles"]}
    assert list(profiles) == ["broken/summary.json", "group/new/profile/summary.json"]
    assert "unreadable summary.json" in profiles["broken/summary.json"]
    assert profiles["group/new/profile/summary.json"] is None
    old = read_jsonl(tmp_path / "old" / "metrics.jsonl")
    assert len(old.records) == 2 and old.notes == [] and "val/accuracy" in old.records[1]
    assert discover(tmp_path / "nowhere") == {"runs": [], "profiles": []}


def test_the_log_directory_itself_can_be_a_run(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "metrics.jsonl", metrics_records(1))
    assert [r["name"] for r in discover(tmp_path)["runs"]] == ["."]


@pytest.mark.parametrize("bad", ["..", "../x", "a/../../x", "/etc/passwd", "link/passwd", "nul\x00"])
def test_paths_outside_the_log_directory_are_refused(tmp_path: Path, bad: str) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    os.symlink("/etc", logdir / "link")  # a link leading out is outside too
    with pytest.raises(OutsideLogdirError, match="not inside the log directory"):
        resolve_under(logdir, bad)
    assert resolve_under(logdir, "a/../b") == (logdir / "b").resolve()


def test_a_profile_links_only_its_files_inside_the_log_directory(tmp_path: Path) -> None:
    files = {"flamegraph_stack": "flamegraph_stack.svg", "trace": "trace.json", "stacks": "../../../../etc/passwd"}
    write_profile(tmp_path / "p", files=files)
    summary = read_profile(tmp_path, "p/summary.json")
    assert summary["links"] == {"flamegraph_stack": "p/flamegraph_stack.svg"}  # trace.json was not written
    assert summary["split_s"]["backward"] == 0.04
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "summary.json").write_text('{"steps": 4}')
    with pytest.raises(ValueError, match="not a profiler summary"):
        read_profile(tmp_path, "q/summary.json")
    with pytest.raises(ValueError, match="no such file"):
        read_profile(tmp_path, "r/summary.json")
    with pytest.raises(OutsideLogdirError):
        read_profile(tmp_path, "../summary.json")
