"""The gRPC side of :class:`deepseek.serve.Client` (``Client("grpc://HOST:PORT")``): the same methods and answers
as over REST, and the same :class:`~deepseek.serve.client.ServeError` with the HTTP-equivalent status (passed in
as ``error``: this module does not import client.py, which imports it).

The status comes from the trailing metadata ``http-status`` the server sends with every refusal; a refusal grpc
makes itself (a message over the server's size limit, a server that cannot be reached) has none and is mapped
from its code (RESOURCE_EXHAUSTED without ``retry-after``: 413). Numbers travel as doubles: whole ones read back
as ints (:mod:`deepseek.serve.proto.values`). A stream has no deadline (as over REST, where the timeout is per
read); every other call has ``timeout`` seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deepseek.serve.proto import SERVICE
from deepseek.serve.proto import deepseek_serve_pb2 as pb
from deepseek.serve.proto import deepseek_serve_pb2_grpc as pb_grpc
from deepseek.serve.proto.values import from_list_value, from_struct, from_value, to_list_value, to_struct

Code = grpc.StatusCode
HTTP_STATUS = {Code.UNAUTHENTICATED: 401, Code.NOT_FOUND: 404, Code.FAILED_PRECONDITION: 409, Code.ALREADY_EXISTS: 409,
               Code.INVALID_ARGUMENT: 422, Code.RESOURCE_EXHAUSTED: 413, Code.INTERNAL: 500, Code.UNAVAILABLE: 503,
               Code.DEADLINE_EXCEEDED: 504, Code.CANCELLED: 499, Code.UNIMPLEMENTED: 501}  # fmt: skip


def http_status(exc: grpc.RpcError) -> tuple[int, str, float | None]:
    """A failed call's REST status, message and ``retry-after`` (seconds)."""
    trailing = {k: v for k, v in (exc.trailing_metadata() or ())}  # type: ignore[attr-defined]
    retry = trailing.get("retry-after")
    status = trailing.get("http-status")
    if status is None:
        status = 429 if exc.code() == Code.RESOURCE_EXHAUSTED and retry else HTTP_STATUS.get(exc.code(), 500)  # type: ignore[attr-defined]
    return int(status), exc.details() or str(exc.code()), float(retry) if retry else None  # type: ignore[attr-defined]


class GrpcClient:
    def __init__(self, target: str, api_key: str | None, timeout: float, error: type[Exception]) -> None:
        """``target``: ``host:port`` (``[::1]:port`` for IPv6); ``error(status, message, retry_after)``: what a
        refusal raises (:class:`deepseek.serve.ServeError`)."""
        self.error = error
        # no size limit on answers here: the server's max_body_bytes limits what it takes, not what it sends
        self.channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
        self.stub = pb_grpc.InferenceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        try:
            return method(request, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.RpcError as exc:
            raise self.error(*http_status(exc)) from None

    def predict(self, model: str, instances: list[Any], parameters: dict[str, Any] | None, version: str | None,
                timeout_s: float | None) -> list[Any]:  # fmt: skip
        request = pb.PredictRequest(model=model, version=version, instances=to_list_value(instances),
                                    parameters=to_struct(parameters or {}), timeout_s=timeout_s)  # fmt: skip
        # the call's deadline outlives the budget: the server's 504 says why, a bare deadline would not
        deadline = max(self.timeout, timeout_s + 5) if timeout_s else None
        return from_list_value(self._call(self.stub.Predict, request, deadline).predictions)

    def submit(self, model: str, instances: list[Any], parameters: dict[str, Any] | None, version: str | None,
               idempotency_key: str | None) -> str:  # fmt: skip
        request = pb.SubmitJobRequest(model=model, version=version, instances=to_list_value(instances),
                                      parameters=to_struct(parameters or {}), idempotency_key=idempotency_key)  # fmt: skip
        return self._call(self.stub.SubmitJob, request).id

    def job(self, job_id: str) -> dict[str, Any]:
        return job_dict(self._call(self.stub.GetJob, pb.JobRequest(id=job_id)))

    def cancel(self, job_id: str) -> dict[str, Any]:
        return job_dict(self._call(self.stub.CancelJob, pb.JobRequest(id=job_id)))

    def stream(self, model: str, instances: list[Any], parameters: dict[str, Any] | None,
               version: str | None) -> Iterator[dict[str, Any]]:  # fmt: skip
        request = pb.PredictRequest(model=model, version=version, instances=to_list_value(instances),
                                    parameters=to_struct(parameters or {}))  # fmt: skip
        call = self.stub.Stream(request, metadata=self.metadata)
        try:
            for message in call:
                yield event_dict(message)
        except grpc.RpcError as exc:
            raise self.error(*http_status(exc)) from None
        finally:
            call.cancel()  # a caller that stops reading ends the server's generation too

    def models(self) -> list[dict[str, Any]]:
        return [from_struct(s) for s in self._call(self.stub.ListModels, pb.ListModelsRequest()).models]

    def ready(self) -> bool:
        """The health service's answer for the Inference service: SERVING once every model warmed up."""
        try:
            answer = self.health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=min(self.timeout, 5))
        except grpc.RpcError:
            return False
        return answer.status == health_pb2.HealthCheckResponse.SERVING


def job_dict(job: pb.Job) -> dict[str, Any]:
    """The keys ``GET /v1/jobs/{id}`` answers with: ``started``/``finished``/``version`` None when unset,
    ``idempotency_key``/``result``/``error`` only when set."""
    out: dict[str, Any] = {"id": job.id, "model": job.model}
    out["version"] = job.version if job.HasField("version") else None
    out["status"] = job.status
    out["created"] = job.created
    for k in ("started", "finished"):
        out[k] = getattr(job, k) if job.HasField(k) else None
    out["attempts"], out["crashes"] = job.attempts, job.crashes
    if job.HasField("idempotency_key"):
        out["idempotency_key"] = job.idempotency_key
    if job.HasField("result"):
        out["result"] = from_value(job.result)
    if job.HasField("error"):
        out["error"] = job.error
    return out


def event_dict(message: pb.StreamEvent) -> dict[str, Any]:
    """A stream message as the REST client yields the SSE event: ``{"event": ..., **data}``."""
    kind = message.WhichOneof("event")
    if kind == "token":
        t = message.token
        out: dict[str, Any] = {"event": "token", "index": t.index, "token_id": t.token_id}
        if t.HasField("text"):
            out["text"] = t.text
        return out
    if kind == "result":
        return {"event": "result", "index": message.result.index, "prediction": from_value(message.result.prediction)}
    done = message.done
    if done.HasField("chunks"):
        return {"event": "done", "chunks": done.chunks}
    out = {"event": "done", "token_ids": list(done.token_ids)}
    if done.HasField("text"):
        out["text"] = done.text
    return out
