"""A refusal of any transport: an HTTP status, a one-line message and headers (REST sends them as they are,
gRPC maps the status to its own code)."""

from __future__ import annotations


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers
