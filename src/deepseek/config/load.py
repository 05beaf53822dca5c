"""YAML file + dotted command-line overrides -> a validated :class:`Config`, or one clear error.

Every problem becomes one line naming the file, the key path, the bad value and what is allowed;
the CLI prints them and exits with code 2, never with a traceback.
"""

from __future__ import annotations

import difflib
import math
import re
import reprlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from deepseek import registry as reg
from deepseek.components import ComponentErrors, allowed_keys, validate_kwargs
from deepseek.config.safe_yaml import MAX_BYTES, MAX_DEPTH, YAMLLimitError, check_size, load_bounded
from deepseek.config.schema import OPTIMIZER_ARG_BOUNDS, Component, Config, DataSection
from deepseek.errors import MAX_LINE, ConfigError  # noqa: F401  (ConfigError is defined low: data raises it too)
from deepseek.models import template_kwargs

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3
_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")


def shown(value: Any) -> str:
    """``repr(value)`` cut to a few dozen characters, without building the whole repr of a huge value."""
    return _REPR.repr(value)


def parse_value(text: str) -> Any:
    """A command-line override's value, read as YAML (``64`` -> int, ``1e-3`` -> float, ``[1,2]``).

    Within the same bounds as a config file: raises ``YAMLLimitError``; other unparsable text stays a string.
    """
    try:
        return load_bounded(text)
    except YAMLLimitError:
        raise
    except yaml.YAMLError:
        return text


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config '{path}': file not found"])
    try:
        check_size(path.stat().st_size, "the file")  # before reading: a 50 MB file is never loaded
        data = load_bounded(path.read_text(encoding="utf-8"))
    except YAMLLimitError as exc:
        raise ConfigError([f"config '{path}': {exc}"]) from None
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
        if len(item) > MAX_BYTES:  # before anything else looks at it (or prints it)
            raise ConfigError([f"{source}: override '{key[:60]}=...' is {len(item) / 1e6:.1f} MB; limited to 1 MB"])
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError([f"{source}: override '{item}' is not of the form key.path=value"])
        parts = key.split(".")
        if len(parts) > MAX_DEPTH:
            raise ConfigError([f"{source}: override '{key[:60]}...': key path nests {len(parts)} levels; "
                               f"configs are limited to {MAX_DEPTH}"])  # fmt: skip
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, parts[: i + 1], item, source)
        if not isinstance(node, (dict, list)):  # `optim.lr.x=1`: lr holds a value, not keys
            raise ConfigError([f"{source}: override '{item}': '{'.'.join(parts[:-1])}' is a value "
                               f"({shown(node)}), not a section with keys"])  # fmt: skip
        try:
            value = parse_value(text)
        except YAMLLimitError as exc:
            raise ConfigError([f"{source}: override {key}: {exc}"]) from None
        last = parts[-1]
        if isinstance(node, list):
            node[_index(node, last, parts, item, source)] = value
        else:
            node[last] = value
    return data


def _child(node: Any, part: str, path: list[str], item: str, source: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, path, item, source)]
    if not isinstance(node, dict):
        raise ConfigError([f"{source}: override '{item}': '{'.'.join(path[:-1])}' is a value "
                           f"({shown(node)}), not a section with keys"])  # fmt: skip
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
    problems += parallel_problems(cfg, source)
    if problems:
        raise ConfigError(problems)
    for prefix, comp in _component_sections(cfg):
        for k, v in checked.get(prefix, {}).items():
            setattr(comp, k, v)  # builder arguments, type-coerced (e.g. "1e-3" -> 1e-3)
    return cfg


_REPLICATED_STRATEGIES = ("auto", "ddp", "single_device", "single")  # what parallel.zero_stage 0 agrees with


