"""A served model: the callable that runs one batch, its input spec, and its pre/post-processing.

:class:`ServedModel` wraps a torch module, an ONNX Runtime session (:class:`deepseek.export.OnnxModule`)
or a ``torch.export`` program the same way: ``run(samples, params)`` stacks per-sample tensors into a
batch (samples of different shapes or parameters run as separate groups), runs it under
``inference_mode`` and returns one JSON-ready result per sample. Classifiers return
``{"label", "index", "scores"}``; decoders with ``stream()`` (the built-in gpt2) generate tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from deepseek.serve.spec import DTYPES, InputSpec, SpecError

Samples = list[dict[str, torch.Tensor]]


@dataclass
class ServedModel:
    name: str
    version: str
    module: nn.Module
    spec: InputSpec
    source: str
    backend: str = "torch"  # torch | onnxruntime | torch.export | openvino
    labels: list[str] | None = None
    tokenizer: Any = None  # a ``tokenizers.Tokenizer`` for text in and out of a decoder
    fixed_batch: int | None = None  # an ONNX graph exported for one batch size: pad and split to it
    max_new_tokens: int = 256
    settings: dict[str, Any] = field(default_factory=dict)  # max_batch_size, max_delay_ms, max_queue, timeout_s, ...
    # the version this one reproduces in fp32 (a run's model.onnx / model.openvino.xml reproduce version "1"):
    # such versions answer alike, so serving makes the fastest of them the default (Server.pick_fastest)
    fp32_of: str | None = None

    @property
    def generative(self) -> bool:
        return callable(getattr(self.module, "stream", None))

    def describe(self) -> dict[str, Any]:
        out = {"name": self.name, "version": self.version, "backend": self.backend, "source": self.source}
        out.update(self.spec.to_json())
        out["task"] = "generate" if self.generative else "classify" if self.labels else "raw"
        if self.labels:
            out["labels"] = self.labels
        return out

    # ---------------------------------------------------------------------------- requests
    def parse(self, instances: Any, params: dict[str, Any] | None = None) -> tuple[Samples, dict[str, Any]]:
        """Check a request: its samples against the spec and its parameters against what the model takes."""
        params = dict(params or {})
        allowed = {"max_new_tokens", "temperature", "top_k"} if self.generative else set()
        if set(params) - allowed:
            raise SpecError(
                f"'parameters': unknown {sorted(set(params) - allowed)}; this model takes {sorted(allowed) or 'none'}"
            )
        if self.generative:
            n = params.setdefault("max_new_tokens", 16)
            if not isinstance(n, int) or not 0 < n <= self.max_new_tokens:
                raise SpecError(f"'parameters.max_new_tokens': an int in 1..{self.max_new_tokens}, got {n!r}")
            t = params.setdefault("temperature", 0.0)
            if not isinstance(t, (int, float)) or not 0 <= t <= 10:
                raise SpecError(f"'parameters.temperature': a number in 0..10, got {t!r}")
            k = params.get("top_k")
            if k is not None and (not isinstance(k, int) or k < 1):
                raise SpecError(f"'parameters.top_k': a positive int, got {k!r}")
        samples = self.spec.parse(instances)
        if self.generative:
            limit = self.spec.tensors["ids"].max_dim
            for i, s in enumerate(samples):
                if s["ids"].shape[0] + params["max_new_tokens"] > limit:
                    raise SpecError(f"instances[{i}]: {s['ids'].shape[0]} prompt tokens + max_new_tokens "
                                    f"{params['max_new_tokens']} exceed the model's {limit} positions")  # fmt: skip
        return samples, params

    def run(self, samples: Samples, params: dict[str, Any] | None = None) -> list[Any]:
        """Samples of one request or of several (a dynamic batch) -> one result per sample."""
        params = params or {}
        groups: dict[Any, list[int]] = {}
        for i, s in enumerate(samples):
            groups.setdefault(tuple((k, tuple(t.shape)) for k, t in s.items()), []).append(i)
        results: list[Any] = [None] * len(samples)
        for idx in groups.values():
            batch = {k: torch.stack([samples[i][k] for i in idx]) for k in samples[idx[0]]}
            for i, r in zip(idx, self._run_batch(batch, params)):
                results[i] = r
        return results

    @torch.inference_mode()
    def _run_batch(self, batch: dict[str, torch.Tensor], params: dict[str, Any]) -> list[Any]:
        if self.generative:
            (ids,) = batch.values()
            out = self.module.generate(ids, params.get("max_new_tokens", 16), temperature=params.get("temperature", 0.0),
                                       top_k=params.get("top_k"))  # fmt: skip
            return [self._tokens(row[ids.shape[1] :].tolist()) for row in out]
        outputs = self._forward(batch)
        if self.labels and outputs.ndim == 2 and outputs.shape[1] == len(self.labels):
            probs = outputs.float().softmax(-1)
            # one argmax and one tolist for the batch: per-row tensor ops cost more than the rest of this loop
            labels, rows = self.labels, probs.tolist()
            return [
                {"label": labels[i], "index": i, "scores": [round(v, 6) for v in row]}
                for i, row in zip(probs.argmax(-1).tolist(), rows)
            ]
        return outputs.float().tolist() if outputs.is_floating_point() else outputs.tolist()

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = next(iter(batch.values())).shape[0]
        if self.fixed_batch is None or n == self.fixed_batch:
            return self._call(batch)
        b, parts = self.fixed_batch, []
        for start in range(0, n, b):
            chunk = {k: v[start : start + b] for k, v in batch.items()}
            short = b - next(iter(chunk.values())).shape[0]
            if short:  # pad with copies of the last sample; the extra rows are dropped below
                chunk = {k: torch.cat([v, v[-1:].expand(short, *v.shape[1:])]) for k, v in chunk.items()}
            parts.append(self._call(chunk)[: b - short])
        return torch.cat(parts)

    def _call(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.module(*batch.values()) if len(batch) == 1 or self.backend == "torch.export" else self.module(batch)
        return out[0] if isinstance(out, (tuple, list)) else out

    # ---------------------------------------------------------------------------- streaming
    def stream(self, sample: dict[str, torch.Tensor], params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A decoder's tokens one at a time: ``{"index", "token_id", "text"?}``."""
        # No grad context held across yields: a suspended generator would leak it into other requests
        # run on the same thread; the caller wraps each step in no_grad instead.
        (ids,) = sample.values()
        tokens = self.module.stream(ids[None], params["max_new_tokens"], temperature=params["temperature"],
                                    top_k=params.get("top_k"))  # fmt: skip
        for i, tok in enumerate(tokens):
            event: dict[str, Any] = {"index": i, "token_id": int(tok[0])}
            if self.tokenizer is not None:
                event["text"] = self.tokenizer.decode([int(tok[0])])
            yield event

    def _tokens(self, ids: list[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"token_ids": ids}
        if self.tokenizer is not None:
            out["text"] = self.tokenizer.decode(ids)
        return out

    # ---------------------------------------------------------------------------- warm-up
    def warm_up(self) -> None:
        """One forward at load, so the first request pays no lazy initialisation (ORT, kernels, tokenizer)."""
        params = {"max_new_tokens": 1, "temperature": 0.0} if self.generative else {}
        self.run([self._warm_up_sample()], params)

    def _warm_up_sample(self) -> dict[str, torch.Tensor]:
        if self.spec.text:
            return self.spec.parse_one("warm up", "warm-up")
        return {k: torch.zeros([d or 1 for d in s.shape], dtype=DTYPES[s.dtype]) for k, s in self.spec.tensors.items()}

    def batch_ms(self, size: int, repeats: int = 3) -> float:
        """Median milliseconds of one forward on ``size`` copies of the warm-up sample (after one untimed)."""
        samples = [self._warm_up_sample()] * size
        self.run(samples)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            self.run(samples)
            times.append(1e3 * (time.perf_counter() - start))
        return sorted(times)[len(times) // 2]


def text_encoder(tokenizer: Any) -> Callable[[str], dict[str, torch.Tensor]]:
    """A decoder's text pre-processing: ``str -> {"ids": (L,) int64}`` (no special tokens)."""

    def encode(text: str) -> dict[str, torch.Tensor]:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if not ids:
            raise SpecError(f"the text {json.dumps(text[:40])} has no tokens")
        return {"ids": torch.tensor(ids, dtype=torch.long)}

    return encode
