"""The FastAPI app: sync predictions, SQLite-backed jobs, Server-Sent Event streams, health and metrics.

Routes (``{name}`` is a model; ``/versions/{version}`` may follow it, else its first version):

- ``POST /v1/models/{name}/predict`` ``{"instances": [...], "parameters": {...}, "timeout_s": 5}``
- ``POST /v1/models/{name}/jobs`` -> 202 ``{"id"}`` (200: the job an earlier submission with the same
  ``Idempotency-Key`` header made); ``GET`` / ``DELETE /v1/jobs/{id}``. Jobs run at least once: one
  running when the server died runs again (``attempts`` in the GET answer counts its runs)
- ``POST /v1/models/{name}/stream`` -> ``text/event-stream``: a decoder's tokens, or one result per instance
- ``GET /v1/models``, ``/v1/models/{name}``, ``/healthz``, ``/readyz``, ``/metrics``, ``/docs``, ``/redoc``

Status codes: 422 spec violation (NaN or Infinity anywhere included), 413 body too large, 429 queue full
(Retry-After), 504 over the time budget, 500 the model raised (that request only), 401 API key, 404 unknown
model or job, 409 job already final or Idempotency-Key reused, 503 still warming up; every one is in the
OpenAPI document (:mod:`deepseek.serve.docs`) with the body ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from deepseek.serve.batching import Batcher, QueueFull
from deepseek.serve.docs import (
    STREAM_OK,
    JobAccepted,
    JobView,
    PredictRequest,
    add_offline_docs,
    allowed_methods,
    errors,
)
from deepseek.serve.guard import Guard
from deepseek.serve.jobs import FINAL, IdempotencyConflict, JobStore
from deepseek.serve.metrics import ServeMetrics
from deepseek.serve.model import ServedModel
from deepseek.serve.spec import SpecError

log = logging.getLogger("deepseek.serve")


@dataclass
class ServeSettings:
    max_batch_size: int = 32  # 1 turns dynamic batching off
    max_delay_ms: float = 5.0
    max_queue: int = 256  # samples queued per model before 429
    timeout_s: float = 30.0
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    jobs_db: str | Path = "deepseek-serve-jobs.sqlite"
    job_workers: int = 4
    max_queued_jobs: int = 10_000
    max_job_attempts: int = 3  # a job that crashed the server this many times running alone fails


class HTTPProblem(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class Server:
    """The models, their batchers, the job store and workers of one app."""

    def __init__(self, models: list[ServedModel], settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.settings, self.metrics, self.ready = settings, metrics, False
        self.warm_up_errors: dict[str, str] = {}
        self.models: dict[str, dict[str, ServedModel]] = {}
        for m in models:
            self.models.setdefault(m.name, {})[m.version] = m
        self.batchers: dict[int, Batcher] = {}
        self.store: JobStore | None = None
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.stopping = False

    def lookup(self, name: str, version: str | None) -> tuple[ServedModel, Batcher]:
        if name not in self.models:
            raise HTTPProblem(404, f"no model '{name}'; served: {', '.join(sorted(self.models))}")
        versions = self.models[name]
        if version is None:
            version = next(iter(versions))
        if version not in versions:
            raise HTTPProblem(404, f"model '{name}' has no version '{version}'; it has {', '.join(versions)}")
        if not self.ready:
            raise HTTPProblem(503, "warming up; see /readyz", {"Retry-After": "1"})
        m = versions[version]
        return m, self.batchers[id(m.module)]

    async def start(self) -> None:
        s = self.settings
        for versions in self.models.values():
            for m in versions.values():
                if id(m.module) not in self.batchers:  # names that share a model share its batcher
                    size = m.settings.get("max_batch_size", s.max_batch_size)
                    delay = m.settings.get("max_delay_ms", s.max_delay_ms if size > 1 else 0.0)
                    queue = m.settings.get("max_queue", s.max_queue)
                    b = Batcher(m, size, delay, queue, self.metrics.batch_observer(m.name))
                    b.start()
                    self.batchers[id(m.module)] = b
        # the store fsyncs every write: it runs on worker threads (self.db), never on this event loop
        self.store = await asyncio.to_thread(JobStore, s.jobs_db)
        per_model = {m.name: m.settings["max_job_attempts"] for versions in self.models.values()
                     for m in versions.values() if "max_job_attempts" in m.settings}  # fmt: skip
        requeued, failed = await self.db("recover", s.max_job_attempts, per_model)
        if requeued:
            log.warning("re-queued %d job(s) a previous server was running", requeued)
        if failed:
            log.warning("failed %d job(s) that crashed the server too often (max_job_attempts)", failed)
        self.tasks.append(asyncio.get_running_loop().create_task(self._warm_up()))

    async def _warm_up(self) -> None:
        for versions in self.models.values():
            for m in versions.values():
                try:
                    await self.batchers[id(m.module)].run_alone(m.warm_up)
                except Exception as exc:  # served anyway (its requests get 500); /readyz reports it
                    log.exception("warm-up of model '%s' version '%s' failed", m.name, m.version)
                    self.warm_up_errors[f"{m.name}:{m.version}"] = f"{type(exc).__name__}: {exc}"
        self.ready = True
        loop = asyncio.get_running_loop()
        self.tasks += [loop.create_task(self._job_worker()) for _ in range(self.settings.job_workers)]

    async def stop(self) -> None:
        # Python 3.11's wait_for can swallow a cancel that lands as its wait ends (a wake or its timeout):
        # the job workers also check this flag, or one of them could loop on and stop() never return
        self.stopping = True
        self.wake.set()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for b in self.batchers.values():
            await b.stop()
        if self.store is not None:
            await self.db("close")

    async def db(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``self.store.<method>(*args)`` on a worker thread: SQLite's fsync must not stall the event loop."""
        assert self.store is not None
        return await asyncio.to_thread(getattr(self.store, method), *args, **kwargs)

    async def infer(
        self, m: ServedModel, batcher: Batcher, samples: list, params: dict, timeout_s: float | None,
        alone: bool = False,
    ) -> list:  # fmt: skip
        """One result per sample, from a shared batch (``alone``: a forward pass of their own)."""
        timeout = timeout_s or m.settings.get("timeout_s") or self.settings.timeout_s
        gauge = self.metrics.queue_depth.labels(m.name)
        gauge.set(batcher.queued + len(samples))
        try:
            run = batcher.run_alone(functools.partial(m.run, samples, params)) if alone else batcher.submit(samples, params)
            return await asyncio.wait_for(run, timeout)
        except QueueFull as exc:
            raise HTTPProblem(429, str(exc), {"Retry-After": str(exc.retry_after_s)}) from None
        except TimeoutError:
            raise HTTPProblem(504, f"no result within the {timeout:g} s time budget") from None
        except Exception as exc:
            log.exception("model '%s' raised", m.name)
            raise HTTPProblem(500, f"model '{m.name}' raised {type(exc).__name__}: {exc}") from None
        finally:
            gauge.set(batcher.queued)

    async def _job_worker(self) -> None:
        assert self.store is not None
        while not self.stopping:
            job = await self.db("claim")
            await self.update_job_gauge()
            if job is None:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                continue
            try:
                m, batcher = self.lookup(job["model"], job["version"])
                req = job["request"]
                samples, params = m.parse(req["instances"], req.get("parameters"))
                while True:
                    try:
                        result = await self.infer(m, batcher, samples, params, req.get("timeout_s"), job["isolate"])
                        break
                    except HTTPProblem as exc:  # a full queue delays a job; it does not fail it
                        if exc.status != 429 or (await self.db("get", job["id"]))["status"] == "cancelled":
                            raise
                        await asyncio.sleep(0.05)
                await self.db("finish", job["id"], result=result)
            except HTTPProblem as exc:
                await self.db("finish", job["id"], error=f"{exc.status}: {exc.message}")
            except SpecError as exc:
                await self.db("finish", job["id"], error=f"422: {exc}")
            except Exception as exc:  # a bad stored request must not stop the worker
                log.exception("job %s failed", job["id"])
                await self.db("finish", job["id"], error=f"500: {type(exc).__name__}: {exc}")
            self.wake.set()  # a job that must run alone may be waiting for this one to end

    async def update_job_gauge(self) -> None:
        if self.store is not None:
            for state, n in (await self.db("counts")).items():
                self.metrics.jobs.labels(state).set(n)


