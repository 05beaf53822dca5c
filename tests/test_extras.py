"""pyproject's extras declare what the code imports: the installed versions satisfy them."""

from __future__ import annotations

import importlib.metadata

import pytest
from packaging.requirements import Requirement

from tests.conftest import REPO


def _extra(name: str) -> dict[str, Requirement]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {(r := Requirement(line)).name: r for line in project["optional-dependencies"][name]}


def test_text_extra_declares_transformers_and_the_installed_version_fits():
    text = _extra("text")
    assert "transformers" in text, f"the text extra lists only {sorted(text)}"  # models/pretrained.py imports it
    pytest.importorskip("transformers")
    installed = importlib.metadata.version("transformers")
    assert text["transformers"].specifier.contains(installed, prereleases=True), (text["transformers"], installed)
