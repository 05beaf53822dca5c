"""Streamed answers as ``(event, data)`` pairs, whatever the transport: SSE over REST, messages over gRPC.

A decoder streams ``token`` events (``{"index", "token_id", "text"?}``) and then ``done`` with every token;
a torch decoder that takes padded batches (the built-in gpt2) runs all its streams in one continuously
batched decode (:mod:`deepseek.serve.decode`; the model's ``continuous_batching`` setting, default on, and
``max_batch_size`` rows at most, 1 turning it off); any other decoder steps one request's generator at a
time on the model's thread. A long input sent as chunks streams one ``result`` per chunk and then ``done``.
A failure mid-stream is an ``error`` event (``{"error", "status"?}``): the status line went out with the first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import torch

from deepseek.serve.batching import Batcher
from deepseek.serve.decode import ContinuousDecoder, can_batch_streams
from deepseek.serve.metrics import ServeMetrics
from deepseek.serve.model import ServedModel
from deepseek.serve.problem import HTTPProblem

log = logging.getLogger("deepseek.serve")
Event = tuple[str, dict[str, Any]]


def continuous_decoder(m: ServedModel, batcher: Batcher) -> ContinuousDecoder | None:
    """The model's running batch of streams, made on first use; None when its streams run one by one."""
    # max_batch_size 1 turns batching off: streams then take turns step by step, as before
    if not m.settings.get("continuous_batching", True) or batcher.max_batch_size < 2 or not can_batch_streams(m):
        return None
    # kept on the batcher (one per model thread), so it goes when the batcher goes; one decoder per served model
    per_model: dict[int, ContinuousDecoder] = batcher.__dict__.setdefault("continuous_decoders", {})
    if id(m) not in per_model:
        per_model[id(m)] = ContinuousDecoder(m, batcher, batcher.max_batch_size)
    return per_model[id(m)]


async def token_events(metrics: ServeMetrics, m: ServedModel, batcher: Batcher, sample: dict, params: dict) -> AsyncIterator[Event]:
    """A decoder's tokens as ``token`` events, then ``done`` with all of them (or ``error``)."""
    loop = asyncio.get_running_loop()
    start, ids = loop.time(), []
    decoder = continuous_decoder(m, batcher)
    events = decoder.stream(sample, params) if decoder is not None else _one_by_one(m, batcher, sample, params)
    try:
        async for event in events:
            if not ids:
                metrics.first_event.labels(m.name).observe(loop.time() - start)
            ids.append(event["token_id"])
            yield "token", event
        done: dict[str, Any] = {"token_ids": ids}
        if m.tokenizer is not None:
            done["text"] = m.tokenizer.decode(ids)
        yield "done", done
    except Exception as exc:
        log.exception("stream of model '%s' failed", m.name)
        yield "error", {"error": f"model '{m.name}' raised {type(exc).__name__}: {exc}"}
    finally:
        await events.aclose()  # the client went away: its row leaves the batch


async def _one_by_one(m: ServedModel, batcher: Batcher, sample: dict, params: dict) -> AsyncIterator[dict[str, Any]]:
    """One request's generator, each step alone on the model's thread."""
    tokens = m.stream(sample, params)

    def step() -> Any:
        with torch.no_grad():
            return next(tokens, None)

    try:
        while (event := await batcher.run_alone(step)) is not None:
            yield event
    finally:
        with contextlib.suppress(ValueError):  # "generator already executing": a step is still on the thread
            tokens.close()


async def chunk_events(infer: Callable[..., Awaitable[list]], metrics: ServeMetrics, m: ServedModel, batcher: Batcher,
                       samples: list) -> AsyncIterator[Event]:  # fmt: skip
    """A long input given as chunks: one ``result`` event per chunk as soon as it is ready, then ``done``.
    ``infer``: :meth:`deepseek.serve.server.Server.infer`."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i, sample in enumerate(samples):
            (result,) = await infer(m, batcher, [sample], {}, None)
            if i == 0:
                metrics.first_event.labels(m.name).observe(loop.time() - start)
            yield "result", {"index": i, "prediction": result}
        yield "done", {"chunks": len(samples)}
    except HTTPProblem as exc:
        yield "error", {"error": exc.message, "status": exc.status}
