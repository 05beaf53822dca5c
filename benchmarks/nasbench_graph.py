"""NAS-Bench-Graph (Qin et al., NeurIPS 2022) as a table a NAS searcher can query.

The pip package ``nas-bench-graph`` ships, per graph dataset, a look-up table of the 26,206 unique GNN
architectures of its space: validation and test performance, latency and parameter count
(``nas_bench_graph/light/<dataset>.bench``). Nothing is trained and nothing is downloaded.

The space (the package README): a DAG of 4 computing nodes, each with one input (0 = the graph's input
features, k = computing node k, so node i picks from 0..i) and one operation out of 9 (``gnn_list``);
leaves feed the output. Here that is 7 categorical choices for ``make_searcher``: ``in1`` in [0, 1],
``in2`` in [0, 1, 2], ``in3`` in [0, 1, 2, 3] (node 0 always reads the input) and ``op0..op3``. Many raw
choices describe the same graph; the package's ``Arch.valid_hash()`` canonicalizes them (isomorphism,
skip-op moves) to the table key. A raw choice with no table entry (e.g. all four ops ``skip``, which the
authors left out) is "invalid": the benchmark tells the searcher ``None`` and counts it.

Why a hand-written loader: the package's ``light_read`` calls ``pickle.load`` on the data file, and
unpickling can run any callable the file names. The tables need only dicts, floats, ints, strings and
``numpy.float64`` scalars (the ``para`` field), so ``SafeTableUnpickler`` resolves exactly two globals,
``numpy.core.multiarray.scalar`` and ``numpy.dtype``, to local functions that decode an 8-byte float
(struct) and refuse every other dtype; any other global in a file raises ``pickle.UnpicklingError``. No
code from a data file runs.
"""

from __future__ import annotations

import functools
import io
import pickle
import statistics
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASETS = ("cora", "citeseer", "pubmed", "cs", "physics", "photo", "computers", "arxiv")  # proteins: other op set
FIELDS = ("valid_perf", "perf", "latency", "para")


class _Float64Dtype:
    """What ``numpy.dtype('f8', False, True)`` unpickles to here: only its byte order is kept."""

    def __init__(self, name: str, align: bool = False, copy: bool = True) -> None:
        if name != "f8":
            raise pickle.UnpicklingError(f"table dtype {name!r} refused: only 'f8' (float64) is allowed")
        self.byteorder = "<"

    def __setstate__(self, state: tuple) -> None:
        if not isinstance(state, tuple) or len(state) < 2 or state[1] not in ("<", ">", "|", "="):
            raise pickle.UnpicklingError(f"float64 dtype state {state!r} not understood")
        self.byteorder = ">" if state[1] == ">" else "<"


def _float64_scalar(dtype: _Float64Dtype, raw: bytes) -> float:
    if not isinstance(dtype, _Float64Dtype) or not isinstance(raw, bytes) or len(raw) != 8:
        raise pickle.UnpicklingError("a numpy scalar in the table is not an 8-byte float64")
    return struct.unpack(dtype.byteorder + "d", raw)[0]


class SafeTableUnpickler(pickle.Unpickler):
    """Unpickles builtins containers and numbers; numpy float64 scalars become Python floats."""

    _ALLOWED = {
        ("numpy.core.multiarray", "scalar"): _float64_scalar,
        ("numpy._core.multiarray", "scalar"): _float64_scalar,
        ("numpy", "dtype"): _Float64Dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} refused in a benchmark table") from None


def package_dir() -> Path:
    import nas_bench_graph  # the package's own modules are code we install, not data; only its tables are data

    return Path(nas_bench_graph.__file__).resolve().parent


