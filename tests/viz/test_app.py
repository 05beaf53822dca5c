"""The visualizer's routes (FastAPI TestClient) and the ``deepseek-viz`` command's errors."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from deepseek.cli.viz_cmd import main
from deepseek.viz import create_app
from deepseek.viz.app import STATIC, plotly_js
from tests.viz.fixtures import metrics_records, stats_record, write_jsonl, write_profile


@pytest.fixture
def logdir(tmp_path: Path) -> Path:
    write_jsonl(tmp_path / "good" / "metrics.jsonl", metrics_records(4))
    write_jsonl(tmp_path / "good" / "stats.jsonl", [stats_record(2), stats_record(4)])
    write_profile(tmp_path / "good" / "profile")
    write_jsonl(tmp_path / "killed" / "metrics.jsonl", metrics_records(2), tail='{"step": 3, "tra')
    (tmp_path / "bad_profile").mkdir()
    (tmp_path / "bad_profile" / "summary.json").write_text("{oops")
    (tmp_path / "secret.txt").write_text("inside")
    return tmp_path


@pytest.fixture
def client(logdir: Path) -> TestClient:
    return TestClient(create_app(logdir / ".", poll_ms=500))


def test_the_page_and_its_scripts_come_from_the_app_with_no_cdn(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/plotly.min.js">' in page.text and "/static/viz.js" in page.text
    plotly = client.get("/plotly.min.js")
    assert plotly.status_code == 200 and plotly.content == plotly_js().read_bytes()
    for name in ("index.html", "viz.js", "viz.css"):
        assert client.get(f"/static/{name}").status_code == 200
        assert not re.search(r"https?://", (STATIC / name).read_text()), f"{name} loads something from the network"
    assert client.get("/healthz").json() == {"ok": True}


def test_runs_lists_runs_and_profiles_and_an_empty_logdir_has_a_message(client: TestClient, tmp_path: Path) -> None:
    found = client.get("/api/runs").json()
    assert found["message"] is None and found["poll_ms"] == 500
    assert [r["name"] for r in found["runs"]] == ["good", "killed"]
    assert [p["path"] for p in found["profiles"]] == ["bad_profile/summary.json", "good/profile/summary.json"]
    empty = tmp_path / "empty"
    empty.mkdir()
    answer = TestClient(create_app(empty)).get("/api/runs")
    assert answer.status_code == 200 and answer.json()["runs"] == [] and "no runs under" in answer.json()["message"]


def test_metrics_and_stats_come_from_an_offset_and_a_killed_run_says_so(client: TestClient, logdir: Path) -> None:
    first = client.get("/api/metrics", params={"run": "good", "offset": 0}).json()
    assert len(first["records"]) == 6 and first["next_offset"] == (logdir / "good" / "metrics.jsonl").stat().st_size
    with open(logdir / "good" / "metrics.jsonl", "a") as f:
        f.write('{"event": "resume", "step": 2, "time": 1.0}\n{"step": 3, "train/loss": NaN}\n')
    more = client.get("/api/metrics", params={"run": "good", "offset": first["next_offset"]}).json()
    assert more["records"] == [{"event": "resume", "step": 2, "time": 1.0}, {"step": 3, "train/loss": None}]
    stats = client.get("/api/stats", params={"run": "good"}).json()
    assert [r["step"] for r in stats["records"]] == [2, 4] and stats["records"][0]["grad_hist"]["fc1"][3] == 9
    killed = client.get("/api/metrics", params={"run": "killed"}).json()
    assert killed["partial_tail"] and len(killed["records"]) == 3 and "half-written" in killed["notes"][0]
    no_stats = client.get("/api/stats", params={"run": "killed"}).json()
    assert no_stats["records"] == [] and no_stats["size"] == 0


def test_a_profile_comes_with_links_and_a_broken_one_with_its_error(client: TestClient) -> None:
    summary = client.get("/api/profile", params={"path": "good/profile/summary.json"}).json()
    assert summary["mfu"] == 5.6e-07 and summary["links"] == {"flamegraph_stack": "good/profile/flamegraph_stack.svg"}
    svg = client.get("/files/good/profile/flamegraph_stack.svg")
    assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
    broken = client.get("/api/profile", params={"path": "bad_profile/summary.json"})
    assert broken.status_code == 400 and "unreadable summary.json" in broken.json()["error"]
    missing = client.get("/api/profile", params={"path": "nope/summary.json"})
    assert missing.status_code == 404 and "no such file" in missing.json()["error"]


@pytest.mark.parametrize(
    "url",
    ["/api/metrics?run=..", "/api/metrics?run=../..", "/api/stats?run=/etc", "/api/profile?path=../../etc/passwd",
     "/api/profile?path=/etc/passwd", "/files/%2e%2e/%2e%2e/etc/passwd", "/files/..%2F..%2Fetc%2Fpasswd"],
)  # fmt: skip
def test_paths_from_the_client_stay_inside_the_logdir(client: TestClient, url: str) -> None:
    answer = client.get(url)
    assert answer.status_code in (400, 404), answer.text
    assert "root:" not in answer.text and "not inside the log directory" in answer.json()["error"]


def test_bad_queries_answer_a_message_not_a_500(client: TestClient) -> None:
    for url, status, says in [("/api/metrics?run=nope", 404, "no run 'nope'"), ("/api/metrics?run=good&offset=-3", 400,
                              "offset: -3"), ("/files/nope.svg", 404, "no file"), ("/files/good", 404, "no file")]:  # fmt: skip
        answer = client.get(url)
        assert answer.status_code == status and says in answer.json()["error"], (url, answer.text)
    assert client.get("/files/secret.txt").text == "inside"


def test_the_command_refuses_a_missing_logdir_and_a_busy_port_in_one_line(tmp_path: Path, capsys) -> None:
    assert main(["--logdir", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --logdir:") and "does not exist" in err and "\n" not in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["--logdir", str(tmp_path), "--port", str(busy.getsockname()[1])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --port: cannot listen on 127.0.0.1:") and "\n" not in err
    assert main(["--logdir", str(tmp_path), "--port", "70000"]) == 2
    assert "--port: 70000 is not allowed" in capsys.readouterr().err
