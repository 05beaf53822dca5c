"""The ASGI layer in front of every route: API key (401), body limit (413), and request metrics.

Pure ASGI rather than FastAPI dependencies so that it runs before the body is parsed (a 50 MB
body is refused after ``max_body_bytes``, never buffered whole) and adds no per-request task the way
Starlette's ``BaseHTTPMiddleware`` does.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from deepseek.serve.metrics import ServeMetrics

OPEN_PATHS = ("/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect")
OPEN_PREFIXES = ("/docs/assets/",)  # the docs pages' JavaScript and CSS (deepseek.serve.docs)


class Guard:
    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int, metrics: ServeMetrics,
                 fast: Callable[[dict, bytes, Any], Awaitable[bool]] | None = None) -> None:  # fmt: skip
        """``fast(scope, body, send)``: answers a request it recognises (True) before ``app`` would."""
        self.app, self.api_key, self.max_body, self.metrics, self.fast = app, api_key, max_body_bytes, metrics, fast

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        if self.api_key and not _open(scope["path"]) and not self._authorized(scope):
            return await self._refuse(send, 401, "missing or wrong API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                                [(b"www-authenticate", b"Bearer")])  # fmt: skip
        if scope["method"] in ("POST", "PUT", "PATCH"):
            declared = _header(scope, b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                return await self._refuse(
                    send, 413, f"request body of {declared} bytes is over the {self.max_body}-byte limit"
                )
            body = bytearray()
            while True:  # read a chunked body up to the limit, then hand it on
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                body += message.get("body", b"")
                if len(body) > self.max_body:
                    return await self._refuse(send, 413, f"request body is over the {self.max_body}-byte limit")
                if not message.get("more_body"):
                    break
            receive = _replay(bytes(body), receive)
            if not (_header(scope, b"content-type") or "").startswith("application/json"):
                # Every POST route takes JSON only; `curl -d '{...}'` labels it form data, which FastAPI
                # would refuse with a confusing "valid dictionary" error. Parse it as what it must be.
                rest = [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
                scope = {**scope, "headers": [*rest, (b"content-type", b"application/json")]}
        else:
            body = None
        status = 500

        async def send_and_count(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if body is None or self.fast is None or not await self.fast(scope, body, send_and_count):
                await self.app(scope, receive, send_and_count)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            # an unknown name is not a label: a scan of made-up names must not grow the metrics without bound
            model = (scope.get("path_params") or {}).get("name", "") if status != 404 else ""
            self.metrics.requests.labels(route, model, str(status)).inc()
            self.metrics.latency.labels(route, model).observe(time.perf_counter() - start)

    async def _refuse(self, send: Any, status: int, message: str, headers: list | None = None) -> None:
        """Answer before any route runs; counted under the route label ``refused``."""
        self.metrics.requests.labels("refused", "", str(status)).inc()
        await _reply(send, status, message, headers)

    def _authorized(self, scope: dict) -> bool:
        auth = _header(scope, b"authorization") or ""
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else _header(scope, b"x-api-key")
        return key is not None and hmac.compare_digest(key.encode(), self.api_key.encode())  # type: ignore[union-attr]


def _open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def _header(scope: dict, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later: wait for the disconnect (streaming responses listen for it)

    return replay


async def _reply(send: Any, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"error": message}).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
