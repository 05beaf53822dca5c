"""Continuous batching of token streams: every decoder stream of a model is a row of ONE running batch.

A stream joins the batch at a token boundary and leaves it when it has its ``max_new_tokens`` or when its
client goes away (its async generator is closed or cancelled), so a short request is never held back by a
long one, and a new request starts without waiting for the running ones to end. Each row keeps its own KV
cache, positions, temperature and top-k (:class:`deepseek.models.decoding.DecodeBatch`); its logits equal
its own ``generate()`` to float rounding (tests: atol 1e-4 in float32).

Prefill is a forward of its own, separate from the decode step: the prompts that arrived since the last
step are prefilled together (left-padded to the longest), which gives each its first token at once, and
they join the next decode step. Folding prefill into the decode step would make every running row's query
as long as the longest new prompt (a decode step is one token per row), multiplying the step's work.

Every forward runs on the model's one thread through :meth:`Batcher.run_alone`, so classifier batches and
decode steps take turns. One driver task per decoder steps the batch while it has rows and ends when it is
empty; it is started again by the next stream. Models that are not a
:class:`~deepseek.models.decoding.PaddedDecoder` (ONNX, exported programs, custom modules) keep the
one-request-at-a-time path in :mod:`deepseek.serve.streams`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import torch

from deepseek.models.decoding import DecodeBatch, pick_rows, supports_padded_decode
from deepseek.serve.batching import Batcher
from deepseek.serve.model import ServedModel

log = logging.getLogger("deepseek.serve")


@dataclass(eq=False)
class _Row:
    prompt: torch.Tensor  # (L,) int64
    max_new_tokens: int
    temperature: float
    top_k: int | None
    events: asyncio.Queue = field(default_factory=asyncio.Queue)  # token dicts, then None (end) or an exception
    made: int = 0  # tokens generated
    last: int = 0  # the newest token, fed at the next step
    gone: bool = False  # the client went away: leaves at the next token boundary


class ContinuousDecoder:
    """``async for event in decoder.stream(sample, params)``: a stream's ``{"index", "token_id", "text"?}``
    events, its tokens generated in one batch with every other stream of the model (at most ``max_batch``
    rows; later streams wait for a free row)."""

    def __init__(self, model: ServedModel, batcher: Batcher, max_batch: int = 32) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch: a positive int, got {max_batch!r}")
        self.model, self.batcher, self.max_batch = model, batcher, max_batch
        self.batch = DecodeBatch(model.module)  # ValueError for a module that is no PaddedDecoder
        self.rows: list[_Row] = []  # row i of self.batch
        self.waiting: deque[_Row] = deque()
        self.task: asyncio.Task | None = None
        self.steps = 0  # decode steps run (tests and benchmarks read it)

    @property
    def active(self) -> int:
        """Streams holding a row or waiting for one."""
        return len(self.rows) + len(self.waiting)

    async def stream(self, sample: dict[str, torch.Tensor], params: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """One prompt's tokens (``sample``: ``{"ids": (L,) int64}``; ``params``: ``max_new_tokens``,
        ``temperature``, ``top_k``) as events; raises what the model raised."""
        (ids,) = sample.values()
        row = _Row(ids.reshape(-1), int(params["max_new_tokens"]), float(params.get("temperature", 0.0)),
                   params.get("top_k"))  # fmt: skip
        self.waiting.append(row)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drive())
        try:
            while (item := await row.events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            row.gone = True  # closed, cancelled or finished: the driver drops it at the next boundary

    # ------------------------------------------------------------------------------------------ driver
    async def _drive(self) -> None:
        try:
            while True:
                room = self.max_batch - sum(not r.gone for r in self.rows)
                admit: list[_Row] = []
                while self.waiting and len(admit) < room:
                    if not (r := self.waiting.popleft()).gone:
                        admit.append(r)
                if admit:
                    await self._run(self._prefill, admit, rows=admit)
                if any(not r.gone for r in self.rows):
                    await self._run(self._step, rows=list(self.rows))
                elif self.rows:  # every client left: nothing runs on the batch while this task is here
                    self.rows = []
                    self.batch.keep([])
                if not self.rows and not self.waiting:
                    return
        except asyncio.CancelledError as exc:  # the server is stopping: no stream may wait forever
            self._fail_all(exc)
            raise
        except Exception as exc:
            log.exception("the decode loop of model '%s' failed", self.model.name)
            self._fail_all(exc)

    def _fail_all(self, exc: BaseException) -> None:
        for r in [*self.rows, *self.waiting]:
            r.events.put_nowait(RuntimeError(f"the decode loop of model '{self.model.name}' stopped: {exc!r}"))
        self.rows, self.waiting = [], deque()
        self.batch.keep([])

    async def _run(self, fn: Any, *args: Any, rows: list[_Row]) -> None:
        """``fn(*args)`` on the model's thread -> ``[(row, event, finished)]`` sent to each row's stream; a
        model error ends the streams of ``rows`` (and leaves the others running)."""
        try:
            out = await self.batcher.run_alone(functools.partial(fn, *args))
        except Exception as exc:
            log.exception("decode step of model '%s' failed", self.model.name)
            for r in rows:
                r.gone = True  # leaves the batch at the next boundary
                r.events.put_nowait(exc)
            return
        for row, event, finished in out:
            row.events.put_nowait(event)
            if finished:
                row.events.put_nowait(None)

    def _event(self, row: _Row, token: int) -> tuple[_Row, dict[str, Any], bool]:
        event: dict[str, Any] = {"index": row.made, "token_id": token}
        if self.model.tokenizer is not None:
            event["text"] = self.model.tokenizer.decode([token])
        row.made, row.last = row.made + 1, token
        return row, event, row.made >= row.max_new_tokens

    def _drop_gone(self, finished: frozenset[int] = frozenset()) -> None:
        """Keep the rows still wanted (model thread)."""
        keep = [i for i, r in enumerate(self.rows) if not r.gone and id(r) not in finished]
        self.batch.keep(keep)
        self.rows = [self.rows[i] for i in keep]

    def _prefill(self, admit: list[_Row]) -> list[tuple[_Row, dict[str, Any], bool]]:
        """Model thread: drop rows whose clients left, add ``admit`` and give each its first token."""
        self._drop_gone()
        logits = self.batch.prefill([r.prompt for r in admit])  # if it raises, the batch is as it was
        self.rows += admit
        tokens = pick_rows(logits, [r.temperature for r in admit], [r.top_k for r in admit])
        out = [self._event(r, int(t)) for r, t in zip(admit, tokens.tolist(), strict=True)]
        self._drop_gone(frozenset(id(r) for r, _, done in out if done))
        return out

    def _step(self) -> list[tuple[_Row, dict[str, Any], bool]]:
        """Model thread: one token for every row still wanted; rows that have all their tokens leave."""
        self._drop_gone()
        try:
            logits = self.batch.step(torch.tensor([r.last for r in self.rows], dtype=torch.long))
        except Exception:
            self.batch.keep([])  # the cache may be half-updated: these rows cannot go on
            self.rows = []
            raise
        self.steps += 1
        tokens = pick_rows(logits, [r.temperature for r in self.rows], [r.top_k for r in self.rows])
        out = [self._event(r, int(t)) for r, t in zip(self.rows, tokens.tolist(), strict=True)]
        self._drop_gone(frozenset(id(r) for r, _, done in out if done))
        return out


def can_batch_streams(model: ServedModel) -> bool:
    """Whether ``model``'s streams can share one running batch (a :class:`PaddedDecoder` on torch)."""
    return model.backend == "torch" and model.generative and supports_padded_decode(model.module)
