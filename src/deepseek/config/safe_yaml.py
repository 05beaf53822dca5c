"""Bounded YAML parsing for configs and command-line overrides.

A config is untrusted text: PyYAML alone lets nine levels of aliases expand to 387M strings
("billion laughs"), recurses once per nesting level (a ``RecursionError`` at a few hundred) and
silently keeps the last of two equal keys. :func:`load_bounded` refuses each with a
:class:`YAMLLimitError` that names the line, before anything expands.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20  # 1 MB: a real config is a few KB
MAX_DEPTH = 64  # nesting levels; PyYAML's composer recurses per level
MAX_NODES = 100_000  # values after alias expansion: bounds what validation and messages walk
MERGE_TAG = "tag:yaml.org,2002:merge"


class YAMLLimitError(yaml.YAMLError):
    """Text that exceeds a parsing bound or has a duplicate key; ``str()`` is one line."""


def _line(node_or_mark: Any) -> int:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return mark.line + 1 if mark is not None else 0


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader with bounded depth and alias expansion, duplicate keys refused, and ``1e-3`` read as a float
    (YAML 1.1 insists on ``1.0e-3``)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YAMLLimitError(
                    f"nesting deeper than {MAX_DEPTH} levels at line {_line(self.peek_event())}; configs are limited "
                    f"to {MAX_DEPTH}"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            _expanded_size(node, {})
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:  # before merge keys (<<) are flattened in: those may be overridden
                if key_node.tag == MERGE_TAG or not isinstance(key_node, ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    earlier = first_line.get(key)
                except TypeError:  # unhashable: the base constructor reports it
                    continue
                if earlier is not None:
                    raise YAMLLimitError(
                        f"duplicate key {_short(key)} at line {_line(key_node)} (first at line {earlier}); "
                        "give each key once"
                    )
                first_line[key] = _line(key_node)
        return super().construct_mapping(node, deep=deep)


BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _short(key: Any) -> str:
    text = repr(key) if not isinstance(key, str) else f"'{key}'"
    return text if len(text) <= 60 else text[:57] + "...'"


def _expanded_size(node: Node, sizes: dict[int, int | None]) -> int:
    """How many values ``node`` stands for once its aliases are expanded; raise beyond MAX_NODES or on a
    cycle. ``sizes`` memoizes shared (aliased) nodes, so this walks each node once. Depth is bounded by the
    composer, so the recursion here is too."""
    key = id(node)
    if key in sizes:
        size = sizes[key]
        if size is None:
            raise YAMLLimitError(f"a recursive alias at line {_line(node)}: an anchor used inside its own value")
        return size
    sizes[key] = None  # in progress
    size = 1
    if isinstance(node, SequenceNode):
        size += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, MappingNode):
        size += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    if size > MAX_NODES:
        raise YAMLLimitError(
            f"aliases at line {_line(node)} expand to more than {MAX_NODES} values; configs are limited to "
            f"{MAX_NODES} (an alias bomb?)"
        )
    sizes[key] = size
    return size


def check_size(size: int, what: str) -> None:
    """Refuse ``size`` bytes of text over :data:`MAX_BYTES` before reading or parsing it."""
    if size > MAX_BYTES:
        raise YAMLLimitError(f"{what} is {size / 1e6:.1f} MB; configs are limited to 1 MB")


def load_bounded(text: str) -> Any:
    """``yaml.safe_load`` within the bounds above; raises :class:`YAMLLimitError` or ``yaml.YAMLError``."""
    check_size(len(text.encode("utf-8", "replace")), "the text")
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
