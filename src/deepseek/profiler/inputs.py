"""A registered model and a synthetic batch of the right shape for it, from the model's shipped template.

Every template (``deepseek/models/templates/<name>.yaml``) has an ``example`` section: the input shape(s) and
dtype(s) the model takes (``input``, ``inputs``, ``tokens`` for a tokenized batch, ``graph`` for a graph batch),
plus ``build`` overrides the shapes belong to. The model zoo's test builds and runs every model from it; the
profiler does the same, so any registered model can be profiled without per-model code. The batch axis becomes
``batch_size``; ``seq_len`` replaces the token axis of integer inputs (axis 1); an ``image_size`` build argument
sets the last two axes of image inputs. Values are random (seeded): profiling measures cost, not accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

import deepseek.models as zoo


def build_with_example(
    name: str, *, batch_size: int, seq_len: int | None = None, overrides: dict[str, Any] | None = None
) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, inputs, info)``: the model built from its template with the example's ``build`` values and
    ``overrides``, one synthetic batch, and ``info`` = ``{"seq_len", "tokens"}`` (``seq_len`` None for inputs
    without a token axis; ``tokens`` = batch x seq_len, else the batch size).

    Raises ValueError naming the model when it is not registered or its template has no example."""
    if batch_size < 1:
        raise ValueError(f"--batch_size {batch_size}: must be 1 or more")
    if seq_len is not None and seq_len < 1:
        raise ValueError(f"--seq-len {seq_len}: must be 1 or more")
    names = zoo.list_models()
    if name not in zoo.registry:
        raise ValueError(f"--model {name!r}: not a registered model; allowed: {', '.join(names)}")
    example = zoo.template(name).get("example")
    if not example:
        raise ValueError(f"--model {name!r}: its template has no example input to build a batch from")
    kwargs = {**example.get("build", {}), **(overrides or {})}
    model = zoo.build(name, **kwargs)
    resolved = {**zoo.template_kwargs(name), **kwargs}
    inputs, info = example_inputs(example, batch_size, seq_len, resolved.get("image_size"))
    return model, inputs, info


def _shape(shape: list[int], batch_size: int, seq_len: int | None, long: bool, image_size: Any) -> list[int]:
    shape = [batch_size, *shape[1:]]
    if long and seq_len is not None and len(shape) >= 2:
        shape[1] = seq_len
    if not long and isinstance(image_size, int) and len(shape) == 4:
        shape[2] = shape[3] = image_size
    return shape


def example_inputs(
    example: dict[str, Any], batch_size: int, seq_len: int | None = None, image_size: Any = None
) -> tuple[Any, dict[str, Any]]:
    """One batch for a template's ``example`` (see the module docstring) and its ``{"seq_len", "tokens"}``."""
    g = torch.Generator().manual_seed(0)
    if "graph" in example:
        from deepseek.data.graph import Graph, collate_graphs

        spec, nodes = example["graph"], example["graph"]["nodes"]
        sizes = [nodes[i % len(nodes)] for i in range(batch_size)]
        graphs = [Graph(torch.randn(n, spec["features"], generator=g), torch.stack([torch.arange(n - 1),
                  torch.arange(1, n)])) for n in sizes]  # fmt: skip
        return collate_graphs(graphs), {"seq_len": None, "tokens": batch_size}
    if "tokens" in example:  # a Tokenize + TruncatePad batch
        shape = _shape(example["tokens"], batch_size, seq_len, True, None)
        ids = torch.randint(1000, 2000, shape, generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, {
            "seq_len": shape[1],
            "tokens": shape[0] * shape[1],
        }
    specs = example["inputs"] if "inputs" in example else [example["input"]]
    dtypes = example.get("dtype")
    dtypes = dtypes if isinstance(dtypes, list) else [dtypes] * len(specs)
    tensors, info = [], {"seq_len": None, "tokens": batch_size}
    for spec, dtype in zip(specs, dtypes):
        long = dtype == "long"
        shape = _shape(spec, batch_size, seq_len, long, image_size)
        if long:
            tensors.append(torch.randint(0, 30, shape, generator=g))
            if info["seq_len"] is None and len(shape) >= 2:
                info = {"seq_len": shape[1], "tokens": shape[0] * shape[1]}
        else:
            tensors.append(torch.rand(shape, generator=g))
    return (tuple(tensors) if "inputs" in example else tensors[0]), info
