"""Errors every layer may raise, kept at the bottom of the package so that any module can import them.

The CLI reports these as one ``error:`` line with exit code 2: they are about the user's environment or
inputs, not defects of the framework (whose errors keep their traceback).
"""

from __future__ import annotations


class MissingDependency(ModuleNotFoundError):
    """An optional package or a system tool a feature needs is not installed; the message says how to get it."""
