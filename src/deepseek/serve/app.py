"""The REST transport (FastAPI): sync predictions, jobs, Server-Sent Event streams, health and metrics.

The work is done by :class:`deepseek.serve.server.Server`, shared with the gRPC transport.

Routes (``{name}`` is a model; ``/versions/{version}`` may follow it, else its default version: the first, or the
fastest of a run's fp32 versions, see ``Server._pick_fastest``):

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

import contextlib
import json
import re
from typing import Any

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

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
from deepseek.serve.metrics import ServeMetrics
from deepseek.serve.model import ServedModel
from deepseek.serve.server import HTTPProblem, Server, ServeSettings
from deepseek.serve.spec import SpecError

__all__ = ["HTTPProblem", "ServeSettings", "create_app"]


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
        body = server.readiness()
        return JSONResponse(body, 200 if body["ready"] else 503)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text"},
                        **errors(401)})  # fmt: skip
    async def prometheus() -> PlainTextResponse:
        await server.update_job_gauge()
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models", tags=["models"], responses=errors(401))
    async def list_models() -> dict[str, Any]:
        return {"models": server.describe_models()}

    @app.get("/v1/models/{name}", tags=["models"], responses=errors(401, 404, 422))
    async def describe(name: str) -> dict[str, Any]:
        return server.describe(name)

    sync_errors = errors(401, 404, 413, 422, 429, 500, 503, 504)

    @app.post("/v1/models/{name}/predict", tags=["inference"], responses=sync_errors)
    @app.post("/v1/models/{name}/versions/{version}/predict", tags=["inference"], responses=sync_errors)
    async def predict(name: str, body: PredictRequest, version: str | None = None) -> dict[str, Any]:
        return await server.predict(name, version, body.instances, body.parameters, body.timeout_s)

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
        job, made = await server.submit_job(name, version, body.model_dump(), idempotency_key)
        return JSONResponse(job, 202 if made else 200, headers={"Location": f"/v1/jobs/{job['id']}"})

    @app.get("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView, response_model_exclude_unset=True,
             responses=errors(401, 404, 422))  # fmt: skip
    async def get_job(job_id: str) -> dict[str, Any]:
        return await server.get_job(job_id)

    @app.delete("/v1/jobs/{job_id}", tags=["jobs"], response_model=JobView, response_model_exclude_unset=True,
                responses=errors(401, 404, 409, 422))  # fmt: skip
    async def cancel_job(job_id: str) -> JSONResponse:
        return JSONResponse(await server.cancel_job(job_id))

    stream_docs = {200: STREAM_OK, **errors(401, 404, 413, 422, 503)}

    @app.post("/v1/models/{name}/stream", tags=["inference"], response_class=StreamingResponse, responses=stream_docs)
    @app.post("/v1/models/{name}/versions/{version}/stream", tags=["inference"], response_class=StreamingResponse,
              responses=stream_docs)  # fmt: skip
    async def stream(name: str, body: PredictRequest, version: str | None = None) -> StreamingResponse:
        events = server.open_stream(name, version, body.instances, body.parameters)
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(_sse(events), media_type="text/event-stream", headers=headers)

    return Guard(app, settings.api_key, settings.max_body_bytes, metrics, fast_predict(app, server))


PREDICT_PATH = re.compile(r"/v1/models/([^/]+)/(?:versions/([^/]+)/)?predict")
PREDICT_KEYS = {"instances", "parameters", "timeout_s"}


def fast_predict(app: FastAPI, server: Server) -> Any:
    """``answer(scope, body, send) -> bool``: a ``POST .../predict`` whose JSON body :class:`PredictRequest` takes
    as it is, answered without FastAPI's per-request dependency solving and response validation (two thirds
    of the REST cost of a prediction; see docs/serve.md, throughput). Anything else returns False, untouched,
    for FastAPI, whose handlers word every refusal; the answers are the same bytes either way."""
    routes = {r.path: r for r in app.routes if getattr(r, "path", "").endswith("/predict")}
    plain, versioned = routes["/v1/models/{name}/predict"], routes["/v1/models/{name}/versions/{version}/predict"]

    async def answer(scope: dict, body: bytes, send: Any) -> bool:
        # a query string may carry ?version= for the unversioned route: FastAPI reads it
        plain_scope = scope["method"] == "POST" and not scope.get("root_path") and not scope.get("query_string")
        match = plain_scope and PREDICT_PATH.fullmatch(scope["path"])
        if not match or _content_type(scope) != "application/json":
            return False
        try:
            request = json.loads(body)
        except ValueError:  # FastAPI words the 422
            return False
        if not _plain_predict_body(request):
            return False
        name, version = match.groups()
        scope["route"] = versioned if version is not None else plain  # the labels of the request metrics
        scope["path_params"] = {"name": name} if version is None else {"name": name, "version": version}
        headers = None
        try:
            content = await server.predict(name, version, request["instances"], request.get("parameters", {}),
                                           request.get("timeout_s"))  # fmt: skip
            status = 200
        except HTTPProblem as exc:
            content, status, headers = {"error": exc.message}, exc.status, exc.headers
        except SpecError as exc:
            content, status = {"error": str(exc)}, 422
        await JSONResponse(content, status, headers=headers)(scope, _no_body, send)
        return True

    return answer


def _plain_predict_body(request: Any) -> bool:
    """What PredictRequest accepts without coercion: anything else goes through FastAPI's validation."""
    if not isinstance(request, dict) or not isinstance(request.get("instances"), list) or set(request) - PREDICT_KEYS:
        return False
    if not isinstance(request.get("parameters", {}), dict):
        return False
    t = request.get("timeout_s")
    return t is None or (type(t) in (int, float) and 0 < t <= 3600)  # NaN and infinity fail the comparison


def _content_type(scope: dict) -> str:
    for k, v in scope["headers"]:
        if k.lower() == b"content-type":
            return v.decode("latin-1").split(";")[0].strip().lower()
    return ""


async def _no_body() -> dict:
    return {"type": "http.disconnect"}  # a JSON response never reads the request


def sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


async def _sse(events: Any) -> Any:
    async for event, data in events:
        yield sse(event, data)
