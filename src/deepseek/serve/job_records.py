"""What both job stores share: the states, a job as ``get()`` shows it, and the Idempotency-Key check.

Kept apart from :mod:`deepseek.serve.jobs` (SQLite, and ``open_job_store``) so that
:mod:`deepseek.serve.jobs_pg` (PostgreSQL) can use them without an import cycle between the two stores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL = ("succeeded", "failed", "cancelled")
VIEW_KEYS = ("id", "model", "version", "status", "created", "started", "finished", "attempts", "crashes")


class IdempotencyConflict(ValueError):
    """An ``Idempotency-Key`` already names a job made from a different request (answered with 409)."""


def canonical_request(request: dict[str, Any]) -> str:
    """The request as compared for an ``Idempotency-Key``: JSON with sorted keys, whole numbers as integers.

    gRPC's ``google.protobuf.Value`` carries every number as a double (read back as an int when whole) where REST's
    JSON keeps ``1.0``: a retry of one request over the other transport must still be the same request."""
    return json.dumps(_whole_as_int(request), sort_keys=True)


def _whole_as_int(x: Any) -> Any:
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, dict):
        return {k: _whole_as_int(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_whole_as_int(v) for v in x]
    return x


def check_same_request(row: Mapping[str, Any], model: str, version: str | None, request: dict[str, Any],
                       key: str) -> str:  # fmt: skip
    """The id of ``row`` (the job stored under ``key``), or :class:`IdempotencyConflict` when it was made from
    another model, version or request."""
    same = (row["model"], row["version"]) == (model, version)
    if not same or canonical_request(json.loads(row["request"])) != canonical_request(request):
        raise IdempotencyConflict(f"Idempotency-Key '{key}' was used for job {row['id']} with a different "
                                  "model, version or request body; send a new key for a new job")  # fmt: skip
    return row["id"]


def job_view(row: Mapping[str, Any], with_request: bool = False) -> dict[str, Any]:
    """A stored row as ``get()`` returns it, the same keys on both stores: ``VIEW_KEYS``, then
    ``idempotency_key`` when set, ``result`` once succeeded, ``error`` when set, ``request`` if asked."""
    out = {k: row[k] for k in VIEW_KEYS}
    if row["idempotency_key"] is not None:
        out["idempotency_key"] = row["idempotency_key"]
    if row["status"] == "succeeded":
        out["result"] = json.loads(row["result"])
    if row["error"] is not None:
        out["error"] = row["error"]
    if with_request:
        out["request"] = json.loads(row["request"])
    return out
