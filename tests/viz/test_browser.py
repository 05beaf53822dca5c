"""The visualizer in a real browser (issue 19): Debian's Chromium driven by Playwright against the real
``deepseek-viz`` server and a run the Trainer just wrote.

The page starts on an empty log directory (it must say so), then runs appear while it is open: a real tiny run
(with ``logging.stats`` when the stats recorder exists, and ``train.profile``: the real ProfilerCallback profiles
two of its steps into ``<run>/profile``), a killed run (half-written last line), a run of the older format
(``tests/fixtures/run_v1``) and a broken profiler summary. The charts must hold every data point of the run, the
profile's tables the run's summary.json, records appended later (a resume included) must show without a reload,
the profile's flame graphs must open from the page's links and render (their inline script zooms), and no page
may log an error. Screenshots go to ``tmp_path``, and to ``docs/images/`` (``viz_*.png``,
``profiler_flamegraph_*.png``) with ``DEEPSEEK_DOCS_SCREENSHOTS=1``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import queue
import shutil
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import process_tree
from tests.conftest import write_yaml
from tests.viz.fixtures import metrics_records, stats_record, write_jsonl

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]  # fmt: skip
DEADLINE_S = 15.0  # an upper bound for a state to appear, never a synchronisation: waits end when it holds

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")


def train_tiny_run(run_dir: Path, work: Path) -> None:
    """A real 8-step run of the Trainer profiling steps 6-7 (``train.profile``: files in ``run_dir/profile``);
    ``logging.stats`` on when the stats recorder is there, else a stats.jsonl written by its format.

    Validation (steps 4 and 8) stays outside the profiled window and its warm-up step 5: the profiler takes a
    validation forward inside the window for a training step (an extra step, its batch counted as a micro-batch).
    ``python -m deepseek train`` runs in a process of its own, so the flame graph's Python stacks are a user's,
    not pytest's.
    """
    try:
        from deepseek.train.stats import StatsRecorder  # noqa: F401  (is the recorder there yet?)

        stats = {"stats": {"every_steps": 2, "activations": ["net.*"], "histogram_bins": 16}}
    except ImportError:
        stats = {}
    cfg = {"model": {"name": "mlp", "in_features": 64, "num_classes": 10, "hidden": [8]},
           "data": {"name": "digits", "batch_size": 64},
           "train": {"max_steps": 8, "val_every_steps": 4, "val_every_epochs": None, "seed": 0,
                     "profile": {"start_step": 5, "steps": 2}},
           "logging": {"progress": "off", "every_steps": 1, "tensorboard": False, **stats},
           "checkpoint": {"every_minutes": None, "save_best": False}}  # fmt: skip
    cmd = [sys.executable, "-m", "deepseek", "train", str(write_yaml(work / "tiny.yaml", cfg)), "--run-dir", str(run_dir)]
    done = process_tree.run(cmd, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    if not stats:
        write_jsonl(run_dir / "stats.jsonl", [stats_record(step) for step in (2, 4, 6, 8)])


def start_server(logdir: Path) -> tuple[subprocess.Popen, int]:
    """``deepseek-viz --logdir LOGDIR --port 0`` in its own process tree; returns it and the port it bound.

    Its output is read by a thread (a select on a buffered pipe can miss lines already buffered); the
    ``listening on`` line gives the port, then ``/healthz`` is polled until it answers.
    """
    cmd = [sys.executable, "-m", "deepseek.cli.viz_cmd", "--logdir", str(logdir), "--port", "0", "--poll-ms", "300"]
    proc = process_tree.popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put("")], daemon=True).start()
    out: list[str] = []
    try:
        while True:
            line = lines.get(timeout=60)  # queue.Empty if it neither prints nor exits: the test fails
            out.append(line)
            if not line:
                raise AssertionError(f"deepseek-viz exited: {''.join(out)}")
            if line.startswith("listening on http://127.0.0.1:"):
                port = int(line.rsplit(":", 1)[1])
                assert process_tree.poll(lambda port=port: _healthy(port), 30), "deepseek-viz never answered /healthz"
                return proc, port
    except BaseException:
        process_tree.kill_tree(proc)
        raise


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return json.load(answer) == {"ok": True}
    except OSError:
        return False


def merged_steps(records: list[dict[str, Any]], key: str) -> dict[int, float]:
    """What the page must show for ``key``: later records for a step win, a resume drops the steps after it."""
    points: dict[int, float] = {}
    for r in records:
        if r.get("event") == "resume":
            points = {s: v for s, v in points.items() if s <= r["step"]}
        elif key in r:
            points[r["step"]] = r[key]
    return points


@pytest.mark.slow  # trains a run, serves it and drives Chromium: about 10 s
def test_the_page_shows_a_real_run_updates_live_and_reports_bad_input(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    logdir, staging = tmp_path / "logs", tmp_path / "staging"
    logdir.mkdir()
    staging.mkdir()
    train_tiny_run(staging / "tiny", tmp_path)
    profile = json.loads((staging / "tiny" / "profile" / "summary.json").read_text())
    write_jsonl(staging / "killed" / "metrics.jsonl", metrics_records(3, loss0=3.0), tail='{"step": 4, "epoch": 0, "train/lo')
    shares = [{"comm/share": 0.1 * r["step"], "precision/low_share": 0.25} if "train/loss" in r else {}
              for r in metrics_records(4, loss0=1.5)]  # fmt: skip
    write_jsonl(staging / "two_ranks" / "metrics.jsonl", [{**r, **x} for r, x in zip(metrics_records(4, loss0=1.5), shares)])
    write_jsonl(staging / "two_ranks" / "stats.jsonl", [stats_record(s, rank, 2) for s in (2, 4) for rank in (0, 1)])
    for name in ("killed", "two_ranks"):  # runs of today's format (format.json); run_v1 has none
        (staging / name / "format.json").write_text('{"format_version": 2}')
    shutil.copytree(REPO / "tests" / "fixtures" / "run_v1", staging / "old_v1")
    (staging / "broken_profile").mkdir()
    (staging / "broken_profile" / "summary.json").write_text('{"schema": "deepseek.profile/1", "steps": ')
    shots = [tmp_path / "shots"] + ([REPO / "docs" / "images"] if os.environ.get("DEEPSEEK_DOCS_SCREENSHOTS") == "1" else [])

    def screenshot(target: Any, name: str, **kwargs: Any) -> None:  # a page or a locator (one element)
        for folder in shots:
            folder.mkdir(parents=True, exist_ok=True)
            target.screenshot(path=str(folder / f"{name}.png"), **kwargs)

    server, port = start_server(logdir)
    errors: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1400, "height": 1000})  # the flame graphs' tabs too
                context.on("console", lambda m: console_error(m) and errors.append(f"console: {m.text} {m.location}"))
                context.on("weberror", lambda e: errors.append(f"pageerror: {e.error}"))
                page = context.new_page()
                page.goto(f"http://127.0.0.1:{port}/")

                def wait(js: str, what: str) -> Any:
                    try:
                        page.wait_for_function(js, timeout=DEADLINE_S * 1000)
                    except Exception as exc:
                        raise AssertionError(f"the page never showed {what} ({js}); errors: {errors}") from exc
                    return page.evaluate(js)

                # an empty log directory: a message, not a blank page
                assert "no runs under" in wait("!document.getElementById('message').hidden && "
                                               "document.getElementById('message').textContent", "the empty-logdir message")  # fmt: skip
                assert "no train/loss recorded" in page.inner_text("#loss") or "no run" in page.inner_text("#loss")
                screenshot(page, "viz_empty_logdir")

                for name in ("tiny", "killed", "old_v1", "two_ranks", "broken_profile"):  # runs appear while the page is open
                    (staging / name).rename(logdir / name)
                metrics = [json.loads(line) for line in (logdir / "tiny" / "metrics.jsonl").read_text().splitlines()]
                stats = [json.loads(line) for line in (logdir / "tiny" / "stats.jsonl").read_text().splitlines()]
                loss = merged_steps(metrics, "train/loss")
                trace = "document.getElementById('{}').data?.find(t => t.name.startsWith('{}'))"
                wait(f"{trace.format('loss', 'tiny')}?.y.length === {len(loss)}", "every train/loss point of the run")
                assert page.evaluate(f"{trace.format('loss', 'tiny')}.y") == list(loss.values())
                assert page.evaluate(f"{trace.format('loss', 'tiny')}.x") == list(loss)
                assert page.evaluate(f"{trace.format('val', 'tiny val/loss')}.y.length") == len(merged_steps(metrics, "val/loss"))
                assert page.evaluate(f"{trace.format('lr', 'tiny')}.y.length") == len(merged_steps(metrics, "lr"))
                assert page.evaluate(f"{trace.format('throughput', 'tiny')}.y.length") == len(loss)
                assert page.evaluate(f"{trace.format('loss', 'old_v1')}.y") == [metrics_v1_loss()]  # older format
                assert page.evaluate(f"{trace.format('loss', 'killed')}.y.length") == 3  # half-written line left out
                wait(f"{trace.format('comm', 'two_ranks')}?.y.length === 4", "the communication share")
                assert page.evaluate(f"{trace.format('comm', 'two_ranks')}.y") == pytest.approx([0.1, 0.2, 0.3, 0.4])
                assert page.evaluate(f"{trace.format('precision', 'two_ranks precision/low_share')}.y") == [0.25] * 4
                assert "the last line is half-written" in page.inner_text("#notes")
                assert [line.strip() for line in page.inner_text("#runs").splitlines() if "older format" in line] == [
                    "old_v1 (older format)"
                ]

                # statistics of the tiny run (stats.jsonl), rank 0
                rank0 = [r for r in stats if r["rank"] == 0]
                wait(f"document.getElementById('grad_norm_heatmap').data?.[0].x.length === {len(rank0)}", "the grad norms")
                heatmap = page.evaluate("document.getElementById('grad_norm_heatmap').data[0]")
                assert heatmap["y"] == list(rank0[0]["grad_norm"]) and heatmap["x"] == [r["step"] for r in rank0]
                hist = page.evaluate("document.getElementById('grad_hist').data[0]")
                module = next(iter(rank0[0]["grad_hist"]))
                assert hist["x"] == [r["step"] for r in rank0] and len(hist["y"]) == len(rank0[0]["grad_hist"][module])
                if rank0[0].get("act_hist"):
                    assert page.evaluate("document.getElementById('act_hist').data[0].x.length") == len(rank0)
                lines = page.evaluate("document.getElementById('grad_norm_lines').data.map(t => t.name)")
                assert lines[0] == "(total)" and len(lines) >= 2

                # a run with two ranks: the rank selector, and the per-layer line selector
                page.select_option("#stats_run", "two_ranks")
                wait("[...document.getElementById('rank').options].map(o => o.value).join() === '0,1'", "ranks 0 and 1")
                page.select_option("#rank", "1")
                page.select_option("#layer_select", ["fc2.weight"])
                wait("document.getElementById('grad_norm_lines').data.length === 1", "the one selected layer")
                assert page.evaluate("document.getElementById('grad_norm_lines').data[0].y") == [0.4, 0.4]  # rank 1's
                z = page.evaluate("document.getElementById('grad_norm_heatmap').data[0].z")
                assert z[2] == pytest.approx([math.log10(0.4)] * 2)  # fc2.weight's row, rank 1
                assert "no activation histograms" not in page.inner_text("#act_hist")
                page.select_option("#stats_run", "tiny")

                page.uncheck("#runs input[value='two_ranks']")  # the only run with shares: their charts say so
                wait("document.getElementById('comm').textContent.includes('no communication share (comm/share) "
                     "recorded in these runs')", "the no-data message")  # fmt: skip
                assert "no precision shares recorded" in page.inner_text("#precision")
                assert "two_ranks" not in json.dumps(page.evaluate("document.getElementById('loss').data.map(t => t.name)"))
                page.check("#runs input[value='two_ranks']")

                # the profiler summaries: the real run's tables and links, and the broken one's message
                wait("document.getElementById('profiles').textContent.includes('data_wait')", "the profile table")
                assert "unreadable summary.json" in page.inner_text("#profiles")
                box = page.locator("#profiles .profile").filter(has=page.locator("h3", has_text="tiny/profile"))
                check_profile_view(box, profile)
                screenshot(page, "viz_overview", full_page=True)
                screenshot(page.locator("#profiles"), "viz_profiles")
                for view in ("module", "stack"):  # each flame graph opens from its link, in a tab of this browser
                    with page.expect_popup() as opened:
                        box.get_by_role("link", name=f"flamegraph_{view}", exact=True).click()
                    stacks = logdir / "tiny" / "profile" / ("stacks_module.txt" if view == "module" else "stacks.txt")
                    check_flamegraph(opened.value, stacks,
                                     functools.partial(screenshot, opened.value, f"profiler_flamegraph_{view}"))
                    opened.value.close()

                # records appended while the page is open: a resume at step 4 (the run had 8), steps 5-6 again with new losses
                appended = [{"event": "resume", "step": 4, "time": 0.0}] + [
                    {"step": s, "epoch": 0, "train/loss": 1.0 / s, "lr": 0.001, "samples_per_s": 50.0} for s in range(5, 7)
                ]  # fmt: skip
                with open(logdir / "tiny" / "metrics.jsonl", "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in appended)
                with open(logdir / "killed" / "metrics.jsonl", "a") as f:
                    f.write('ss": 0.4, "lr": 0.01, "samples_per_s": 10.0}\n')  # the killed run's line completes
                expected = merged_steps(metrics + appended, "train/loss")
                wait(f"{trace.format('loss', 'tiny')}?.y.length === {len(expected)} && "
                     f"{trace.format('loss', 'tiny')}.y.at(-1) === {1.0 / 6}", "the appended records")  # fmt: skip
                assert page.evaluate(f"{trace.format('loss', 'tiny')}.y") == list(expected.values())
                assert page.evaluate(f"{trace.format('loss', 'tiny')}.x") == [1, 2, 3, 4, 5, 6]  # 7, 8 abandoned
                wait(f"{trace.format('loss', 'killed')}?.y.length === 4", "the completed line of the killed run")
                assert "half-written" not in page.inner_text("#notes")
                assert not errors, errors
            finally:
                browser.close()
    finally:
        assert not process_tree.kill_tree(server), "the deepseek-viz server outlived the test"


def console_error(message: Any) -> bool:
    """An error the page logged; not the 404 of the favicon Chromium asks for when it opens a tab on an SVG file
    (an SVG document cannot name an icon; the viz page's HTML names its own)."""
    return message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico")


def check_profile_view(box: Any, summary: dict[str, Any]) -> None:
    """The page's view of a profiler summary shows its header, its step split, bottlenecks, modules and links."""
    assert box.count() == 1
    assert summary["mode"] == "train" and summary["steps"] == 2 and summary["batch_size"] == 64
    assert all(summary["split_s"][phase] > 0 for phase in ("forward", "backward", "optimizer")), summary["split_s"]
    header = box.locator("p").first.inner_text()
    assert f"{summary['model']} (train) on " in header and "batch 64, 2 steps profiled" in header, header
    split, bottlenecks, modules = box.locator("table").evaluate_all(
        "ts => ts.map(t => [...t.rows].slice(1).map(r => [...r.cells].map(c => c.textContent)))")
    assert [r[0] for r in split] == list(summary["split_s"])
    for phase, seconds, share in split:  # 3 significant digits, a share in percent with one decimal
        assert float(seconds) == pytest.approx(summary["split_s"][phase], rel=6e-3, abs=1e-12), phase
        assert float(share.rstrip("%")) / 100 == pytest.approx(summary["split_share"][phase], abs=6e-4), phase
    assert [r[0] for r in bottlenecks] == [b["what"] for b in summary["bottlenecks"]]
    assert [r[2] for r in bottlenecks] == [b["advice"] for b in summary["bottlenecks"]]
    assert modules and len(modules) == min(10, len(summary["modules"]))  # the 10 slowest
    assert {r[0] for r in modules} <= {m["name"] for m in summary["modules"]}
    assert set(box.locator("a").all_inner_texts()) == set(summary["files"])


FRAMES_JS = ("[...document.querySelectorAll('g.f')]"
             ".map(g => [g.dataset.n, +g.dataset.d, +g.querySelector('rect').getAttribute('width')])")


def check_flamegraph(tab: Any, collapsed: Path, screenshot: Callable[[], None]) -> None:
    """A flame graph SVG opened from the page: a frame for every frame name of its collapsed stacks (the same
    profile; frames under 0.5 us are left out of that file), and clicking a frame zooms it to the full width."""
    tab.wait_for_load_state()
    assert tab.evaluate("document.documentElement.tagName") == "svg", tab.url
    width, height = tab.evaluate("['width', 'height'].map(k => document.documentElement[k].baseVal.value)")
    tab.set_viewport_size({"width": round(width), "height": round(height)})  # all of it: full_page hangs on an SVG
    frames = tab.evaluate(FRAMES_JS)  # [name, depth, drawn width] per frame, the root "all" first
    stacks = [line.rsplit(" ", 1)[0].split(";") for line in collapsed.read_text().splitlines()]
    assert stacks and len(frames) > 1 and frames[0][:2] == ["all", 0]
    assert {f for s in stacks for f in s} <= {name for name, _, _ in frames}
    screenshot()  # before the zoom
    full = frames[0][2]
    narrower = [i for i, f in enumerate(frames) if f[2] < full - 1]
    assert narrower, f"every frame is as wide as the root: nothing to zoom in {frames}"
    widest = max(narrower, key=lambda i: frames[i][2])
    tab.locator("g.f").nth(widest).locator("rect").click()
    assert tab.evaluate(FRAMES_JS)[widest][2] == pytest.approx(full)  # the inline script ran and zoomed


def metrics_v1_loss() -> float:
    first = (REPO / "tests" / "fixtures" / "run_v1" / "metrics.jsonl").read_text().splitlines()[0]
    return json.loads(first)["train/loss"]
