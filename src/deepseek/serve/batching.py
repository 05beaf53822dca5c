"""Dynamic batching: requests that arrive within ``max_delay_ms`` share one forward pass.

Written here rather than taken from a library because the server needs three things together that
no small dependency gives: a bounded queue that refuses work at once (429) instead of growing,
requests that give up (timeout, client gone) being dropped before they cost a forward pass, and a
failed batch being re-run one request at a time so only the request that breaks the model gets 500.

Each model has one worker task and one thread: forwards run one at a time off the event loop
(torch uses its own intra-op threads), so the loop keeps accepting and answering requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from deepseek.serve.model import Samples, ServedModel


class QueueFull(Exception):
    """The model's queue holds ``max_queue`` samples already (answered with 429 and Retry-After)."""

    def __init__(self, model: str, depth: int, retry_after_s: int) -> None:
        super().__init__(f"model '{model}' has {depth} samples queued; retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass
class _Request:
    samples: Samples
    params: dict[str, Any]
    future: asyncio.Future
    key: str = field(init=False)

    def __post_init__(self) -> None:
        # only requests with equal parameters share a batch (most have none: skip the encoding)
        self.key = json.dumps(self.params, sort_keys=True) if self.params else ""


class Batcher:
    """``await batcher.submit(samples, params)`` -> one result per sample, run in a shared batch."""

    def __init__(self, model: ServedModel, max_batch_size: int = 32, max_delay_ms: float = 5.0, max_queue: int = 256,
                 on_batch: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self.model, self.max_batch_size, self.max_delay = model, max_batch_size, max_delay_ms / 1000
        self.max_queue, self.on_batch = max_queue, on_batch
        self.queued = 0  # samples waiting or running
        self._queue: asyncio.Queue[_Request] = asyncio.Queue()
        self._carry: _Request | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"ds-serve-{model.name}")
        self._task: asyncio.Task | None = None
        self._mean_batch_s = 0.05

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._thread.shutdown(wait=True, cancel_futures=True)

    async def submit(self, samples: Samples, params: dict[str, Any]) -> list[Any]:
        if self.queued + len(samples) > self.max_queue:
            batches = max(1, self.queued // self.max_batch_size)
            raise QueueFull(self.model.name, self.queued, max(1, round(batches * self._mean_batch_s + 0.5)))
        request = _Request(samples, params, asyncio.get_running_loop().create_future())
        self.queued += len(samples)
        try:
            self._queue.put_nowait(request)
            return await request.future
        finally:
            self.queued -= len(samples)

    async def run_alone(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the model's thread (a streaming step), between batches."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def _next(self, timeout: float | None) -> _Request | None:
        """The carried-over or next queued request; waits up to ``timeout`` s (None: for ever) only when none is
        queued, so a batch whose time is up still takes every request already queued (up to its size)."""
        if self._carry is not None:
            request, self._carry = self._carry, None
            return request
        if not self._queue.empty():  # no task and no timer for what is there already
            return self._queue.get_nowait()
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return None
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            first = await self._next(None)
            if first is None or first.future.done():  # gave up while queued
                continue
            batch, size = [first], len(first.samples)
            deadline = loop.time() + self.max_delay
            while size < self.max_batch_size:
                nxt = await self._next(max(0.0, deadline - loop.time()))
                if nxt is None:
                    break
                if nxt.future.done():
                    continue
                if nxt.key != first.key or size + len(nxt.samples) > self.max_batch_size:
                    self._carry = nxt  # starts the next batch
                    break
                batch.append(nxt)
                size += len(nxt.samples)
            await self._run(batch)

    async def _run(self, batch: list[_Request]) -> None:
        batch = [r for r in batch if not r.future.done()]
        if not batch:
            return
        loop = asyncio.get_running_loop()
        samples = [s for r in batch for s in r.samples]
        start = loop.time()
        try:
            results = await loop.run_in_executor(self._thread, self.model.run, samples, batch[0].params)
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0], error=exc)
            else:  # find the request that breaks the model; the others still get answers
                for r in batch:
                    await self._run([r])
            return
        self._mean_batch_s = 0.9 * self._mean_batch_s + 0.1 * (loop.time() - start)
        if self.on_batch is not None:
            self.on_batch(len(samples))
        at = 0
        for r in batch:
            _settle(r, result=results[at : at + len(r.samples)])
            at += len(r.samples)


def _settle(request: _Request, result: Any = None, error: Exception | None = None) -> None:
    if request.future.done():
        return
    if error is not None:
        request.future.set_exception(error)
    else:
        request.future.set_result(result)
