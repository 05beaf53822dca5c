"""Errors every layer may raise, kept at the bottom of the package so that any module can import them.

The CLI reports these as one ``error:`` line with exit code 2: they are about the user's environment or
inputs, not defects of the framework (whose errors keep their traceback).
"""

from __future__ import annotations


class MissingDependency(ModuleNotFoundError):
    """An optional package or a system tool a feature needs is not installed; the message says how to get it."""


MAX_LINE = 400  # characters of one error line: a huge bad value is shown shortened, never whole


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` holds one message per bad key, each one line (shortened to
    MAX_LINE characters). Defined here, not in :mod:`deepseek.config`, because data and models validate
    their own arguments too and must not import the config layer above them."""

    def __init__(self, problems: list[str]) -> None:
        problems = [_one_line(p) for p in problems]
        super().__init__("\n".join(problems))
        self.problems = problems


def _one_line(text: str) -> str:
    text = " ".join(str(text).split("\n"))
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 3] + "..."