def parallel_problems(cfg: Config, source: str) -> list[str]:
    """``parallel`` and an explicit ``train.strategy`` must agree: pp > 1 goes with auto/pipeline, ep > 1 with
    auto/expert_parallel, else zero_stage 0 with auto/ddp/single_device and 1-3 with auto/fsdp (and fsdp's own arguments, where given, must equal parallel's). The world size is not
    known here: the degrees are checked against it by ``deepseek plan`` and at the start of every run."""
    par, strategy = cfg.parallel, cfg.train.strategy
    if par is None or strategy.name.lower() == "auto":
        return []
    name = strategy.name.lower()
    # What strategy_spec picks: pipeline under pp, expert_parallel under ep, else by the ZeRO stage.
    selected = ("pipeline" if par.pp > 1 else "expert_parallel" if par.ep > 1
                else "ddp" if par.zero_stage == 0 else "fsdp")  # fmt: skip
    allowed = _REPLICATED_STRATEGIES if selected == "ddp" else ("auto", selected)
    if name not in allowed:
        why = f"pp: {par.pp}" if par.pp > 1 else f"ep: {par.ep}" if par.ep > 1 else f"zero_stage: {par.zero_stage}"
        return [f"{source}: train.strategy: {shown(strategy.name)} contradicts parallel.{why}, "
                f"which selects '{selected}'; allowed: train.strategy one of {', '.join(allowed)}, or remove one "
                "of the two"]  # fmt: skip
    own = par.model_dump()
    return [f"{source}: train.strategy.{key}: {shown(value)} contradicts parallel.{key}: {shown(own[key])}; "
            "give it in one place"
            for key, value in strategy.kwargs.items() if key in own and value != own[key]]  # fmt: skip


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
        if bad_name := _bad_name(_REGISTRY_OF[kind], spec["name"]):
            problems.append(f"{source}: {prefix}.name: {bad_name}")
            continue
        try:
            if kind == "model":  # the model's template fills what the config leaves out, as ds.models.build does
                given = validate_kwargs(reg.models, spec["name"], {**template_kwargs(spec["name"]), **kwargs})
                checked[prefix] = {k: v for k, v in given.items() if k in kwargs}  # the config keeps its own keys
            else:
                checked[prefix] = validate_kwargs(_REGISTRY_OF[kind], spec["name"], kwargs)
            found = [f"{source}: {prefix}.{p}" for p in _non_finite(checked[prefix])]
            if kind == "optim" and not found:
                found = [f"{source}: {prefix}{p}" for p in _check_optimizer(spec["name"], checked[prefix])]
            problems += found
        except ComponentErrors as exc:
            for e in exc.errors:
                path = prefix + "." + ".".join(str(p) for p in e.path)
                if e.kind == "unknown_name":
                    problems.append(f"{source}: {path}: {e.message}")
                elif e.kind == "extra_forbidden":
                    problems.append(f"{source}: {_unknown_key(path, str(e.path[-1]), e.allowed or exc.allowed)}")
                else:
                    problems.append(f"{source}: {path}: {e.message} (got {shown(e.value)})")
    problems += _check_transforms(raw, source)
    return problems, checked


def _bad_name(registry: reg.Registry, name: str) -> str | None:
    """Why ``name`` can be neither a registered name nor an import path (``../../etc/passwd``), or None."""
    if len(name) > 200:
        return f"a name of {len(name)} characters ({shown(name)}); names and import paths are shorter than 200"
    if reg.is_import_path(name) and name not in registry and not _IMPORT_PATH.match(name):
        return (f"{shown(name)} is neither a registered name nor an import path; allowed: a name from "
                f"`deepseek list {registry.kind}`, or an import path such as 'my_pkg.module:Name'")  # fmt: skip
    return None


def _non_finite(value: Any, path: str = "") -> list[str]:
    """``key: must be a finite number (got inf)`` for each inf/nan float in builder arguments (``1e400`` too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{path}: must be a finite number (got {value!r})"]
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    found = []
    for key, item in items:
        found += _non_finite(item, f"{path}.{key}" if path and isinstance(key, str) else f"{path}[{key}]" if path
                             else str(key))  # fmt: skip
    return found


def _check_optimizer(name: str, kwargs: dict[str, Any]) -> list[str]:
    """Bounds torch checks only when the optimizer is built (``betas``, ``eps``, ...), checked now: first the
    known keys with their allowed range, then a build over one dummy parameter for the optimizer's own checks."""
    import torch

    problems = []
    for key, (ok, allowed) in OPTIMIZER_ARG_BOUNDS.items():
        if key in kwargs and not ok(kwargs[key]):
            problems.append(f".{key}: {allowed} (got {shown(kwargs[key])})")
    if problems:
        return problems
    try:
        reg.optimizers.build(name, [torch.nn.Parameter(torch.zeros(1))], **kwargs)
    except ValueError as exc:  # torch.optim's own argument checks
        args = ", ".join(f"{k}={shown(v)}" for k, v in kwargs.items())
        return [f" ({name}): the optimizer refuses its arguments ({args}): {exc}"]
    except Exception:  # noqa: BLE001 - e.g. fused=True wants a GPU parameter: left to the real build
        pass
    return []


def _check_transforms(raw: dict[str, Any], source: str) -> list[str]:
    """Build each ``data.preprocess`` / ``data.transforms`` step once: a bad one is a config error with its path."""
    from deepseek.data.transforms import TransformError, build_transform  # heavy: only for configs with transforms

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
    got = "" if isinstance(value, dict) else f" (got {shown(value)})"  # a whole section: the message says it
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
