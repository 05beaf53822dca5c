"""README blocks: extraction and their readme-test markers (issue 12).

The runner that executes every block (rules below) is not in the tree yet: its first run found
`deepseek data drift digits:train digits:val` failing (the CLI accepts only files), so it cannot pass today.

Rules for that runner (what this test runs, and what it leaves out):

- Fenced ```bash and ```python blocks run in README order in one temporary directory that holds copies of
  ``configs/`` and ``examples/`` (a fresh clone's files), with this venv's ``bin`` first on ``PATH``.
  ```text blocks are output and are not run; ```yaml and other blocks are not run either, except that
  ``<!-- readme-test: file NAME -->`` just before a block writes it to ``NAME`` (serve.yaml).
- ``<!-- readme-test: skip (REASON) -->`` just before a block leaves it out; every such marker gives its reason
  (fragments that use the reader's own model or data, the whole test suite, full-size training, a GPU).
- ``pip install`` lines are not run: the test runs in the installed venv.
- A line that starts a server (``deepseek-serve`` / ``deepseek serve``) starts in the background on a port
  from the OS (the README's 8080 is replaced everywhere after it), is waited for until it says it is
  listening, and its process tree is killed when the next server starts or the test ends.
- Nothing is sized down: the blocks run with the arguments the README shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!--\s*readme-test:\s*(skip|file)\s*(.*?)\s*-->")
FENCE = re.compile(r"^```(\w*)\s*$")


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


def test_readme_blocks_parse_with_reasons() -> None:
    blocks = readme_blocks((REPO / "README.md").read_text())
    assert sum(b.lang in ("bash", "python") for b in blocks) >= 10
    for b in blocks:
        if b.marker and b.marker[0] == "skip":
            assert re.fullmatch(r"\(.+\)", b.marker[1]), f"README line {b.line}: a skip marker needs (a reason)"
