"""JSON-like Python values <-> ``google.protobuf.Value`` / ``ListValue`` / ``Struct``, for both ends of gRPC.

``Value`` has one number type, a double: whole numbers come back as ``int`` (when ``|x| <= 2**53``, where a
double holds every integer exactly), so ``{"max_new_tokens": 8}`` reaches the model as the int it was and a
predicted class index reads as it does over REST (``3``, not ``3.0``). A float that happens to be whole
(``1.0``) also reads back as ``1``, equal to it in Python.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

EXACT = 2**53


def to_list_value(items: Any) -> struct_pb2.ListValue:
    """A list (of numbers, strings, bools, None, lists and dicts) as a ``ListValue``."""
    out = struct_pb2.ListValue()
    out.extend(items)  # protobuf's own conversion, recursive; a non-JSON value raises ValueError
    return out


def to_struct(mapping: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(mapping)
    return out


def to_value(x: Any) -> struct_pb2.Value:
    out = struct_pb2.Value()
    if isinstance(x, dict):
        out.struct_value.update(x)
    elif isinstance(x, (list, tuple)):
        out.list_value.extend(x)
    else:
        out.list_value.extend([x])  # scalars: the same checks as inside a list, then unwrapped
        out = out.list_value.values[0]
    return out


def from_value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "number_value":
        x = v.number_value
        return int(x) if x.is_integer() and -EXACT <= x <= EXACT else x
    if kind == "string_value":
        return v.string_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "list_value":
        return from_list_value(v.list_value)
    if kind == "struct_value":
        return from_struct(v.struct_value)
    return None  # null_value, or a Value left empty


def from_list_value(lv: struct_pb2.ListValue) -> list[Any]:
    return [from_value(v) for v in lv.values]


def from_struct(s: struct_pb2.Struct) -> dict[str, Any]:
    return {k: from_value(v) for k, v in s.fields.items()}
