"""The architecture-search YAML: the space, its constraints and the search settings, checked before anything runs.

Two forms of ``search_space`` (each value a list of choices, or one fixed value):

* a **stack** (document 000's form): a list of layer positions, each a block with ``layer_type`` (Conv,
  Transformer, Skip), ``channels`` (alias ``width``), ``depth``, ``activation``, ``kernel_size``, ``heads``,
  ``patch_size``; built by :func:`deepseek.search.nas.builders.nas_stack` for the base config's images;
* a **model family**: ``model:`` names a registered model (``simple_cnn``) or a builder by import path
  (``my_pkg.nets:build``, imported only because the user named it), and ``search_space`` maps its keyword
  arguments to choices.

Choice names: ``layers.<i>.<key>`` for a stack, the keyword for a model family. Sizes such as ``10M``,
``2.5k``, ``1G`` (also ``B``, ``T``) are parsed by :func:`parse_size`. Every error is one line naming the key,
the value and what is allowed (:class:`deepseek.errors.ConfigError`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepseek import registry as reg
from deepseek.errors import ConfigError
from deepseek.search.nas.algorithms import ALGORITHMS, make_searcher

STACK_MODEL = "nas_stack"
LAYER_TYPES = ("Conv", "Transformer", "Skip")
ACTIVATIONS = ("ReLU", "Swish", "SiLU", "GELU", "Tanh", "LeakyReLU", "ELU", "Hardswish", "Mish", "Sigmoid")
BLOCK_KEYS = ("layer_type", "channels", "depth", "activation", "kernel_size", "heads", "patch_size")
BLOCK_DEFAULTS: dict[str, Any] = {"depth": 1, "activation": "ReLU", "kernel_size": 3, "heads": 4, "patch_size": None}
LATENCY_MODES = ("measure", "table", "approximate_by_flops")
TOP_KEYS = ("search_space", "model", "constraints", "optimizer", "evaluation", "config")
CONSTRAINT_KEYS = ("max_params", "max_flops", "max_latency_ms", "target_device", "latency", "latency_table",
                   "device_flops", "latency_batch", "latency_threads")  # fmt: skip
EVALUATION_KEYS = ("epochs", "evaluator", "metric", "train_size", "val_size")
_SUFFIX = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "B": 10**9, "T": 10**12}
_SIZE = re.compile(r"^\s*([0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)\s*([kKMGBT]?)\s*$")


def parse_size(key: str, value: Any) -> float:
    """``10M`` -> 1e7, ``2.5k`` -> 2500, ``1G`` -> 1e9, ``300`` -> 300 (``B`` = ``G``, ``T`` = 1e12)."""
    if isinstance(value, bool):
        raise ConfigError([f"{key}: {value!r}; allowed: a positive number or a size such as 10M, 2.5k, 1G"])
    if isinstance(value, (int, float)) and value > 0:
        return float(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    if match is None or float(match.group(1).replace("_", "")) <= 0:
        raise ConfigError([f"{key}: {value!r}; allowed: a positive number or a size such as 10M, 2.5k, 1G "
                           f"(suffixes k/K, M, G or B, T)"])  # fmt: skip
    return float(match.group(1).replace("_", "")) * _SUFFIX[match.group(2)]


@dataclass
class Constraints:
    """Limits checked before training. ``target_device``: where latency counts (``cpu``, ``cuda``, ``cuda:1``,
    or a name such as ``v100``); ``latency``: ``measure`` (here), ``table`` (``latency_table``) or
    ``approximate_by_flops`` (forward FLOPs / ``device_flops`` FLOP/s)."""

    max_params: float | None = None
    max_flops: float | None = None
    max_latency_ms: float | None = None
    target_device: str = "cpu"
    latency: str | None = None  # None: measure where the device is here, else the table when one is given
    latency_table: Path | None = None
    device_flops: float | None = None
    latency_batch: int = 1
    latency_threads: int = 1  # CPU threads while timing: 1 is stable on a shared machine, more may spin-wait


@dataclass
class SearchSpace:
    """A parsed search: ``blocks`` (stack form, per position key -> choices) or ``model`` + ``kwargs``."""

    kind: str  # "stack" | "model"
    blocks: list[dict[str, list[Any]]] = field(default_factory=list)
    model: str = STACK_MODEL
    kwargs: dict[str, list[Any]] = field(default_factory=dict)
    constraints: Constraints = field(default_factory=Constraints)
    algorithm: str = "reinforce"
    sample_size: int = 100
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # the algorithm's own options
    evaluation: dict[str, Any] = field(default_factory=dict)
    config: str | dict[str, Any] | None = None  # the base run config (a path, or the config itself) the YAML names

    def choices(self) -> dict[str, list[Any]]:
        """Choice name -> values, for the searcher (fixed values are one-element lists)."""
        if self.kind == "model":
            return dict(self.kwargs)
        return {f"layers.{i}.{k}": v for i, block in enumerate(self.blocks) for k, v in block.items()}

    def block_list(self, candidate: dict[str, Any]) -> list[dict[str, Any]]:
        """A stack candidate as its blocks: ``[{layer_type, channels, depth, activation, ...}, ...]``,
        Skip positions left out."""
        blocks = []
        for i, block in enumerate(self.blocks):
            chosen = {**BLOCK_DEFAULTS, **{k: candidate[f"layers.{i}.{k}"] for k in block}}
            if chosen["layer_type"] != "Skip":
                blocks.append({k: v for k, v in chosen.items() if v is not None})  # patch_size None: the default
        return blocks


def _as_choices(key: str, value: Any) -> list[Any]:
    if isinstance(value, list):
        if not value:
            raise ConfigError([f"{key}: []; allowed: a non-empty list of choices or one fixed value"])
        if len({repr(v) for v in value}) != len(value):
            raise ConfigError([f"{key}: {value!r} repeats a choice; allowed: distinct choices"])
        return value
    if isinstance(value, dict):
        raise ConfigError([f"{key}: {value!r}; allowed: a list of choices or one fixed value"])
    return [value]


def _canonical(key: str, value: Any, allowed: tuple[str, ...]) -> str:
    """The allowed spelling of a name given in any case (``relu`` -> ``ReLU``)."""
    for name in allowed:
        if isinstance(value, str) and value.lower() == name.lower():
            return name
    raise ConfigError([f"{key}: {value!r}; allowed: {', '.join(allowed)}"])


def _positive_int(key: str, value: Any, *, allow_none: bool = False) -> Any:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError([f"{key}: {value!r}; allowed: a positive integer"])
    return value


def _parse_block(i: int, block: Any) -> dict[str, list[Any]]:
    where = f"search_space[{i}]"
    if not isinstance(block, dict):
        raise ConfigError(
            [f"{where}: {block!r}; allowed: a mapping of block keys ({', '.join(BLOCK_KEYS)}) to choices"]
        )
    block = dict(block)
    if "width" in block:  # an alias: the search space names what the block's output width is
        if "channels" in block:
            raise ConfigError([f"{where}: both 'channels' and 'width'; allowed: one of them (the same thing)"])
        block["channels"] = block.pop("width")
    for key in block:
        if key not in BLOCK_KEYS:
            raise ConfigError([f"{where}.{key}: unknown key; allowed: {', '.join(BLOCK_KEYS)} (width = channels)"])
    for key in ("layer_type", "channels"):
        if key not in block:
            raise ConfigError([f"{where}: '{key}' is missing; allowed keys: {', '.join(BLOCK_KEYS)}"])
    out = {}
    for key, value in block.items():
        choices = _as_choices(f"{where}.{key}", value)
        if key == "layer_type":
            choices = [_canonical(f"{where}.{key}", v, LAYER_TYPES) for v in choices]
        elif key == "activation":
            choices = [_canonical(f"{where}.{key}", v, ACTIVATIONS) for v in choices]
        else:
            choices = [_positive_int(f"{where}.{key}", v, allow_none=key == "patch_size") for v in choices]
        out[key] = choices
    if "heads" in out and any(c % h for c in out["channels"] for h in out["heads"]) and "Transformer" in out[
            "layer_type"]:  # fmt: skip
        bad = next((c, h) for c in out["channels"] for h in out["heads"] if c % h)
        raise ConfigError(
            [
                f"{where}.heads: {bad[1]} does not divide channels {bad[0]}; allowed: heads that "
                f"divide every channels choice (a Transformer block's width is split across heads)"
            ]
        )
    return out


def _parse_constraints(raw: Any) -> Constraints:
    if raw is None:
        return Constraints()
    if not isinstance(raw, dict):
        raise ConfigError([f"constraints: {raw!r}; allowed: a mapping with keys {', '.join(CONSTRAINT_KEYS)}"])
    for key in raw:
        if key not in CONSTRAINT_KEYS:
            raise ConfigError([f"constraints.{key}: unknown key; allowed: {', '.join(CONSTRAINT_KEYS)}"])
    c = Constraints()
    for key in ("max_params", "max_flops", "device_flops"):
        if raw.get(key) is not None:
            setattr(c, key, parse_size(f"constraints.{key}", raw[key]))
    if raw.get("max_latency_ms") is not None:
        c.max_latency_ms = parse_size("constraints.max_latency_ms", raw["max_latency_ms"])
    if raw.get("target_device") is not None:
        if not isinstance(raw["target_device"], str) or not raw["target_device"].strip():
            raise ConfigError([f"constraints.target_device: {raw['target_device']!r}; allowed: a device name "
                               f"such as cpu, cuda, cuda:0 or v100"])  # fmt: skip
        c.target_device = raw["target_device"].strip()
    if raw.get("latency") is not None:
        c.latency = _canonical("constraints.latency", raw["latency"], LATENCY_MODES)
    if raw.get("latency_table") is not None:
        c.latency_table = Path(str(raw["latency_table"]))
    for key in ("latency_batch", "latency_threads"):
        if key in raw:
            setattr(c, key, _positive_int(f"constraints.{key}", raw[key]))
    if c.latency == "approximate_by_flops" and c.device_flops is None:
        raise ConfigError(
            [
                "constraints.latency: approximate_by_flops needs constraints.device_flops (the device's "
                "FLOP/s, e.g. 15.7T for a V100's fp32 peak); allowed: a positive number or size"
            ]
        )
    if c.latency == "table" and c.latency_table is None:
        raise ConfigError(["constraints.latency: table needs constraints.latency_table (or --latency-table FILE); "
                           "allowed: a YAML or CSV file path"])  # fmt: skip
    return c


def _parse_optimizer(raw: Any, space: SearchSpace) -> None:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            [f"optimizer: {raw!r}; allowed: a mapping such as {{algorithm: reinforce, sample_size: 100}}"]
        )
    raw = dict(raw)
    if "algorithm" in raw:
        space.algorithm = _canonical("optimizer.algorithm", raw.pop("algorithm"), ALGORITHMS)
    if "sample_size" in raw:
        space.sample_size = _positive_int("optimizer.sample_size", raw.pop("sample_size"))
    if "seed" in raw:
        seed = raw.pop("seed")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ConfigError([f"optimizer.seed: {seed!r}; allowed: a non-negative integer"])
        space.seed = seed
    space.options = raw  # the rest: the algorithm's own options, checked by building a searcher


def check_algorithm(space: SearchSpace) -> None:
    """The algorithm's options, checked by building one searcher (``optimizer.<option>`` errors)."""
    try:
        make_searcher(space.algorithm, space.choices(), space.seed, **space.options)
    except (ValueError, TypeError) as exc:
        raise ConfigError([f"optimizer: {exc}"]) from None