def load_table(dataset: str) -> dict[int, dict[str, float]]:
    """The light table of ``dataset``: canonical hash -> {valid_perf, perf, latency, para} as floats."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r}: allowed {', '.join(DATASETS)}")
    raw = (package_dir() / "light" / f"{dataset}.bench").read_bytes()
    table = SafeTableUnpickler(io.BytesIO(raw)).load()
    if not isinstance(table, dict):
        raise ValueError(f"{dataset}.bench holds a {type(table).__name__}, not a dict")
    out: dict[int, dict[str, float]] = {}
    for key, info in table.items():
        if not isinstance(key, int) or not isinstance(info, dict) or any(f not in info for f in FIELDS):
            raise ValueError(f"{dataset}.bench entry {key!r} lacks one of {FIELDS}")
        out[key] = {f: float(info[f]) for f in FIELDS}
    return out


def search_choices() -> dict[str, list[Any]]:
    """The 7 categorical choices (name -> options) that span the space."""
    from nas_bench_graph.architecture import gnn_list

    return {"in1": [0, 1], "in2": [0, 1, 2], "in3": [0, 1, 2, 3], **{f"op{i}": list(gnn_list) for i in range(4)}}


@functools.cache
def _canonical(links: tuple[int, ...], ops: tuple[str, ...]) -> int | None:
    from nas_bench_graph.architecture import Arch

    try:
        return Arch(list(links), list(ops)).valid_hash()
    except (UnboundLocalError, KeyError, IndexError):  # the package's canonicalizer has no form for this graph
        return None


def table_key(candidate: dict[str, Any]) -> int | None:
    """The table key of a candidate of ``search_choices()`` (None: not a table architecture)."""
    links = (0, int(candidate["in1"]), int(candidate["in2"]), int(candidate["in3"]))
    return _canonical(links, tuple(str(candidate[f"op{i}"]) for i in range(4)))


@dataclass(frozen=True)
class Constraint:
    """``field <= limit`` on the table's ``para`` (parameters) or ``latency`` (seconds); name for tables."""

    name: str
    field: str | None = None
    limit: float = float("inf")

    def satisfied(self, info: dict[str, float]) -> bool:
        return self.field is None or info[self.field] <= self.limit


def median_constraints(table: dict[int, dict[str, float]]) -> list[Constraint]:
    """No constraint, params <= the table's median, latency <= the table's median."""
    para = statistics.median(v["para"] for v in table.values())
    latency = statistics.median(v["latency"] for v in table.values())
    return [
        Constraint("none"),
        Constraint(f"params<={para:.4g}", "para", para),
        Constraint(f"latency<={latency:.4g}s", "latency", latency),
    ]


def best_under(
    table: dict[int, dict[str, float]], constraint: Constraint, signal: str = "valid_perf"
) -> tuple[int, dict[str, float]]:
    """The table's architecture with the highest ``signal`` (valid_perf or perf) among those that satisfy it."""
    ok = [(k, v) for k, v in table.items() if constraint.satisfied(v)]
    return max(ok, key=lambda kv: (kv[1][signal], kv[1]["perf"]))


@functools.cache
def raw_choice_counts() -> dict[int, int]:
    """Table key -> how many of the 157,464 raw candidates of ``search_choices()`` map to it (None keys dropped):
    uniform random search samples table architectures with these weights, not uniformly."""
    import itertools

    choices = search_choices()
    counts: dict[int, int] = {}
    for combo in itertools.product(*choices.values()):
        key = table_key(dict(zip(choices, combo)))
        if key is not None:
            counts[key] = counts.get(key, 0) + 1
    return counts


def expected_random_regret(
    table: dict[int, dict[str, float]], constraint: Constraint, budget: int, signal: str = "valid_perf"
) -> float:
    """Exact expected regret (fraction) of uniform random search over the raw choices with ``budget``
    evaluations that satisfy ``constraint``: E[max of ``budget`` i.i.d. draws] from the table, each draw a
    satisfying architecture with probability proportional to its raw-candidate count."""
    counts = raw_choice_counts()
    weighted = sorted((table[k][signal], n) for k, n in counts.items() if k in table and constraint.satisfied(table[k]))
    total = sum(n for _, n in weighted)
    expected_best, below = 0.0, 0
    for value, n in weighted:  # P(max = value) = F(value)^budget - F(value-)^budget (ties add up correctly)
        expected_best += value * (((below + n) / total) ** budget - (below / total) ** budget)
        below += n
    return best_under(table, constraint, signal)[1][signal] - expected_best
