"""``ds.serve.Client``: the server's three modes from Python, over REST (httpx) or gRPC.

>>> client = Client("http://127.0.0.1:8080")                     # doctest: +SKIP
>>> client = Client("grpc://127.0.0.1:50051")                    # doctest: +SKIP  # deepseek-serve --grpc-port
>>> client.predict("default", [[[0.0] * 8] * 8])                 # doctest: +SKIP
>>> job = client.submit("default", x); client.wait(job)["result"]  # doctest: +SKIP
>>> for event in client.stream("gpt2", "hello"):                  # doctest: +SKIP
...     if event["event"] == "token": print(event["text"], end="")  # ``done`` repeats the whole text

Instances may be nested lists, torch tensors or numpy arrays (sent as ``.tolist()``), or lists of them.
Both protocols answer alike and refuse alike (:class:`ServeError` with the HTTP status; over gRPC the server
sends it in the trailing metadata, see :mod:`deepseek.serve.grpc_service`), so code written for one runs over
the other; over gRPC a whole-number float reads back as an int (``1.0`` as ``1``: protobuf has one number type).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx


class ServeError(Exception):
    """A non-2xx answer: ``status`` and the server's ``message``."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8080", api_key: str | None = None, timeout: float = 60.0) -> None:
        """``url``: ``http(s)://HOST:PORT`` (REST) or ``grpc://HOST:PORT`` (the server's ``--grpc-port``)."""
        self.grpc: Any = None
        if url.startswith("grpc://"):  # grpcio is needed only by clients that speak gRPC
            from deepseek.serve.grpc_client import GrpcClient

            self.grpc = GrpcClient(url.removeprefix("grpc://").rstrip("/"), api_key, timeout, ServeError)
            return
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"Client url: {url!r} is not allowed; it must start with http://, https:// or grpc://")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def close(self) -> None:
        (self.grpc or self.http).close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------ sync
    def predict(self, model: str, instances: list[Any], parameters: dict[str, Any] | None = None,
                version: str | None = None, timeout_s: float | None = None) -> list[Any]:  # fmt: skip
        """One result per instance; ``instances``: a list, or a tensor/array whose first axis is the samples."""
        body = _body(instances, parameters, timeout_s)
        if self.grpc:
            return self.grpc.predict(model, body["instances"], parameters, version, timeout_s)
        return self._json("POST", f"{_model(model, version)}/predict", json=body)["predictions"]

    # ------------------------------------------------------------------------------ jobs
    def submit(self, model: str, instances: list[Any], parameters: dict[str, Any] | None = None,
               version: str | None = None, idempotency_key: str | None = None) -> str:  # fmt: skip
        """Queue a job; its id. Jobs run at least once; with ``idempotency_key`` (any string of up to 200
        characters, e.g. a uuid4) a retried submit returns the job the first one made instead of a second one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
        body = _body(instances, parameters, None)
        if self.grpc:
            return self.grpc.submit(model, body["instances"], parameters, version, idempotency_key)
        return self._json("POST", f"{_model(model, version)}/jobs", json=body, headers=headers)["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        if self.grpc:
            return self.grpc.job(job_id)
        return self._json("GET", f"/v1/jobs/{job_id}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        if self.grpc:
            return self.grpc.cancel(job_id)
        return self._json("DELETE", f"/v1/jobs/{job_id}")

    def wait(self, job_id: str, timeout: float = 60.0, poll_s: float = 0.05) -> dict[str, Any]:
        """Poll until the job succeeded, failed or was cancelled (TimeoutError after ``timeout`` s)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:g} s")
            time.sleep(poll_s)

    # ------------------------------------------------------------------------------ stream
    def stream(self, model: str, instance: Any, parameters: dict[str, Any] | None = None,
               version: str | None = None, chunks: bool = False) -> Iterator[dict[str, Any]]:  # fmt: skip
        """Server-Sent Events as dicts with an ``event`` key: ``token``/``result`` ..., then ``done``.

        ``instance``: a decoder's one prompt; with ``chunks=True`` a list of chunks, one result each.
        An ``error`` event raises :class:`ServeError`.
        """
        body = _body(instance if chunks else [instance], parameters, None)
        if self.grpc:
            yield from self.grpc.stream(model, body["instances"], parameters, version)
            return
        with self.http.stream("POST", f"{_model(model, version)}/stream", json=body) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            event = "message"
            for line in response.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data = json.loads(line[5:])
                    if event == "error":
                        raise ServeError(data.get("status", 500), data["error"])
                    yield {"event": event, **data}

    # ------------------------------------------------------------------------------ info
    def models(self) -> list[dict[str, Any]]:
        if self.grpc:
            return self.grpc.models()
        return self._json("GET", "/v1/models")["models"]

    def ready(self) -> bool:
        if self.grpc:
            return self.grpc.ready()
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise _error(response)
        return response.json()


def _model(name: str, version: str | None) -> str:
    return f"/v1/models/{name}" + (f"/versions/{version}" if version else "")


def _jsonable(value: Any) -> Any:
    """Tensors and arrays (anything with ``tolist``: torch, numpy) as nested lists, inside lists and dicts too."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()  # a torch tensor on the GPU comes back to the host here
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def _body(instances: Any, parameters: dict[str, Any] | None, timeout_s: float | None) -> dict[str, Any]:
    body: dict[str, Any] = {"instances": _jsonable(instances), "parameters": parameters or {}}
    if timeout_s is not None:
        body["timeout_s"] = timeout_s
    return body


def _error(response: httpx.Response) -> ServeError:
    try:
        message = response.json().get("error", response.text)
    except ValueError:
        message = response.text
    retry = response.headers.get("retry-after")
    return ServeError(response.status_code, message, float(retry) if retry else None)
