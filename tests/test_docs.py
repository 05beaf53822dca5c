"""The documentation site builds strictly, and its generated reference pages cover the code (issue 14).

``mkdocs build --strict`` turns every warning (a broken link, a nav entry without a page, a docstring
mkdocstrings cannot render, a missing snippet) into a failure. The configuration and CLI reference pages are
generated from ``deepseek.config.schema`` and the argparse parsers by ``docs/hooks/reference_pages.py``; the
checks below derive what the pages must contain from the same code at test time, not from a list.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _hook() -> ModuleType:
    """``docs/hooks/reference_pages.py`` (a file mkdocs loads by path, not a package)."""
    spec = importlib.util.spec_from_file_location("reference_pages", REPO / "docs" / "hooks" / "reference_pages.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site built with ``mkdocs build --strict`` into a temporary directory."""
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's end-of-life banner, not a build problem
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    return out


def _text(html_file: Path) -> str:
    """The page's HTML with tags removed (headings keep their words, code keeps its text)."""
    return html.unescape(re.sub(r"<[^>]+>", "", html_file.read_text()))


@pytest.mark.slow
def test_site_builds_strictly_with_every_nav_page(site: Path) -> None:
    nav = yaml.safe_load((REPO / "mkdocs.yml").read_text())["nav"]
    for page in _nav_pages(nav):
        built = site / (page.removesuffix(".md").removesuffix("index") + "/index.html").lstrip("/")
        assert built.is_file(), f"nav page {page} was not built ({built})"


@pytest.mark.slow
def test_config_reference_has_every_section_and_key(site: Path) -> None:
    from deepseek.config.schema import Config

    built = (site / "reference" / "config" / "index.html").read_text()
    markdown = _hook().config_reference_markdown()
    sections = _hook().config_sections()
    assert sections == list(Config.model_fields)
    for section, field in Config.model_fields.items():
        assert f'id="{section}"' in built, f"config section {section!r} has no heading in the built reference"
        model = _hook()._section_model(field.annotation)
        if model is None:
            continue
        block = markdown.split(f"## `{section}`\n", 1)[1]
        for key in model.model_fields:
            assert f"| `{key}` |" in block, f"config key {section}.{key} missing from the reference"
            assert f"<code>{key}</code>" in built
    # a default and a description the schema states reach the built page
    text = _text(site / "reference" / "config" / "index.html")
    assert '{"name": "cross_entropy"}' in text
    assert "a nan/inf loss: stop the run" in text


@pytest.mark.slow
def test_cli_reference_has_every_command_and_option(site: Path) -> None:
    page = _text(site / "reference" / "cli" / "index.html")
    hook = _hook()
    progs = []
    for parser in hook.parsers():
        for prog, sub, _ in hook.commands(parser):
            progs.append(prog)
            assert prog in page, f"command {prog!r} missing from the CLI reference"
            for action in sub._actions:
                if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                    continue
                for option in action.option_strings:
                    assert option in page, f"{prog} {option} missing from the CLI reference"
    assert {"deepseek train", "deepseek config validate", "deepseek-serve"} <= set(progs)


def test_generated_pages_follow_the_code() -> None:
    """Without building: a config section or CLI command added to the code appears in the page source."""
    hook = _hook()
    config_md = hook.config_reference_markdown()
    for section in hook.config_sections():
        assert f"## `{section}`" in config_md
    cli_md = hook.cli_reference_markdown()
    for parser in hook.parsers():
        for prog, _, _ in hook.commands(parser):
            assert f"`{prog}`" in cli_md


def _schema_keys() -> list[tuple[str, object]]:
    """``(dotted key, pydantic field)`` for every key of the run config, nested sections included."""
    from deepseek.config.schema import Config

    hook, found, todo = _hook(), [], [("", Config)]
    while todo:
        prefix, model = todo.pop(0)
        for name, field in model.model_fields.items():
            found.append((prefix + name, field))
            sub = hook._section_model(field.annotation)
            if sub is not None and sub is not model:
                todo.append((f"{prefix}{name}.", sub))
    return found


def test_every_config_key_has_a_description() -> None:
    """A key added to the schema without ``Field(description=...)`` fails here, and its reference row says so."""
    keys = _schema_keys()
    assert {"train.early_stopping.patience", "data.batch_size", "model.name"} <= {k for k, _ in keys}
    missing = [key for key, field in keys if not (field.description or "").strip()]
    assert not missing, f"config keys without a Field(description=...) in deepseek.config.schema: {missing}"
    # Markdown would pass `val/<name>` outside a code span through as an HTML tag, and the page would hide it.
    raw_html = [key for key, field in keys if "<" in re.sub(r"`[^`]*`", "", field.description)]
    assert not raw_html, f"put <...> in backticks in the description of {raw_html}"
    rows = [line for line in _hook().config_reference_markdown().splitlines() if line.startswith("| `")]
    empty = [row for row in rows if row.rstrip().endswith("|  |")]
    assert not empty, f"reference rows with an empty description: {empty}"


def test_type_names_are_readable() -> None:
    from typing import Annotated, Literal, Optional

    from annotated_types import Gt, Lt

    hook = _hook()
    assert hook.type_name(Optional[Annotated[int, Gt(0)]]) == "int (> 0) | null"
    assert hook.type_name(Literal["min", "max"]) == '"min" | "max"'
    assert hook.type_name(float, [Gt(0.0), Lt(1.0)]) == "float (> 0.0, < 1.0)"
