"""What the OpenAPI document says about the server, and ``/docs`` + ``/redoc`` served without internet.

Every refusal has the body ``{"error": "<one line>"}`` (:class:`ErrorBody`), whether it comes from a route,
the request validation (422, with the validation errors under ``detail``) or :class:`~deepseek.serve.guard.Guard`
(401, 413), so the document lists those statuses with that schema instead of FastAPI's ``HTTPValidationError``.

The Swagger UI and ReDoc pages load their JavaScript and CSS from ``/docs/assets/``: the files shipped by the
``fastapi-offline`` package (MIT), not a CDN, so the docs work on a machine without internet.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import Match

ASSETS_URL = "/docs/assets"
DOC_PATHS = ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")  # open even with an API key


class ErrorBody(BaseModel):
    """The body of every 4xx/5xx answer."""

    error: str = Field(description="what was wrong, in one line")
    detail: list[Any] | None = Field(None, description="422 from request validation: pydantic's errors")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # minItems documents the model's own refusal of [] (spec.py), which words it better than pydantic would
    instances: list[Any] = Field(description="one entry per sample: a nested list, an object of them, or a string",
                                 json_schema_extra={"minItems": 1})  # fmt: skip
    parameters: dict[str, Any] = Field(default_factory=dict, description="decoders: max_new_tokens, temperature, top_k")
    timeout_s: float | None = Field(None, gt=0, le=3600, allow_inf_nan=False,
                                    description="time budget of this request (504 past it)")  # fmt: skip


class JobAccepted(BaseModel):
    id: str
    status: str


class JobView(BaseModel):
    """A job as ``GET /v1/jobs/{id}`` shows it."""

    id: str
    model: str
    version: str | None
    status: str = Field(description="queued, running, succeeded, failed or cancelled")
    created: float
    started: float | None
    finished: float | None
    attempts: int = Field(description="runs started; above 1 when a server died running it (at-least-once)")
    crashes: int = Field(0, description="servers that died while it ran alone; max_job_attempts caps them")
    idempotency_key: str | None = None
    result: Any = Field(None, description="succeeded: one result per instance")
    error: str | None = Field(None, description="failed: '<status>: <why>'")


_WHY = {
    401: "missing or wrong API key (only when the server has one)",
    404: "no such model, version or job",
    409: "the job is already finished, or the Idempotency-Key was used with another request",
    413: "request body over --max-body-mb",
    422: "the request breaks the schema or the model's input spec (NaN/Infinity, shape, dtype, ...)",
    429: "the model's queue (or the job queue) is full; retry after Retry-After seconds",
    500: "the model raised on this request",
    503: "still warming up (Retry-After)",
    504: "no result within the time budget (timeout_s)",
}
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}


SSE_EVENT = {  # one Server-Sent Event of /stream, as text/event-stream schemas describe each event
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"enum": ["token", "result", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json",
                 "description": "token: {index, token_id, text?}; result: {index, prediction}; done; error: {error}"},
    },
}  # fmt: skip
STREAM_OK = {"content": {"text/event-stream": {"schema": SSE_EVENT}},
             "description": "token (decoders) or result (one per instance) events, then done; or error"}  # fmt: skip


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route answering ``statuses`` with :class:`ErrorBody`."""
    out: dict[int | str, dict[str, Any]] = {}
    for s in statuses:
        out[s] = {"model": ErrorBody, "description": _WHY[s]}
        if s in (429, 503):
            out[s]["headers"] = _RETRY_AFTER
    return out


def allowed_methods(app: FastAPI, scope: dict) -> list[str]:
    """Every method some route of ``app`` answers at ``scope``'s path (a 405's ``Allow``; Starlette names only
    the methods of the first route whose path matched, e.g. GET but not DELETE of ``/v1/jobs/{job_id}``)."""
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)


def add_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` on ``app`` (made with ``docs_url=None, redoc_url=None``)."""
    static = importlib.resources.files("fastapi_offline") / "static"
    app.mount(ASSETS_URL, StaticFiles(directory=str(static)), name="docs-assets")
    title, openapi_url = app.title, app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{title} - Swagger UI", oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )  # fmt: skip

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=openapi_url, title=f"{title} - ReDoc", redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_URL}/favicon.png", with_google_fonts=False)  # fmt: skip
