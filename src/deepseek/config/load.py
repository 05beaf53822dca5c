"""YAML file + dotted command-line overrides -> a validated :class:`Config`, or one clear error.

Every problem becomes one line naming the file, the key path, the bad value and what is allowed;
the CLI prints them and exits with code 2, never with a traceback.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from deepseek import registry as reg
from deepseek.config.components import ComponentErrors, allowed_keys, validate_kwargs
from deepseek.config.schema import Component, Config, DataSection


class ConfigError(ValueError):
    """A config that cannot be used; ``problems`` holds one message per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 insists on ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A command-line override's value, read as YAML (``64`` -> int, ``1e-3`` -> float, ``[1,2]``)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config '{path}': file not found"])
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([f"config '{path}': not valid YAML{where}: {problem}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"config '{path}': not a UTF-8 text file ({exc.reason})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"config '{path}': the top level must be a mapping of sections, got {type(data).__name__}"])
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Set ``a.b.c=value`` overrides into ``data`` (in place); list items by index (``callbacks.0.name``)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError([f"{source}: override '{item}' is not of the form key.path=value"])
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: i + 1], item, source)
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, parts, item, source)] = parse_value(text)
        else:
            node[last] = parse_value(text)
    return data


def _child(node: Any, part: str, path: list[str], item: str, source: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path, item, source)]
    if not isinstance(node, dict):
        raise ConfigError([f"{source}: override '{item}': '{'.'.join(path[:-1])}' is not a section"])
    if node.get(part) is None:
        node[part] = {}
    return node[part]


def _index(node: list[Any], part: str, path: list[str], item: str, source: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError([f"{source}: override '{item}': '{'.'.join(path)}' needs an index below {len(node)}"])
    return int(part)


def load_config(
    path: str | Path | None, overrides: Iterable[str] = (), *, data: dict[str, Any] | None = None
) -> Config:
    """Read, override and validate a run config; raise :class:`ConfigError` listing every problem.

    The schema and each component's builder arguments are checked independently, so one run of
    ``deepseek config validate`` reports every bad key at once.
    """
    source = f"config '{path}'" if path is not None else "config"
    raw = read_yaml(path) if path is not None else dict(data or {})
    raw = apply_overrides(raw, overrides, source)
    problems, checked = check_components(raw, source)
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError([explain_error(source, err, Config) for err in exc.errors()] + problems) from None
    if problems:
        raise ConfigError(problems)
    for prefix, comp in _component_sections(cfg):
        for k, v in checked.get(prefix, {}).items():
            setattr(comp, k, v)  # builder arguments, type-coerced (e.g. "1e-3" -> 1e-3)
    return cfg


_DEFAULT_COMPONENTS = {"optim": "adamw", "train.loss": "cross_entropy"}
_REGISTRY_OF = {
    "model": reg.models,
    "data": reg.datasets,
    "optim": reg.optimizers,
    "scheduler": reg.schedulers,
    "train.loss": reg.losses,
    "train.metrics": reg.metrics,
    "callbacks": reg.callbacks,
}


def _raw_components(raw: dict[str, Any]) -> list[tuple[str, str, Any]]:
    """``(path, registry key, raw spec)`` of every component in an unvalidated config."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    found = [(key, key, raw.get(key, _DEFAULT_COMPONENTS.get(key))) for key in ("model", "data", "optim", "scheduler")]
    found.append(("train.loss", "train.loss", train.get("loss", "cross_entropy")))
    for key, items in (("train.metrics", train.get("metrics")), ("callbacks", raw.get("callbacks"))):
        if isinstance(items, list):
            found += [(f"{key}[{i}]", key, item) for i, item in enumerate(items)]
    return found


def _component_sections(cfg: Config) -> list[tuple[str, Component]]:
    found = [("model", cfg.model), ("data", cfg.data), ("optim", cfg.optim), ("train.loss", cfg.train.loss)]
    if cfg.scheduler is not None:
        found.append(("scheduler", cfg.scheduler))
    found += [(f"train.metrics[{i}]", m) for i, m in enumerate(cfg.train.metrics)]
    found += [(f"callbacks[{i}]", c) for i, c in enumerate(cfg.callbacks)]
    return found


def check_components(raw: dict[str, Any], source: str) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Check each component's builder arguments against its signature.

    Returns the problems and, per component path, the validated (coerced) arguments. Specs that are
    not a mapping with a string ``name`` are left to the schema's own errors.
    """
    problems: list[str] = []
    checked: dict[str, dict[str, Any]] = {}
    reserved = {"data": set(DataSection.model_fields)}  # loader settings, not dataset arguments
    for prefix, kind, spec in _raw_components(raw):
        spec = {"name": spec} if isinstance(spec, str) else spec
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            continue
        kwargs = {k: v for k, v in spec.items() if k not in reserved.get(kind, {"name"})}
        try:
            checked[prefix] = validate_kwargs(_REGISTRY_OF[kind], spec["name"], kwargs)
        except ComponentErrors as exc:
            for e in exc.errors:
                path = prefix + "." + ".".join(str(p) for p in e.path)
                if e.kind == "unknown_name":
                    problems.append(f"{source}: {path}: {e.message}")
                elif e.kind == "extra_forbidden":
                    problems.append(f"{source}: {_unknown_key(path, str(e.path[-1]), e.allowed or exc.allowed)}")
                else:
                    problems.append(f"{source}: {path}: {e.message} (got {e.value!r})")
    problems += _check_transforms(raw, source)
    return problems, checked


def _check_transforms(raw: dict[str, Any], source: str) -> list[str]:
    """Build each ``data.preprocess`` / ``data.transforms`` step once: a bad one is a config error with its path."""
    from deepseek.data.transforms import TransformError, build_transform  # data imports config: import late

    data = raw.get("data")
    problems = []
    for key in ("preprocess", "transforms"):
        specs = data.get(key) if isinstance(data, dict) else None
        for i, spec in enumerate(specs if isinstance(specs, list) else []):
            try:
                build_transform(spec)
            except TransformError as exc:
                problems.append(f"{source}: data.{key}[{i}]: {exc}")
    return problems


def explain_error(source: str, err: dict[str, Any], root: type[BaseModel]) -> str:
    """One pydantic error as ``source: key.path: what is wrong (got value)``, unknown keys with a close match."""
    loc = tuple(err["loc"])
    path = _dotted(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{source}: {_unknown_key(path, str(loc[-1]), allowed_keys(root, loc[:-1]))}"
    if kind == "missing":
        return f"{source}: {path}: required key is missing"
    if not loc:  # a model-level check (e.g. "set train.max_epochs or train.max_steps")
        return f"{source}: {err['msg'].removeprefix('Value error, ')}"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    got = "" if isinstance(value, dict) else f" (got {value!r})"  # a whole section: the message says it
    return f"{source}: {path}: {msg}{got}"


def _unknown_key(path: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    listed = ", ".join(allowed) if allowed else "none"
    return f"{path}: unknown key '{key}'{hint} allowed keys: {listed}"


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