def create_app(models: list[ServedModel], settings: ServeSettings | None = None) -> Any:
    """The ASGI app (FastAPI behind :class:`Guard`) serving ``models``."""
    settings = settings or ServeSettings()
    metrics = ServeMetrics()
    server = Server(models, settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        await server.start()
        yield
        await server.stop()

    app = FastAPI(title="deepseek-serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Models of a deepseek model directory: sync, async jobs and streaming.")  # fmt: skip
    app.state.server = server
    add_offline_docs(app)

    @app.exception_handler(HTTPProblem)
    async def problem(request: Request, exc: HTTPProblem) -> JSONResponse:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        cause = exc.__cause__
        if exc.status_code == 400 and isinstance(cause, UnicodeDecodeError):  # FastAPI's "error parsing the body"
            message = f"the request body is not UTF-8 JSON: {cause.reason} at byte {cause.start}"
            return JSONResponse({"error": message}, 422)
        headers = exc.headers
        if exc.status_code == 405:
            headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(app, request.scope))}
        return JSONResponse({"error": str(exc.detail)}, exc.status_code, headers=headers)

    @app.exception_handler(SpecError)
    async def spec_error(request: Request, exc: SpecError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, 422)

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        hint = 'expected JSON like {"instances": [...], "parameters": {}, "timeout_s": 5}'
        # the errors echo the input: NaN/Infinity in it become strings, or the 422 itself could not be encoded
        detail = json.loads(json.dumps(exc.errors(), default=str), parse_constant=str)
        return JSONResponse({"error": "; ".join(parts) + f" ({hint})", "detail": detail}, 422)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses={503: {"description": "warming up, or a warm-up failed"}})
    async def readyz() -> JSONResponse:
        ok = server.ready and not server.warm_up_errors
        body: dict[str, Any] = {"ready": ok}
        if server.warm_up_errors:
            body["warm_up_errors"] = server.warm_up_errors
        return JSONResponse(body, 200 if ok else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"},
                        **errors(401)})  # fmt: skip
    async def prometheus() -> PlainTextResponse:
        await server.update_job_gauge()
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", tags=["models"], responses=errors(401))
    async def list_models() -> dict[str, Any]:
        return {"models": [m.describe() for versions in server.models.values() for m in versions.values()]}

    @app.get("/v1/models/{name}", tags=["models"], responses=errors(401, 404, 422))
    async def describe(name: str) -> dict[str, Any]:
        if name not in server.models:
            raise HTTPProblem(404, f"no model '{name}'; served: {', '.join(sorted(server.models))}")
        return {"name": name, "versions": [m.describe() for m in server.models[name].values()]}

    sync_errors = errors(401, 404, 413, 422, 429, 500, 503, 504)

    @app.post("/v1/models/{name}/predict", tags=["inference"], responses=sync_errors)
    @app.post("/v1/models/{name}/versions/{version}/predict", tags=["inference"], responses=sync_errors)
    async def predict(name: str, body: PredictRequest, version: str | None = None) -> dict[str, Any]:
        m, batcher = server.lookup(name, version)
        samples, params = m.parse(body.instances, body.parameters)
        results = await server.infer(m, batcher, samples, params, body.timeout_s)
        return {"model": name, "version": m.version, "predictions": results}

    job_errors = {200: {"model": JobAccepted, "description": "the job of an earlier submission with this Idempotency-Key"},
                  **errors(401, 404, 409, 413, 422, 429, 503)}  # fmt: skip

    @app.post("/v1/models/{name}/jobs", status_code=202, tags=["jobs"], response_model=JobAccepted, responses=job_errors)
    @app.post("/v1/models/{name}/versions/{version}/jobs", status_code=202, tags=["jobs"], response_model=JobAccepted,
              responses=job_errors)  # fmt: skip
    async def submit_job(
        name: str, body: PredictRequest, version: str | None = None,
        idempotency_key: str | None = Header(None, alias="Idempotency-Key", min_length=1, max_length=200,
                                             description="the same key on a retry returns the same job (200)"),
    ) -> JSONResponse:  # fmt: skip
        m, _ = server.lookup(name, version)
        m.parse(body.instances, body.parameters)  # a bad request is refused now, not failed later
        request = body.model_dump()
        try:  # a retry finds its job even when the queue is full; submit_once settles a race of two retries
            job_id = idempotency_key and await server.db("find_key", name, m.version, request, idempotency_key)
            made = not job_id
            if made:
                if (await server.db("counts"))["queued"] >= settings.max_queued_jobs:
                    raise HTTPProblem(429, f"{settings.max_queued_jobs} jobs are queued already", {"Retry-After": "5"})
                job_id, made = await server.db("submit_once", name, m.version, request, idempotency_key)  # on disk
        except IdempotencyConflict as exc:
            raise HTTPProblem(409, str(exc)) from None
        server.wake.set()
        job = await server.db("get", job_id)
        return JSONResponse({"id": job_id, "status": job["status"]}, 202 if made else 200,
                            headers={"Location": f"/v1/jobs/{job_id}"})  # fmt: skip

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView, response_model_exclude_unset=True,
             responses=errors(401, 404, 422))  # fmt: skip
    async def get_job(job_id: str) -> dict[str, Any]:
        job = await server.db("get", job_id) if server.store else None
        if job is None:
            raise HTTPProblem(404, f"no job '{job_id}'")
        return job

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView, response_model_exclude_unset=True,
                responses=errors(401, 404, 409, 422))  # fmt: skip
    async def cancel_job(job_id: str) -> JSONResponse:
        before = await server.db("get", job_id)
        if before is None:
            raise HTTPProblem(404, f"no job '{job_id}'")
        if before["status"] in FINAL:
            raise HTTPProblem(409, f"job '{job_id}' already {before['status']}")
        await server.db("cancel", job_id)
        return JSONResponse(await server.db("get", job_id))

    stream_docs = {200: STREAM_OK, **errors(401, 404, 413, 422, 503)}

    @app.post("/v1/models/{name}/stream", tags=["inference"], response_class=StreamingResponse, responses=stream_docs)
    @app.post("/v1/models/{name}/versions/{version}/stream", tags=["inference"], response_class=StreamingResponse,
              responses=stream_docs)  # fmt: skip
    async def stream(name: str, body: PredictRequest, version: str | None = None) -> StreamingResponse:
        m, batcher = server.lookup(name, version)
        samples, params = m.parse(body.instances, body.parameters)
        if m.generative and len(samples) != 1:
            raise HTTPProblem(422, f"'instances': a stream generates from one prompt, got {len(samples)}")
        events = (
            _tokens(server, m, batcher, samples[0], params) if m.generative else _chunks(server, m, batcher, samples)
        )
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)

    return Guard(app, settings.api_key, settings.max_body_bytes, metrics)


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _tokens(server: Server, m: ServedModel, batcher: Batcher, sample: dict, params: dict) -> Any:
    """A decoder's tokens as ``token`` events, then ``done`` with all of them (or ``error``)."""
    loop = asyncio.get_running_loop()
    start, ids, texts = loop.time(), [], []
    tokens = m.stream(sample, params)

    def step() -> Any:
        with torch.no_grad():
            return next(tokens, None)

    try:
        while (event := await batcher.run_alone(step)) is not None:
            if not ids:
                server.metrics.first_event.labels(m.name).observe(loop.time() - start)
            ids.append(event["token_id"])
            texts.append(event.get("text", ""))
            yield sse("token", event)
        done: dict[str, Any] = {"token_ids": ids}
        if m.tokenizer is not None:
            done["text"] = m.tokenizer.decode(ids)
        yield sse("done", done)
    except Exception as exc:
        log.exception("stream of model '%s' failed", m.name)
        yield sse("error", {"error": f"model '{m.name}' raised {type(exc).__name__}: {exc}"})
    finally:
        with contextlib.suppress(ValueError):  # "generator already executing": a step is still on the thread
            tokens.close()


async def _chunks(server: Server, m: ServedModel, batcher: Batcher, samples: list) -> Any:
    """A long input given as chunks: one ``result`` event per chunk as soon as it is ready, then ``done``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        for i, sample in enumerate(samples):
            (result,) = await server.infer(m, batcher, [sample], {}, None)
            if i == 0:
                server.metrics.first_event.labels(m.name).observe(loop.time() - start)
            yield sse("result", {"index": i, "prediction": result})
        yield sse("done", {"chunks": len(samples)})
    except HTTPProblem as exc:
        yield sse("error", {"error": exc.message, "status": exc.status})
