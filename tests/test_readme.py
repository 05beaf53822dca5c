"""Every README block runs as written, in order, in a fresh directory (issue 12), and so does every block of the
documentation pages (issue 14 moved the README's reference material there).

Rules (what this test runs, and what it leaves out):

- The pages are README.md, then the pages of ``mkdocs.yml``'s ``nav`` in nav order (pages the site generates
  are not files and have no blocks to run), all in one directory: a block may use the files and servers an
  earlier page's block made.
- Fenced ```bash and ```python blocks run in page order in one temporary directory that holds copies of
  ``configs/`` and ``examples/`` (a fresh clone's files), with this venv's ``bin`` first on ``PATH``.
  ```text blocks are output and are not run; ```yaml and other blocks are not run either, except that
  ``<!-- readme-test: file NAME -->`` just before a block writes it to ``NAME`` (serve.yaml).
- ``<!-- readme-test: skip (REASON) -->`` just before a block leaves it out; every such marker gives its reason
  (fragments that use the reader's own model or data, the whole test suite, full-size training, a GPU).
- ``pip install`` lines are not run: the test runs in the installed venv.
- A line that starts a server (``deepseek-serve`` / ``deepseek serve``) starts in the background on a port
  from the OS (the README's 8080 is replaced everywhere), is waited for until ``/readyz`` answers 200
  (every model has run once), and its process group is killed when the next server starts or the test ends.
- The other commands of a bash block run as one ``set -eo pipefail`` script (cut only at server lines), so
  a variable one sets is seen by the next; the first failing command is named.
- Nothing is sized down: the blocks run with the arguments the README shows.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|file)\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")
# stop at the first failing command and name it
FAIL_FAST = "set -eo pipefail\ntrap 'echo \"failed: $BASH_COMMAND\" >&2' ERR"
SERVER = re.compile(r"^(?:\S+=\S+\s+)*(deepseek-serve|deepseek serve)\b")


@dataclass
class Block:
    lang: str
    code: str
    line: int
    marker: tuple[str, str] | None


def readme_blocks(text: str) -> list[Block]:
    """The fenced blocks of ``text`` with their language, first line number and preceding marker."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        prev = lines[i - 1] if i else ""
        mk = MARKER.search(prev)
        start = i + 1
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            i += 1
        blocks.append(Block(m.group(1), "\n".join(lines[start:i]) + "\n", start + 1,
                            (mk.group(1), mk.group(2)) if mk else None))  # fmt: skip
        i += 1
    return blocks


def _nav_files(nav: list) -> list[str]:
    files = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        files += _nav_files(value) if isinstance(value, list) else [value]
    return files


def doc_pages() -> list[Path]:
    """README.md, then each documentation page that is a file, in ``mkdocs.yml``'s nav order."""
    config = yaml.safe_load((REPO / "mkdocs.yml").read_text())
    docs = REPO / config.get("docs_dir", "docs")
    return [REPO / "README.md"] + [docs / f for f in _nav_files(config["nav"]) if (docs / f).is_file()]


def test_readme_blocks_parse_with_reasons() -> None:
    pages = doc_pages()
    assert pages[0].name == "README.md" and len(pages) > 5
    runnable = 0
    for page in pages:
        blocks = readme_blocks(page.read_text())
        runnable += sum(b.lang in ("bash", "python") for b in blocks)
        for b in blocks:
            if b.marker and b.marker[0] == "skip":
                where = f"{page.relative_to(REPO)} line {b.line}"
                assert re.fullmatch(r"\(.+\)", b.marker[1]), f"{where}: a skip marker needs (a reason)"
    assert runnable >= 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Servers:
    """The one background server a README block started; killed with its process group."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.stop()
        log_path = cwd / "server.log"
        with open(log_path, "w") as log:  # the child holds its own copy of the descriptor
            self.proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        port = re.search(r"--port (\d+)", command).group(1)
        deadline = time.monotonic() + 180
        while not self._ready(port):  # /readyz answers 503 until every model has run once
            assert self.proc.poll() is None, f"{command} exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"{command} did not get ready:\n{log_path.read_text()}"
            time.sleep(0.2)  # polling the server's readiness endpoint, not timing anything

    @staticmethod
    def _ready(port: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
                return response.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None


def _bash_scripts(code: str) -> list[tuple[str, bool]]:
    """A bash block cut at its server lines: ``(script, starts_a_server)`` pairs, in order. The commands
    between two server lines run as one script, so a variable set by one is seen by the next."""
    parts, current, heredoc = [], "", None
    for line in code.splitlines():
        if heredoc:
            current += line + "\n"
            heredoc = None if line.strip() == heredoc else heredoc
            continue
        if line.lstrip().startswith("pip install"):  # the test runs in the installed venv
            continue
        if SERVER.match(line.strip()) and not current.rstrip().endswith("\\"):
            parts += [(current, False), (line.split("#")[0].strip(), True)]
            current = ""
            continue
        m = re.search(r"<<'?(\w+)'?", line)
        heredoc = m.group(1) if m else None
        current += line + "\n"
    return [(script, server) for script, server in parts + [(current, False)] if script.strip()]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # every block of the README and the docs: trainings, compression, export, two servers
def test_every_readme_block_runs_as_written(tmp_path: Path) -> None:
    for folder in ("configs", "examples"):
        shutil.copytree(REPO / folder, tmp_path / folder)
    env = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    port = str(_free_port())
    servers = Servers()
    started = time.monotonic()
    try:
        for page, block in ((p, b) for p in doc_pages() for b in readme_blocks(p.read_text())):
            where = f"{page.relative_to(REPO)} line {block.line}"
            print(f"{time.monotonic() - started:7.1f} s  {where}: {block.lang}", flush=True)  # -s: where time goes
            code = block.code.replace("8080", port)
            if block.marker and block.marker[0] == "file":
                (tmp_path / block.marker[1]).write_text(code)
                continue
            if block.lang not in ("bash", "python") or (block.marker and block.marker[0] == "skip"):
                continue
            if block.lang == "python":
                done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                                      text=True, timeout=300)  # fmt: skip
                assert done.returncode == 0, f"{where} (python):\n{done.stderr[-3000:]}"
                continue
            for script, starts_server in _bash_scripts(code):
                if starts_server:
                    servers.start(script, tmp_path, env)
                    continue
                done = subprocess.run(["bash", "-c", f"{FAIL_FAST}\n{script}"], cwd=tmp_path, env=env,
                                      capture_output=True, text=True, timeout=300)  # fmt: skip
                assert done.returncode == 0, f"{where}:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    finally:
        servers.stop()
    shutil.rmtree(tmp_path)  # passed: drop the 400 MB gpt2.safetensors (a failing run's files stay to look at)