def parse_space(raw: Any, source: str = "search space") -> SearchSpace:
    """A search from the YAML's parsed mapping (see the module docstring for the forms)."""
    if not isinstance(raw, dict):
        raise ConfigError([f"{source}: {type(raw).__name__}; allowed: a mapping with keys {', '.join(TOP_KEYS)}"])
    for key in raw:
        if key not in TOP_KEYS:
            raise ConfigError([f"{source}: {key}: unknown key; allowed: {', '.join(TOP_KEYS)}"])
    if "search_space" not in raw:
        raise ConfigError([f"{source}: search_space is missing; allowed: a list of blocks or a mapping of model "
                           f"arguments to choices"])  # fmt: skip
    model = raw.get("model") or STACK_MODEL
    if not isinstance(model, str):
        raise ConfigError([f"model: {model!r}; allowed: a registered model name or an import path 'pkg.module:fn'"])
    s = raw["search_space"]
    if isinstance(s, list):
        if model != STACK_MODEL:
            raise ConfigError([f"model: {model!r} with a list search_space; allowed: '{STACK_MODEL}' (a list is a "
                               f"stack of blocks) or a mapping search_space of {model}'s arguments"])  # fmt: skip
        if not s:
            raise ConfigError(["search_space: []; allowed: at least one block"])
        space = SearchSpace("stack", blocks=[_parse_block(i, b) for i, b in enumerate(s)])
    elif isinstance(s, dict) and s:
        if model == STACK_MODEL:
            raise ConfigError(["search_space: a mapping needs 'model' (a registered model such as simple_cnn or an "
                               "import path); allowed: model: <name> with it, or a list of blocks"])  # fmt: skip
        _check_model(model)
        space = SearchSpace("model", model=model, kwargs={k: _as_choices(f"search_space.{k}", v) for k, v in s.items()})
    else:
        raise ConfigError([f"search_space: {s!r}; allowed: a list of blocks or a mapping of model arguments"])
    space.constraints = _parse_constraints(raw.get("constraints"))
    _parse_optimizer(raw.get("optimizer"), space)
    space.evaluation = _parse_evaluation(raw.get("evaluation"))
    if raw.get("config") is not None:
        if not isinstance(raw["config"], (str, dict)):
            raise ConfigError([f"config: {raw['config']!r}; allowed: a run config's path or the run config itself"])
        space.config = raw["config"]
    check_algorithm(space)
    return space


def _check_model(name: str) -> None:
    try:
        reg.models.get(name)  # an import path is imported here: the user named it
    except reg.RegistryError as exc:
        raise ConfigError([f"model: {exc}"]) from None


def _parse_evaluation(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"evaluation: {raw!r}; allowed: a mapping with keys {', '.join(EVALUATION_KEYS)}"])
    for key, value in raw.items():
        if key not in EVALUATION_KEYS:
            raise ConfigError([f"evaluation.{key}: unknown key; allowed: {', '.join(EVALUATION_KEYS)}"])
        if key in ("epochs", "train_size", "val_size"):
            _positive_int(f"evaluation.{key}", value)
        elif not isinstance(value, str):
            raise ConfigError([f"evaluation.{key}: {value!r}; allowed: a string"])
    return dict(raw)


def load_space(path: str | Path) -> SearchSpace:
    """Read and parse a search YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"search space '{path}': file not found"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError([f"search space '{path}': not valid YAML: {str(exc).splitlines()[0]}"]) from None
    return parse_space(raw, f"search space '{path}'")
