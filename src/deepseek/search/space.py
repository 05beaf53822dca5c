"""A hyper-parameter search space from YAML: dotted config keys -> Optuna distributions, with conditions.

The file maps config keys (as ``key.path=value`` overrides name them) to one parameter each::

    optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
    model.width: {type: int, low: 16, high: 64, step: 16}
    optim.name: {type: categorical, choices: [adamw, sgd]}
    optim.momentum: {type: float, low: 0.0, high: 0.99, when: {optim.name: sgd}}

``float``: ``low``, ``high``, ``log`` (default false) or ``step`` (a grid, not with ``log``); ``int``: the same
with ``step`` default 1; ``categorical``: ``choices`` (None, booleans, numbers, strings; lists are allowed
too and are passed to Optuna as their YAML text). ``when: {PARAM: VALUE or [VALUES]}`` samples a parameter
only in trials where each named parameter (of this space, categorical or int) took one of those values.

Optuna parses none of this (its distributions come from ``suggest_*`` calls in code), so the parsing and the
errors are written here: every problem is one line naming the file, the key, the value and what is allowed,
raised as :class:`~deepseek.errors.ConfigError` like a bad config. :func:`check_against_config` applies each
parameter's extreme values as overrides to the run config, so a key the config does not accept is reported
with the config's own message (and its allowed keys) before any trial starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from deepseek.config.load import ConfigError, load_config, read_yaml, shown

TYPES = ("float", "int", "categorical")
_FIELDS = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
}
_SCALAR = (type(None), bool, int, float, str)  # what Optuna's CategoricalDistribution stores as it is


@dataclass(frozen=True)
class Param:
    """One searched config key: its Optuna distribution and the conditions under which it is sampled.

    ``when`` maps another parameter's key to the values that make this one active; ``encoded`` is True for a
    categorical parameter whose choices (lists) are given to Optuna as YAML text and decoded in :func:`suggest`.
    """

    key: str
    distribution: BaseDistribution
    when: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    encoded: bool = False

    def extremes(self) -> list[Any]:
        """The values that bound this parameter (low and high, or every choice): what the config must accept."""
        d = self.distribution
        if isinstance(d, CategoricalDistribution):
            return [decode(c) if self.encoded else c for c in d.choices]
        return [d.low, d.high]


@dataclass(frozen=True)
class SearchSpace:
    """The parameters in sampling order (a condition's parameter before those it conditions); ``raw`` is the
    file's mapping as read (kept in ``study.json``), ``source`` names it in errors."""

    params: tuple[Param, ...]
    raw: dict[str, Any]
    source: str = "space"

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def is_conditional(self) -> bool:
        return any(p.when for p in self.params)

    def all_numeric(self) -> bool:
        return all(not isinstance(p.distribution, CategoricalDistribution) for p in self.params)


def encode(value: Any) -> str:
    """A list choice as the YAML flow text Optuna stores (and an override's value reads back)."""
    return yaml_text(value)


def decode(text: Any) -> Any:
    return yaml.safe_load(text) if isinstance(text, str) else text


def yaml_text(value: Any) -> str:
    """``value`` as the text of a ``key=value`` override that reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20)
    return text[: -len("\n...\n")] if text.endswith("\n...\n") else text.rstrip("\n")


def load_space(source: str | Path | Mapping[str, Any]) -> SearchSpace:
    """Parse a space YAML file (or an already-read mapping); raises ConfigError listing every bad parameter."""
    if isinstance(source, Mapping):
        raw, name = dict(source), "space"
    else:
        name = f"space '{source}'"
        try:
            raw = read_yaml(source)
        except ConfigError as exc:  # read_yaml names the file a config: say space (missing file, bad YAML)
            raise ConfigError([p.replace(f"config '{source}'", name, 1) for p in exc.problems]) from None
    if not raw:
        raise ConfigError([f"{name}: no parameters; give at least one, e.g. optim.lr: {{type: float, low: 1.0e-4, "
                           "high: 1.0e-1, log: true}"])  # fmt: skip
    problems: list[str] = []
    params: dict[str, Param] = {}
    for key, spec in raw.items():
        try:
            params[str(key)] = _parse_param(str(key), spec, name)
        except ConfigError as exc:
            problems += exc.problems
    if not problems:
        problems += _check_conditions(params, name)
    if problems:
        raise ConfigError(problems)
    return SearchSpace(tuple(_ordered(params)), raw, name)


def _parse_param(key: str, spec: Any, name: str) -> Param:
    where = f"{name}: {key}"
    if not key or any(not part for part in key.split(".")) or "=" in key:
        raise ConfigError([f"{name}: key {shown(key)} is not a dotted config key such as optim.lr"])
    if not isinstance(spec, dict):
        raise ConfigError([f"{where}: {shown(spec)} is not a mapping; expected e.g. {{type: float, low: 1.0e-4, "
                           "high: 1.0e-1, log: true}"])  # fmt: skip
    kind = spec.get("type")
    if kind not in TYPES:
        raise ConfigError([f"{where}.type: {shown(kind)} is not allowed; allowed: {', '.join(TYPES)}"])
    unknown = sorted(set(spec) - set(_FIELDS[kind]), key=str)
    if unknown:
        raise ConfigError([f"{where}: unknown field {shown(unknown[0])} for type {kind}; allowed: "
                           f"{', '.join(_FIELDS[kind])}"])  # fmt: skip
    when = _parse_when(spec.get("when"), where)
    if kind == "categorical":
        return _categorical(key, spec, where, when)
    return Param(key, _numeric(kind, spec, where), when)


def _numeric(kind: str, spec: dict[str, Any], where: str) -> BaseDistribution:
    number = (int,) if kind == "int" else (int, float)
    for bound in ("low", "high"):
        value = spec.get(bound)
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            what = "an integer" if kind == "int" else "a finite number"
            raise ConfigError([f"{where}.{bound}: {shown(value)} is not allowed; expected {what}"])
    low, high = spec["low"], spec["high"]
    if not low < high:
        raise ConfigError([f"{where}: low {shown(low)} must be below high {shown(high)}"])
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError([f"{where}.log: {shown(log)} is not allowed; expected true or false"])
    if log and low <= 0:
        raise ConfigError([f"{where}.low: {shown(low)} is not allowed with log: true; expected a number above 0"])
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, number) or not step > 0:
            what = "a positive integer" if kind == "int" else "a positive number"
            raise ConfigError([f"{where}.step: {shown(step)} is not allowed; expected {what}"])
        if log and not (kind == "int" and step == 1):
            raise ConfigError([f"{where}: step {shown(step)} and log: true exclude each other; give one of them"])
    if kind == "int":
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(float(low), float(high), log=log, step=None if step is None else float(step))


def _categorical(key: str, spec: dict[str, Any], where: str, when: dict[str, tuple[Any, ...]]) -> Param:
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise ConfigError([f"{where}.choices: {shown(choices)} is not allowed; expected a non-empty list"])
    bad = [c for c in choices if not isinstance(c, (*_SCALAR, list))]
    if bad:
        raise ConfigError([f"{where}.choices: {shown(bad[0])} is not allowed; expected null, true/false, numbers, "
                           "strings or lists"])  # fmt: skip
    encoded = any(isinstance(c, list) for c in choices)
    stored = [encode(c) for c in choices] if encoded else list(choices)
    if len(set(map(repr, stored))) != len(stored):
        raise ConfigError([f"{where}.choices: {shown(choices)} repeats a value; each choice once"])
    return Param(key, CategoricalDistribution(stored), when, encoded)


def _parse_when(when: Any, where: str) -> dict[str, tuple[Any, ...]]:
    if when is None:
        return {}
    if not isinstance(when, dict) or not when:
        raise ConfigError([f"{where}.when: {shown(when)} is not allowed; expected a mapping PARAM: VALUE or "
                           "PARAM: [VALUES], e.g. {optim.name: sgd}"])  # fmt: skip
    return {str(k): tuple(v) if isinstance(v, list) else (v,) for k, v in when.items()}


def _check_conditions(params: dict[str, Param], name: str) -> list[str]:
    problems = []
    for p in params.values():
        for parent, values in p.when.items():
            where = f"{name}: {p.key}.when.{parent}"
            other = params.get(parent)
            if other is None or other is p:
                allowed = ", ".join(k for k in params if k != p.key) or "(none: this is the only parameter)"
                problems.append(f"{where}: not another parameter of this space; allowed: {allowed}")
                continue
            d = other.distribution
            if isinstance(d, CategoricalDistribution):
                choices = other.extremes()
                problems += [f"{where}: {shown(v)} is not one of its choices {shown(choices)}"
                             for v in values if v not in choices]  # fmt: skip
            elif isinstance(d, IntDistribution):
                problems += [f"{where}: {shown(v)} is not allowed; expected an integer in [{d.low}, {d.high}]"
                             for v in values if isinstance(v, bool) or not isinstance(v, int)
                             or not d.low <= v <= d.high]  # fmt: skip
            else:
                problems.append(f"{where}: conditions name a categorical or int parameter; {parent} is a float")
    if not problems and (cycle := _find_cycle(params)):
        problems.append(f"{name}: the conditions form a cycle ({' -> '.join(cycle)}); a parameter cannot depend on "
                        "itself")  # fmt: skip
    return problems


def _find_cycle(params: dict[str, Param]) -> list[str] | None:
    """A cycle of conditions, found by a depth-first search over every condition edge (a parameter may depend
    on several), or None."""
    state: dict[str, int] = {}

    def visit(key: str, path: list[str]) -> list[str] | None:
        state[key] = 1
        for parent in params[key].when:
            if state.get(parent) == 1:
                return path[path.index(parent) :] + [parent] if parent in path else [key, parent]
            if state.get(parent) is None and (found := visit(parent, [*path, parent])):
                return found
        state[key] = 2
        return None

    for key in params:
        if state.get(key) is None and (found := visit(key, [key])):
            return found
    return None


def _ordered(params: dict[str, Param]) -> list[Param]:
    """Parents before the parameters they condition (the file's order otherwise)."""
    done: dict[str, Param] = {}

    def add(p: Param) -> None:
        for parent in p.when:
            if parent not in done:
                add(params[parent])
        done.setdefault(p.key, p)

    for p in params.values():
        add(p)
    return list(done.values())


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample ``trial``'s value of every parameter active in it (its conditions met), in sampling order."""
    values: dict[str, Any] = {}
    for p in space.params:
        if all(parent in values and values[parent] in allowed for parent, allowed in p.when.items()):
            value = _suggest_one(trial, p)
            values[p.key] = decode(value) if p.encoded else value
    return values


def _suggest_one(trial: optuna.Trial, p: Param) -> Any:
    d = p.distribution
    if isinstance(d, FloatDistribution):
        return trial.suggest_float(p.key, d.low, d.high, log=d.log, step=d.step)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(p.key, d.low, d.high, log=d.log, step=d.step)
    return trial.suggest_categorical(p.key, d.choices)  # type: ignore[attr-defined]


def as_overrides(values: Mapping[str, Any]) -> list[str]:
    """Sampled values as ``key=value`` config overrides."""
    return [f"{key}={yaml_text(value)}" for key, value in values.items()]


def check_against_config(space: SearchSpace, config: str | Path, overrides: Iterable[str] = ()) -> None:
    """Raise ConfigError unless the config (with ``overrides``) accepts every parameter at each of its bounds
    (every choice), with the parameters it is conditioned on set so that it is active."""
    overrides = list(overrides)
    load_config(config, overrides)  # the base config's own errors first, as they are
    by_key = {p.key: p for p in space.params}
    problems: list[str] = []
    for p in space.params:
        context = as_overrides(_activating(p, by_key))
        for value in p.extremes():
            try:
                load_config(config, [*overrides, *context, *as_overrides({p.key: value})])
            except ConfigError as exc:
                problems.append(f"{space.source}: {p.key}={yaml_text(value)}: {exc.problems[0]}")
                break  # one line per parameter
    if problems:
        raise ConfigError(problems)


def _activating(p: Param, by_key: dict[str, Param]) -> dict[str, Any]:
    """Values of the parameters above ``p`` (recursively) that make ``p`` active: the first allowed of each."""
    values: dict[str, Any] = {}
    for parent, allowed in p.when.items():
        values.update(_activating(by_key[parent], by_key))
        values[parent] = allowed[0]
    return values
