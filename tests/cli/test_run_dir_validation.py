"""``--run-dir`` that cannot be a run directory: one ``error:`` line, exit 2, no traceback."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli, write_yaml


@pytest.mark.parametrize("where", ["a_file", pytest.param("inside_proc", marks=pytest.mark.slow)])
@pytest.mark.parametrize("command", ["train", pytest.param("launch", marks=pytest.mark.slow)])
@pytest.mark.slow  # real CLI processes: seconds; the fast lane keeps to its 2-minute budget
def test_a_run_dir_that_is_a_file_or_inside_proc_is_one_line_and_exit_2(tmp_path, where, command):
    cfg = write_yaml(
        tmp_path / "cfg.yaml",
        {"model": {"name": "simple_cnn", "width": 4}, "data": {"name": "digits"}, "train": {"max_steps": 1}},
    )
    if where == "a_file":
        run_dir = tmp_path / "notes.txt"
        run_dir.write_text("not a directory")
    else:
        run_dir = "/proc/deepseek-run"
    extra = ["--nproc", "1"] if command == "launch" else []
    r = run_cli(command, *extra, str(cfg), "--run-dir", str(run_dir))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --run-dir"), r.stderr
    assert str(run_dir) in lines[0] and "Traceback" not in r.stderr
    if where == "a_file":
        assert run_dir.read_text() == "not a directory"
