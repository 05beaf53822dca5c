"""Whose code a config may name: configs found inside a model or run directory are data.

A config the user passes on the command line may name the user's own code (``model: {name: my_pkg:Net}``).
A config found inside a directory that is served or exported (``RUN/config.yaml``, a ``serve.yaml``) came
with that directory, possibly downloaded: importing a module it names runs that module's top-level code, so
its import paths are refused unless the operator passes ``--trust-code`` (as transformers does with
``trust_remote_code``). Registered names (``simple_cnn``) always work.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from deepseek import registry as reg
from deepseek.config.load import ConfigError, load_config, read_yaml
from deepseek.config.schema import Config

TRUST_FLAG = "--trust-code"
DIRECTORY_CODE = f"code named by a model directory runs only with {TRUST_FLAG}"

# component key -> the registry its name is looked up in
_SECTIONS = {"model": reg.models, "data": reg.datasets, "optim": reg.optimizers, "scheduler": reg.schedulers}


def component_names(raw: dict[str, Any]) -> Iterator[tuple[str, str, reg.Registry]]:
    """``(key, name, registry)`` of every component name in an unvalidated run config: ``model.name``,
    ``data.name``, ``data.preprocess[i]``, ``data.transforms[i]``, ``optim.name``, ``scheduler.name``,
    ``train.loss.name``, ``train.metrics[i].name``, ``callbacks[i].name``."""
    train = raw.get("train") if isinstance(raw.get("train"), dict) else {}
    specs: list[tuple[str, Any, reg.Registry]] = [(key, raw.get(key), r) for key, r in _SECTIONS.items()]
    specs.append(("train.loss", train.get("loss"), reg.losses))
    for key, items, r in (("train.metrics", train.get("metrics"), reg.metrics),
                          ("callbacks", raw.get("callbacks"), reg.callbacks)):  # fmt: skip
        specs += [(f"{key}[{i}]", item, r) for i, item in enumerate(items if isinstance(items, list) else [])]
    for key, spec, r in specs:
        if isinstance(spec, str):
            yield key, spec, r
        elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
            yield f"{key}.name", spec["name"], r
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key in ("preprocess", "transforms"):
        steps = data.get(key)
        for i, step in enumerate(steps if isinstance(steps, list) else []):
            name = step.get("type") if isinstance(step, dict) else step
            if isinstance(name, str):
                yield f"data.{key}[{i}]", name, reg.transforms


def named_code(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """``(key, import path)`` for each component named by import path rather than by a registered name."""
    return [(key, name) for key, name, r in component_names(raw) if reg.is_import_path(name) and name not in r]


def refuse_named_code(names: Iterable[tuple[str, str]], source: str) -> None:
    """Raise one ConfigError line per ``(key, import path)``: ``<source>: model.name 'x:Y' is an import
    path; code named by a model directory runs only with --trust-code``."""
    problems = [f"{source}: {key} {name!r} is an import path; {DIRECTORY_CODE}" for key, name in names]
    if problems:
        raise ConfigError(problems)


@contextmanager
def directory_code(trust_code: bool) -> Iterator[None]:
    """Around loading and building from a model directory: without ``trust_code`` the registries refuse
    every import path (whatever key names it), before anything is imported."""
    with nullcontext() if trust_code else reg.refusing_import_paths(DIRECTORY_CODE):
        yield


def load_directory_config(path: str | Path, overrides: Iterable[str] = (), *, trust_code: bool) -> Config:
    """``load_config`` for a config found inside a model or run directory (``RUN/config.yaml``): without
    ``trust_code`` a component named by import path is a :class:`ConfigError` naming its key and the flag.

    The file is checked before :func:`load_config` reads it again under :func:`directory_code`, so a
    name it did not list (a file changed in between, a dataset's ``dataset:`` argument) is refused too.
    """
    overrides = list(overrides)
    if not trust_code:
        refuse_named_code(named_code(read_yaml(path)), f"config '{path}'")
    with directory_code(trust_code):
        return load_config(path, overrides)
