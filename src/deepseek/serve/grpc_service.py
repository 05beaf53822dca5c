"""The gRPC transport: ``deepseek.serve.v1.Inference`` over the same :class:`~deepseek.serve.server.Server` as REST.

It runs in the REST server's process and event loop (``grpc.aio``), started by :meth:`Server.start` when
``ServeSettings.grpc_port`` is set (``deepseek-serve --grpc-port P``), so both protocols share the models, their
batchers, the job store, the limits, the API key and the Prometheus metrics. The wire format is
``deepseek/serve/proto/deepseek_serve.proto``; its modules were generated (no hand edit) from the repository root by

    .venv/bin/python -m grpc_tools.protoc -Isrc --python_out=src --pyi_out=src --grpc_python_out=src \
        src/deepseek/serve/proto/deepseek_serve.proto

Also served: the standard health service ``grpc.health.v1.Health`` (service ``deepseek.serve.v1.Inference``
is SERVING once every model warmed up without error, like ``/readyz``; ``""`` is the process) and server
reflection (``grpc.reflection.v1alpha.ServerReflection``), both open without the API key.

Refusals: every :class:`HTTPProblem` / :class:`SpecError` becomes a status code with the same one-line message;
the trailing metadata carries ``http-status`` (the REST status) and, where REST sends Retry-After, ``retry-after``.

======  ======================  ============================================================================
HTTP    gRPC code               when
======  ======================  ============================================================================
401     UNAUTHENTICATED         API key missing or wrong (metadata ``authorization: Bearer <key>`` or ``x-api-key``)
404     NOT_FOUND               unknown model, version or job
409     FAILED_PRECONDITION     CancelJob of a job already succeeded, failed or cancelled
409     ALREADY_EXISTS          SubmitJob: the idempotency_key was used with another request
413     RESOURCE_EXHAUSTED      request message over ``max_body_bytes`` (refused by grpc itself; no retry-after)
422     INVALID_ARGUMENT        the request breaks the model's input spec or parameters (NaN/Infinity included)
429     RESOURCE_EXHAUSTED      the model's queue or the job queue is full; ``retry-after`` in trailing metadata
500     INTERNAL                the model raised on this request
503     UNAVAILABLE             still warming up; ``retry-after``
504     DEADLINE_EXCEEDED       no result within the time budget: ``timeout_s``, or the call's deadline if sooner
======  ======================  ============================================================================

409 is two codes because gRPC tells the two cases apart (a state that forbids the call vs. a name already
taken); :class:`deepseek.serve.Client` maps both back to 409, and 413 and 429 apart by ``http-status``.
Metrics: each call counts in ``ds_serve_requests`` / ``ds_serve_request_seconds`` with the route label
``grpc:/deepseek.serve.v1.Inference/<Method>`` and the HTTP-equivalent status as ``code`` (499: the client
cancelled), so one query covers both protocols. A message over the size limit is refused by grpc before any
handler runs and is not counted.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from deepseek.serve.problem import HTTPProblem
from deepseek.serve.proto import SERVICE
from deepseek.serve.proto import deepseek_serve_pb2 as pb
from deepseek.serve.proto import deepseek_serve_pb2_grpc as pb_grpc
from deepseek.serve.proto.values import from_list_value, from_struct, to_list_value, to_struct, to_value
from deepseek.serve.spec import SpecError

# deepseek.serve.server.Server, named for annotations only: server.py imports this module (in Server.start), and
# an import back, even under TYPE_CHECKING, would be a cycle to the layer contracts
Server = Any

log = logging.getLogger("deepseek.serve")
Code = grpc.StatusCode
CODES = {401: Code.UNAUTHENTICATED, 404: Code.NOT_FOUND, 409: Code.FAILED_PRECONDITION, 413: Code.RESOURCE_EXHAUSTED,
         422: Code.INVALID_ARGUMENT, 429: Code.RESOURCE_EXHAUSTED, 500: Code.INTERNAL, 503: Code.UNAVAILABLE,
         504: Code.DEADLINE_EXCEEDED}  # fmt: skip
OPEN_SERVICES = (f"/{health.SERVICE_NAME}/", f"/{reflection.SERVICE_NAME}/", "/grpc.reflection.v1.ServerReflection/")


async def start_grpc(server: Server, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Serve ``server`` over gRPC on ``host:port`` (0: a free port) in the running event loop: the grpc server
    and the port it bound. Prints ``gRPC listening on HOST:PORT``."""
    s = server.settings
    interceptors = [ApiKey(s.api_key, server)] if s.api_key else []
    options = [("grpc.max_receive_message_length", s.max_body_bytes), ("grpc.max_send_message_length", -1),
               ("grpc.so_reuseport", 0)]  # fmt: skip  # a port in use is an error, not silently shared
    grpc_server = grpc.aio.server(interceptors=interceptors, options=options)
    pb_grpc.add_InferenceServicer_to_server(Inference(server), grpc_server)
    health_service = Health(server)
    await health_service.refresh()  # NOT_SERVING until the warm-up ends
    health_pb2_grpc.add_HealthServicer_to_server(health_service, grpc_server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), grpc_server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bound = grpc_server.add_insecure_port(address)
    except RuntimeError as exc:  # grpcio raises on a port it cannot bind (older versions return 0)
        raise OSError(f"gRPC cannot listen on {address}: {exc}") from None
    if not bound:
        raise OSError(f"gRPC cannot listen on {address}")
    await grpc_server.start()
    # the health status turns SERVING when the warm-up (Server.start's one task so far) ends; stop() cancels this
    warm_up = list(server.tasks)
    server.tasks.append(asyncio.get_running_loop().create_task(health_service.after(warm_up)))
    print(f"gRPC listening on {host}:{bound}", flush=True)
    return grpc_server, bound


