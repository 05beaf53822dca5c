"""The CLI's user-error type: printed as ``error: ...`` with exit code 2, never as a traceback."""


class UsageError(Exception):
    """A user mistake reported as ``error: ...`` with exit code 2."""
