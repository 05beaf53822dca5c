"""The server behind every protocol: models and their batchers, the job store and its workers.

REST (:mod:`deepseek.serve.app`) and gRPC (:mod:`deepseek.serve.grpc_service`) are thin transports over
:class:`Server`: they parse their wire format, call :meth:`Server.predict`, :meth:`Server.submit_job`,
:meth:`Server.get_job`, :meth:`Server.cancel_job` or :meth:`Server.stream`, and map :class:`HTTPProblem`
(an HTTP status and a one-line message) to their own status codes, so both protocols answer alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseek.serve.batching import Batcher, QueueFull
from deepseek.serve.jobs import FINAL, IdempotencyConflict, JobStore, open_job_store
from deepseek.serve.metrics import ServeMetrics
from deepseek.serve.model import ServedModel
from deepseek.serve.problem import HTTPProblem
from deepseek.serve.spec import SpecError
from deepseek.serve.streams import chunk_events, token_events

log = logging.getLogger("deepseek.serve")


@dataclass
class ServeSettings:
    max_batch_size: int = 32  # 1 turns dynamic batching off
    max_delay_ms: float = 5.0
    max_queue: int = 256  # samples queued per model before 429
    timeout_s: float = 30.0
    max_body_bytes: int = 1 << 20
    api_key: str | None = None
    jobs_db: str | Path = "deepseek-serve-jobs.sqlite"  # a SQLite file, or a postgresql:// URL for replicas
    job_lease_s: float = 15.0  # PostgreSQL: a replica silent this long has its running jobs taken over
    job_workers: int = 4
    max_queued_jobs: int = 10_000
    max_job_attempts: int = 3  # a job that crashed the server this many times running alone fails
    grpc_port: int | None = None  # also serve gRPC on this port (0: a free one; see Server.grpc_port)
    grpc_host: str = "127.0.0.1"
    # "fastest": where a run's model is also served as fp32 exports of itself (model.onnx, model.openvino.xml), a
    # request naming no version gets the fastest of them, timed at warm-up; "first": always the first version
    default_version: str = "fastest"


class Server:
    """The models, their batchers, the job store and workers of one app."""

    def __init__(self, models: list[ServedModel], settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.settings, self.metrics, self.ready = settings, metrics, False
        self.warm_up_errors: dict[str, str] = {}
        self.models: dict[str, dict[str, ServedModel]] = {}
        for m in models:
            self.models.setdefault(m.name, {})[m.version] = m
        self.batchers: dict[int, Batcher] = {}
        self.store: JobStore | Any = None
        self.wake = asyncio.Event()
        self.tasks: list[asyncio.Task] = []
        self.stopping = False
        self.grpc: Any = None  # the grpc.aio server when settings.grpc_port is set
        self.grpc_port: int | None = None  # the port it bound

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
        self.store = await asyncio.to_thread(open_job_store, s.jobs_db, s.job_lease_s)
        per_model = {m.name: m.settings["max_job_attempts"] for versions in self.models.values()
                     for m in versions.values() if "max_job_attempts" in m.settings}  # fmt: skip
        requeued, failed = await self.db("recover", s.max_job_attempts, per_model)
        if requeued:
            log.warning("re-queued %d job(s) a previous server was running", requeued)
        if failed:
            log.warning("failed %d job(s) that crashed the server too often (max_job_attempts)", failed)
        self.tasks.append(asyncio.get_running_loop().create_task(self._warm_up()))
        if s.grpc_port is not None:  # imported here: grpcio is needed only by servers that speak gRPC
            from deepseek.serve.grpc_service import start_grpc

            self.grpc, self.grpc_port = await start_grpc(self, s.grpc_host, s.grpc_port)

    async def _warm_up(self) -> None:
        for versions in self.models.values():
            for m in versions.values():
                try:
                    await self.batchers[id(m.module)].run_alone(m.warm_up)
                except Exception as exc:  # served anyway (its requests get 500); /readyz reports it
                    log.exception("warm-up of model '%s' version '%s' failed", m.name, m.version)
                    self.warm_up_errors[f"{m.name}:{m.version}"] = f"{type(exc).__name__}: {exc}"
        if self.settings.default_version == "fastest":
            await self._pick_fastest()
        self.ready = True
        loop = asyncio.get_running_loop()
        self.tasks += [loop.create_task(self._job_worker()) for _ in range(self.settings.job_workers)]

    async def _pick_fastest(self) -> None:
        """Make the fastest of a model's fp32-equivalent versions (``ServedModel.fp32_of``) its default: each is timed
        on a full batch of its warm-up sample, one at a time on its own model thread, before the server is ready."""
        for name, versions in self.models.items():
            alike = [m for m in versions.values() if m.fp32_of in versions or any(o.fp32_of == m.version for o in
                                                                                   versions.values())]  # fmt: skip
            if len(alike) < 2 or any(f"{name}:{m.version}" in self.warm_up_errors for m in alike):
                continue
            ms = {}
            for m in alike:
                batcher = self.batchers[id(m.module)]
                ms[m.version] = await batcher.run_alone(functools.partial(m.batch_ms, batcher.max_batch_size))
            fastest = min(ms, key=ms.__getitem__)
            self.models[name] = {fastest: versions[fastest], **{v: m for v, m in versions.items() if v != fastest}}
            timed = ", ".join(f"{v} {t:.1f} ms" for v, t in ms.items())
            log.info("model '%s': default version '%s', the fastest of its fp32 versions (%s)", name, fastest, timed)

    async def stop(self) -> None:
        # Python 3.11's wait_for can swallow a cancel that lands as its wait ends (a wake or its timeout):
        # the job workers also check this flag, or one of them could loop on and stop() never return
        self.stopping = True
        self.wake.set()
        if self.grpc is not None:
            await self.grpc.stop(grace=5)
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
            try:
                job = await self.db("claim")
                await self.update_job_gauge()
            except Exception:  # the store is unreachable for now (a PostgreSQL restart): try again, never stop
                log.exception("claiming a job failed; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            if job is None:
                self.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), 1.0)
                continue
            try:
                await self._run_job(job)
            except Exception:  # the outcome could not be recorded (store unreachable): the job stays running,
                # and a restart (SQLite) or another replica once the lease lapses (PostgreSQL) runs it again
                log.exception("recording the outcome of job %s failed", job["id"])
            self.wake.set()  # a job that must run alone may be waiting for this one to end

    async def _run_job(self, job: dict[str, Any]) -> None:
        """Run one claimed job and record its outcome: a failure of the job is recorded as its error; only a
        failure to record (the store unreachable) raises."""
        result, error = None, None
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
        except HTTPProblem as exc:
            error = f"{exc.status}: {exc.message}"
        except SpecError as exc:
            error = f"422: {exc}"
        except Exception as exc:  # a bad stored request must not stop the worker
            log.exception("job %s failed", job["id"])
            error = f"500: {type(exc).__name__}: {exc}"
        if error is not None:
            await self.db("finish", job["id"], error=error)
        else:
            await self.db("finish", job["id"], result=result)

    async def update_job_gauge(self) -> None:
        if self.store is not None:
            for state, n in (await self.db("counts")).items():
                self.metrics.jobs.labels(state).set(n)

    # ---------------------------------------------------------------------- what every transport calls
    async def predict(self, name: str, version: str | None, instances: Any, parameters: dict[str, Any] | None,
                      timeout_s: float | None = None) -> dict[str, Any]:  # fmt: skip
        """``{"model", "version", "predictions"}``: one prediction per instance, from a shared batch."""
        m, batcher = self.lookup(name, version)
        samples, params = m.parse(instances, parameters)
        results = await self.infer(m, batcher, samples, params, timeout_s)
        return {"model": name, "version": m.version, "predictions": results}

    async def submit_job(self, name: str, version: str | None, request: dict[str, Any],
                         idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:  # fmt: skip
        """Queue a job (on disk before this returns): ``({"id", "status"}, made now)``; ``made`` is False when
        ``idempotency_key`` names the job an earlier submission of the same request made."""
        m, _ = self.lookup(name, version)
        m.parse(request["instances"], request.get("parameters"))  # a bad request is refused now, not failed later
        try:  # a retry finds its job even when the queue is full; submit_once settles a race of two retries
            job_id = idempotency_key and await self.db("find_key", name, m.version, request, idempotency_key)
            made = not job_id
            if made:
                limit = self.settings.max_queued_jobs
                if (await self.db("counts"))["queued"] >= limit:
                    raise HTTPProblem(429, f"{limit} jobs are queued already", {"Retry-After": "5"})
                job_id, made = await self.db("submit_once", name, m.version, request, idempotency_key)  # on disk
        except IdempotencyConflict as exc:
            raise HTTPProblem(409, str(exc)) from None
        self.wake.set()
        job = await self.db("get", job_id)
        return {"id": job_id, "status": job["status"]}, made

    async def get_job(self, job_id: str) -> dict[str, Any]:
        job = await self.db("get", job_id) if self.store else None
        if job is None:
            raise HTTPProblem(404, f"no job '{job_id}'")
        return job

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job (409 once it is final): the job afterwards."""
        before = await self.get_job(job_id)
        if before["status"] in FINAL:
            raise HTTPProblem(409, f"job '{job_id}' already {before['status']}")
        await self.db("cancel", job_id)
        return await self.get_job(job_id)

    def open_stream(self, name: str, version: str | None, instances: Any,
                    parameters: dict[str, Any] | None) -> AsyncIterator[tuple[str, dict[str, Any]]]:  # fmt: skip
        """Check the request now (raising :class:`HTTPProblem` or :class:`SpecError`), then ``(event, data)``
        pairs: a decoder's ``token`` events or one ``result`` per chunk, then ``done`` (or ``error``)."""
        m, batcher = self.lookup(name, version)
        samples, params = m.parse(instances, parameters)
        if m.generative and len(samples) != 1:
            raise HTTPProblem(422, f"'instances': a stream generates from one prompt, got {len(samples)}")
        if m.generative:
            return token_events(self.metrics, m, batcher, samples[0], params)
        return chunk_events(self.infer, self.metrics, m, batcher, samples)

    def describe_models(self) -> list[dict[str, Any]]:
        return [m.describe() for versions in self.models.values() for m in versions.values()]

    def describe(self, name: str) -> dict[str, Any]:
        if name not in self.models:
            raise HTTPProblem(404, f"no model '{name}'; served: {', '.join(sorted(self.models))}")
        return {"name": name, "versions": [m.describe() for m in self.models[name].values()]}

    def readiness(self) -> dict[str, Any]:
        """``{"ready": bool, "warm_up_errors"?: {...}}``: ready once every model warmed up without error."""
        body: dict[str, Any] = {"ready": self.ready and not self.warm_up_errors}
        if self.warm_up_errors:
            body["warm_up_errors"] = dict(self.warm_up_errors)
        return body