# --------------------------------------------------------------------------------------------- refusals
def _problem(exc: Exception) -> tuple[int, str, dict[str, str]]:
    if isinstance(exc, HTTPProblem):
        return exc.status, exc.message, exc.headers or {}
    if isinstance(exc, SpecError):
        return 422, str(exc), {}
    log.exception("gRPC call failed")
    return 500, f"{type(exc).__name__}: {exc}", {}


async def _abort(context: Any, status: int, message: str, headers: dict[str, str], code_409: Code) -> None:
    code = code_409 if status == 409 else CODES.get(status, Code.UNKNOWN)
    trailing = [("http-status", str(status))]
    trailing += [("retry-after", v) for k, v in headers.items() if k.lower() == "retry-after"]
    await context.abort(code, message, trailing_metadata=tuple(trailing))


def _route(method: str) -> str:
    return f"grpc:/{SERVICE}/{method}"


def served(code_409: Code = Code.FAILED_PRECONDITION) -> Callable:
    """A unary method: its refusals as status codes, and the call counted in the request metrics."""

    def wrap(method: Callable) -> Callable:
        route = _route(method.__name__)

        @functools.wraps(method)
        async def handler(self: Inference, request: Any, context: Any) -> Any:
            start, status = time.perf_counter(), 500
            try:
                reply = await method(self, request, context)
                status = 200
                return reply
            except asyncio.CancelledError:
                left = context.time_remaining()  # None: the call has no deadline
                status = 504 if left is not None and left <= 0 else 499
                raise
            except Exception as exc:
                status, message, headers = _problem(exc)
                await _abort(context, status, message, headers, code_409)
            finally:
                self.count(route, getattr(request, "model", ""), status, start)

        return handler

    return wrap


# --------------------------------------------------------------------------------------------- the service
class Inference(pb_grpc.InferenceServicer):
    def __init__(self, server: Server) -> None:
        self.server = server

    def count(self, route: str, model: str, status: int, start: float) -> None:
        model = model if status != 404 else ""  # a made-up name must not grow the metrics without bound
        metrics = self.server.metrics
        metrics.requests.labels(route, model, str(status)).inc()
        metrics.latency.labels(route, model).observe(time.perf_counter() - start)

    def _budget(self, request: Any, context: Any) -> float | None:
        """The request's ``timeout_s``, or the model's default budget, cut to the call's deadline if sooner."""
        asked = request.timeout_s if request.HasField("timeout_s") else None
        if asked is not None and not 0 < asked <= 3600:
            raise HTTPProblem(422, f"'timeout_s': {asked!r} is not allowed; it must be in (0, 3600]")
        left = context.time_remaining()
        if left is None:
            return asked
        m, _ = self.server.lookup(request.model, _version(request))
        budget = asked or m.settings.get("timeout_s") or self.server.settings.timeout_s
        return min(budget, max(left, 1e-3))

    @served()
    async def Predict(self, request: pb.PredictRequest, context: Any) -> pb.PredictResponse:
        out = await self.server.predict(request.model, _version(request), from_list_value(request.instances),
                                        from_struct(request.parameters), self._budget(request, context))  # fmt: skip
        return pb.PredictResponse(model=out["model"], version=out["version"],
                                  predictions=to_list_value(out["predictions"]))  # fmt: skip

    @served(code_409=Code.ALREADY_EXISTS)
    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Any) -> pb.JobAccepted:
        key = request.idempotency_key if request.HasField("idempotency_key") else None
        if key is not None and not 0 < len(key) <= 200:
            raise HTTPProblem(422, f"'idempotency_key': {len(key)} characters; it must have 1 to 200")
        body = {"instances": from_list_value(request.instances), "parameters": from_struct(request.parameters),
                "timeout_s": request.timeout_s if request.HasField("timeout_s") else None}  # fmt: skip
        if body["timeout_s"] is not None and not 0 < body["timeout_s"] <= 3600:
            raise HTTPProblem(422, f"'timeout_s': {body['timeout_s']!r} is not allowed; it must be in (0, 3600]")
        job, made = await self.server.submit_job(request.model, _version(request), body, key)
        return pb.JobAccepted(id=job["id"], status=job["status"], created=made)

    @served()
    async def GetJob(self, request: pb.JobRequest, context: Any) -> pb.Job:
        return job_message(await self.server.get_job(request.id))

    @served()
    async def CancelJob(self, request: pb.JobRequest, context: Any) -> pb.Job:
        return job_message(await self.server.cancel_job(request.id))

    @served()
    async def ListModels(self, request: pb.ListModelsRequest, context: Any) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=[to_struct(d) for d in self.server.describe_models()])

    async def Stream(self, request: pb.PredictRequest, context: Any) -> AsyncIterator[pb.StreamEvent]:
        """Token, result and done events as the REST stream's SSE; an ``error`` event ends the call with its code."""
        start, status = time.perf_counter(), 500
        try:
            events = self.server.open_stream(request.model, _version(request), from_list_value(request.instances),
                                             from_struct(request.parameters))  # fmt: skip
            status = 200
            async for event, data in events:
                if event == "error":  # the model failed mid-stream: the events before it are out already
                    raise HTTPProblem(int(data.get("status", 500)), data["error"])
                yield stream_message(event, data)
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception as exc:
            status, message, headers = _problem(exc)
            await _abort(context, status, message, headers, Code.FAILED_PRECONDITION)
        finally:
            self.count(_route("Stream"), request.model, status, start)


