"""The ``data.streaming`` section: how a shard set (``data.shards``) is read, and byte sizes such as ``10GB``.

Kept apart from :mod:`deepseek.config.schema` (which holds it in ``DataSection``) so that file stays short.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, field_validator

# Binary units, as `deepseek data shard --shard-size` reads them (128MB = 128 MiB); KiB ... TiB say so explicitly.
_BYTE_UNITS = {"b": 1, "kb": 2**10, "mb": 2**20, "gb": 2**30, "tb": 2**40,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip
_BYTE_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


def parse_byte_size(value: Any) -> int:
    """A size in bytes from a positive integer or a string such as ``"10GB"``, ``"512MiB"``, ``"1.5 GB"``
    (binary units: 1KB = 1KiB = 1024 bytes); ValueError naming what is allowed otherwise."""
    allowed = "allowed: a positive number of bytes or a size such as 10GB, 512MB, 1.5GiB"
    if isinstance(value, bool):
        raise ValueError(allowed)
    if isinstance(value, int):
        size = value
    else:
        found = _BYTE_SIZE.match(str(value).lower()) if isinstance(value, (str, float)) else None
        if found is None or found.group(2) not in (*_BYTE_UNITS, ""):
            raise ValueError(f"not a size; {allowed}")
        size = int(float(found.group(1)) * _BYTE_UNITS[found.group(2) or "b"])
    if size <= 0:
        raise ValueError(f"must be positive; {allowed}")
    return size


class StreamingSection(BaseModel):
    """How ``data.shards`` is read: the local cache of remote or compressed shards, the shuffle and the
    download-ahead."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # as schema's sections

    cache_dir: Optional[str] = Field(
        default=None,
        description="Where remote or compressed shards are copied/decompressed to; null: "
        "`$DEEPSEEK_CACHE/shards/<hash of the URL>` (`~/.cache/deepseek` by default). Several processes may share one.",
    )
    cache_limit: Optional[int] = Field(
        default=None,
        description="Most bytes the cache holds (least recently used shards not in use are evicted): bytes or a "
        "size such as 10GB (binary units: 1GB = 2^30 bytes); null: no limit.",
    )
    shuffle_window: PositiveInt = Field(
        default=4, description="Shards whose samples are shuffled together (after the shards themselves are shuffled)."
    )
    prefetch: NonNegativeInt = Field(default=2, description="Shards downloaded ahead of use on a background thread.")
    on_corrupt: Literal["error", "skip"] = Field(
        default="error",
        description="A shard whose checksum does not match, or that is missing: stop with an error naming it "
        "(error), or warn once and leave its samples out of every rank's order alike (skip).",
    )

    @field_validator("cache_limit", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        return None if value is None else parse_byte_size(value)
