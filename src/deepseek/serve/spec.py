"""What a served model accepts, and the checks that turn a JSON request into tensors.

A request carries ``instances``: one entry per sample, TF-Serving style. An entry is a nested list
for a one-tensor model, ``{name: nested list}`` for a model with several inputs, or a string for a
model with text pre-processing (the run's ``data.preprocess``, e.g. Tokenize + TruncatePad). Every
check failure raises :class:`SpecError`, which the server answers with 422 and this message; nothing
here ever unpickles: JSON in, tensors out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "bool": torch.bool,
}


class SpecError(ValueError):
    """A request that breaks the model's input spec (answered with 422)."""


@dataclass
class TensorSpec:
    """One input of one sample: ``shape`` without the batch axis, ``None`` for a dynamic axis up to ``max_dim``."""

    shape: list[int | None]
    dtype: str = "float32"
    max_dim: int = 4096

    def describe(self) -> str:
        dims = ", ".join("*" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"

    def to_json(self) -> dict[str, Any]:
        return {"shape": self.shape, "dtype": self.dtype, "max_dim": self.max_dim}

    def check(self, value: Any, where: str) -> torch.Tensor:
        """A JSON value -> a tensor of this spec's dtype and shape, or a :class:`SpecError` saying what was expected."""
        if isinstance(value, (str, dict)) or value is None:
            raise SpecError(f"{where}: expected a nested list of numbers {self.describe()}, got {type(value).__name__}")
        try:
            t = torch.tensor(value, dtype=DTYPES[self.dtype])
        except (TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise SpecError(f"{where}: expected a nested list of numbers {self.describe()} ({exc})") from None
        return self.check_tensor(t, where)

    def check_tensor(self, t: torch.Tensor, where: str) -> torch.Tensor:
        shape = list(t.shape)
        fits = len(shape) == len(self.shape) and all(
            (want is None and 0 < got <= self.max_dim) or got == want for got, want in zip(shape, self.shape)
        )
        if not fits:
            got = "x".join(map(str, shape)) or "a scalar"
            limit = f" (dynamic axes up to {self.max_dim})" if None in self.shape else ""
            raise SpecError(f"{where}: expected shape {self.describe()}{limit}, got {got}")
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise SpecError(f"{where}: NaN or infinity in the input")
        return t


@dataclass
class InputSpec:
    """Per-sample inputs (``name -> TensorSpec``), or text through ``preprocess``, and the request limits."""

    tensors: dict[str, TensorSpec]
    text: bool = False
    max_instances: int = 64
    max_text_chars: int = 10_000
    preprocess: Any = None  # a callable str -> tensor or {name: tensor}, when ``text``
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inputs": {k: v.to_json() for k, v in self.tensors.items()}}
        out["instance"] = "string" if self.text else ("nested list" if len(self.tensors) == 1 else "object")
        out["max_instances"] = self.max_instances
        return out

    def parse(self, instances: Any) -> list[dict[str, torch.Tensor]]:
        """``instances`` from a request -> one ``{name: tensor}`` per sample, each checked against the spec."""
        if not isinstance(instances, list) or not instances:
            raise SpecError("'instances' must be a non-empty list with one entry per sample")
        if len(instances) > self.max_instances:
            raise SpecError(f"'instances': at most {self.max_instances} samples a request, got {len(instances)}")
        return [self.parse_one(x, f"instances[{i}]") for i, x in enumerate(instances)]

    def parse_one(self, value: Any, where: str) -> dict[str, torch.Tensor]:
        if self.text:
            if not isinstance(value, str) or not value:
                raise SpecError(f"{where}: expected a non-empty string (this model tokenizes text)")
            if len(value) > self.max_text_chars:
                raise SpecError(f"{where}: at most {self.max_text_chars} characters, got {len(value)}")
            out = self.preprocess(value)
            out = out if isinstance(out, dict) else {next(iter(self.tensors)): out}
            return {k: spec.check_tensor(out[k], f"{where} (after pre-processing)") for k, spec in self.tensors.items()}
        if len(self.tensors) == 1:
            (name, spec), = self.tensors.items()  # fmt: skip
            value = value[name] if isinstance(value, dict) and set(value) == {name} else value
            return {name: spec.check(value, where)}
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected an object with keys {sorted(self.tensors)}")
        missing, unknown = set(self.tensors) - set(value), set(value) - set(self.tensors)
        if missing or unknown:
            raise SpecError(f"{where}: expected keys {sorted(self.tensors)}; missing {sorted(missing)}, "
                            f"unexpected {sorted(unknown)}")  # fmt: skip
        return {k: spec.check(value[k], f"{where}.{k}") for k, spec in self.tensors.items()}


def spec_from_json(raw: dict[str, Any], where: str) -> dict[str, TensorSpec]:
    """``{name: {shape: [...], dtype: ..., max_dim: ...}}`` from a manifest, with errors naming the key."""
    out = {}
    for name, s in raw.items():
        if not isinstance(s, dict) or not isinstance(s.get("shape"), list):
            raise SpecError(f"{where}.{name}: expected {{shape: [dims, null for dynamic], dtype: float32}}")
        dtype = s.get("dtype", "float32")
        if dtype not in DTYPES:
            raise SpecError(f"{where}.{name}.dtype: '{dtype}' is not one of {', '.join(DTYPES)}")
        bad = [d for d in s["shape"] if d is not None and (not isinstance(d, int) or d < 1)]
        if bad:
            raise SpecError(f"{where}.{name}.shape: dims are positive ints or null, got {bad}")
        out[name] = TensorSpec(list(s["shape"]), dtype, int(s.get("max_dim", 4096)))
    return out