def _version(request: Any) -> str | None:
    return request.version if request.HasField("version") else None


def stream_message(event: str, data: dict[str, Any]) -> pb.StreamEvent:
    if event == "token":
        return pb.StreamEvent(token=pb.Token(index=data["index"], token_id=data["token_id"], text=data.get("text")))
    if event == "result":
        return pb.StreamEvent(result=pb.ChunkResult(index=data["index"], prediction=to_value(data["prediction"])))
    if event == "done":
        return pb.StreamEvent(done=pb.Done(token_ids=data.get("token_ids", []), text=data.get("text"),
                                           chunks=data.get("chunks")))  # fmt: skip
    raise HTTPProblem(500, f"stream event '{event}' has no gRPC message")  # a new event kind needs one in the .proto


def job_message(job: dict[str, Any]) -> pb.Job:
    """A job as :meth:`Server.get_job` returns it; absent or None fields stay unset."""
    fields = {k: job.get(k) for k in ("id", "model", "version", "status", "created", "started", "finished",
                                      "attempts", "crashes", "idempotency_key", "error")}  # fmt: skip
    out = pb.Job(**{k: v for k, v in fields.items() if v is not None})
    if "result" in job:
        out.result.CopyFrom(to_value(job["result"]))
    return out


# --------------------------------------------------------------------------------------------- API key, health
class ApiKey(grpc.aio.ServerInterceptor):
    """The REST API key for gRPC: metadata ``authorization: Bearer <key>`` or ``x-api-key: <key>``."""

    def __init__(self, api_key: str, server: Server) -> None:
        self.key, self.server = api_key.encode(), server

    async def intercept_service(self, continuation: Callable, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES) or self._authorized(details):
            return handler
        self.server.metrics.requests.labels(f"grpc:{details.method}", "", "401").inc()

        async def refuse(request: Any, context: Any) -> None:
            await context.abort(Code.UNAUTHENTICATED, "missing or wrong API key: send metadata 'authorization: "
                                "Bearer <key>' or 'x-api-key: <key>'", trailing_metadata=(("http-status", "401"),))  # fmt: skip

        make = (
            grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
        )
        return make(refuse)  # no deserializer: the refused request is never parsed

    def _authorized(self, details: grpc.HandlerCallDetails) -> bool:
        meta = {k.lower(): v for k, v in details.invocation_metadata or ()}
        auth = meta.get("authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else meta.get("x-api-key")
        return isinstance(key, str) and hmac.compare_digest(key.encode(), self.key)


class Health(health.aio.HealthServicer):
    """``grpc.health.v1``: the service is SERVING when :meth:`Server.readiness` says ready (as ``/readyz``)."""

    def __init__(self, server: Server) -> None:
        super().__init__()
        self.server, self.serving = server, None

    async def refresh(self) -> None:
        ready = self.server.readiness()["ready"]
        if ready != self.serving:
            self.serving = ready
            status = health_pb2.HealthCheckResponse
            await self.set(SERVICE, status.SERVING if ready else status.NOT_SERVING)

    async def after(self, tasks: list[asyncio.Task]) -> None:
        if tasks:
            await asyncio.wait(tasks)  # asyncio.wait, not gather: cancelling this must not cancel the warm-up
        await self.refresh()  # wakes Watch callers

    async def Check(self, request: Any, context: Any) -> Any:
        await self.refresh()
        return await super().Check(request, context)
