"""``deepseek-serve --model_dir DIR --port 8080`` (also ``deepseek serve``): the model directory over HTTP.

Binds 127.0.0.1 unless ``--host`` says otherwise; ``--api-key`` (or ``DEEPSEEK_SERVE_API_KEY``)
makes every route but the health checks and docs answer 401 without it. ``--port 0`` takes a free
port; the ``listening on`` line says which. ``--grpc-port P`` also serves gRPC (same models, batcher, jobs,
API key and metrics; on ``--host`` too; 0: a free port, printed as ``gRPC listening on HOST:PORT``). A model directory is data: code its ``config.yaml`` or
``serve.yaml`` names (``my_models:Probe``) is imported only with ``--trust-code``.
"""

from __future__ import annotations

import argparse
import os
import socket
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deepseek.cli.errors import UsageError

API_KEY_ENV = "DEEPSEEK_SERVE_API_KEY"


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from deepseek.serve import ModelDirError, ServeSettings, create_app, discover
        from deepseek.serve.jobs import open_job_store
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"serving needs the serve extra ({exc.name} is missing): pip install 'deepseek-framework[serve]'"
        ) from None
    if args.max_batch_size < 1 or args.max_delay_ms < 0 or args.max_queue < 1 or args.timeout_s <= 0:
        raise UsageError("--max-batch-size and --max-queue must be >= 1, --max-delay-ms >= 0, --timeout-s > 0")
    if args.max_job_attempts < 1:
        raise UsageError(f"--max-job-attempts: {args.max_job_attempts} is not allowed; it must be >= 1")
    if args.grpc_port is not None:
        check_grpc_port(args.grpc_port, args.port)
    model_dir = Path(args.model_dir)
    try:
        models = discover(model_dir, trust_code=args.trust_code)
    except ModelDirError as exc:
        raise UsageError(str(exc)) from None
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print(f"warning: serving on {args.host} with no API key: anyone who can reach it can use it", file=sys.stderr)
    settings = ServeSettings(
        max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms, max_queue=args.max_queue,
        timeout_s=args.timeout_s, max_body_bytes=int(args.max_body_mb * 2**20), api_key=api_key,
        jobs_db=args.jobs_db or (model_dir / ".serve" / "jobs.sqlite"), max_job_attempts=args.max_job_attempts,
        job_lease_s=args.job_lease_s, grpc_port=args.grpc_port, grpc_host=args.host,
        default_version=args.default_version,
    )  # fmt: skip
    if args.job_lease_s <= 0:
        raise UsageError(f"--job-lease-s: {args.job_lease_s:g} is not allowed; it must be > 0")
    try:  # a read-only model directory fails here, with the way out, not in the server's start-up
        open_job_store(settings.jobs_db, settings.job_lease_s).close()
    except (OSError, ValueError, sqlite3.Error) as exc:  # open_job_store words a PostgreSQL failure as a ValueError
        if "://" in str(settings.jobs_db):  # the message names the URL, its password hidden
            raise UsageError(f"--jobs-db: {exc}") from None
        raise UsageError(f"jobs database '{settings.jobs_db}': {exc}; pass --jobs-db PATH somewhere writable "
                         "(or a postgresql:// URL)") from None  # fmt: skip
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as exc:
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    # uvicorn sets TCP_NODELAY only on sockets it binds itself; without it every keep-alive request
    # waits ~40 ms for a delayed ACK (Nagle). Accepted connections inherit it from the listener.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    port = sock.getsockname()[1]
    if args.grpc_port:  # the gRPC server binds during start-up: a port in use is a usage error now, not a crash then
        try:
            socket.create_server((args.host, args.grpc_port)).close()
        except OSError as exc:
            raise UsageError(f"--grpc-port: cannot listen on {args.host}:{args.grpc_port}: {exc.strerror}") from None
    names = sorted({f"{m.name}:{m.version}" for m in models})
    print(f"deepseek-serve: {len(names)} model(s): {', '.join(names)}", flush=True)
    print(f"listening on http://{args.host}:{port} (docs: /docs, batching: max {args.max_batch_size}, "
          f"{args.max_delay_ms:g} ms)", flush=True)  # fmt: skip
    config = uvicorn.Config(create_app(models, settings), log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=5)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def check_grpc_port(grpc_port: int, http_port: int) -> None:
    """``--grpc-port``: a port number other than ``--port``, and the grpc extra installed."""
    if not 0 <= grpc_port <= 65535 or (grpc_port and grpc_port == http_port):
        raise UsageError(f"--grpc-port: {grpc_port} is not allowed; it must be in 0..65535 (0: a free port) "
                         f"and differ from --port {http_port}")  # fmt: skip
    try:
        import deepseek.serve.grpc_service  # noqa: F401
    except ModuleNotFoundError as exc:
        raise UsageError(f"--grpc-port needs the grpc extra ({exc.name} is missing): "
                         "pip install 'deepseek-framework[grpc]'") from None  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model_dir", "--model-dir", dest="model_dir", required=True,
                   help="a run directory, a folder of runs/.onnx/.pt2 files/OpenVINO .xml IRs, or one with serve.yaml")  # fmt: skip
    p.add_argument("--default-version", choices=("fastest", "first"), default="fastest",
                   help="what a request naming no version gets: the fastest of a run's fp32 versions (the torch model, "
                   "model.onnx, model.openvino.xml; timed at warm-up), or always the first (the torch model)")  # fmt: skip
    p.add_argument("--trust-code", action="store_true",
                   help="import the Python code (module:Class import paths) that the directory's config.yaml or "
                   "serve.yaml names: it runs with your permissions; without it only registered names load")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8080, help="default 8080; 0 picks a free port")
    p.add_argument("--grpc-port", type=int, default=None,
                   help="also serve gRPC (deepseek.serve.v1.Inference, with reflection) on this port; 0: a free one")  # fmt: skip
    p.add_argument("--api-key", default=None, help=f"require this key (or set {API_KEY_ENV})")
    p.add_argument("--max-batch-size", type=int, default=32, help="samples per forward pass; 1 turns batching off")
    p.add_argument("--max-delay-ms", type=float, default=5.0, help="how long a batch waits to fill (default 5)")
    p.add_argument("--max-queue", type=int, default=256, help="queued samples per model before 429 (default 256)")
    p.add_argument("--timeout-s", type=float, default=30.0, help="a request's default time budget before 504")
    p.add_argument("--max-body-mb", type=float, default=1.0, help="largest request body (default 1 MiB) before 413")
    p.add_argument("--jobs-db", default=None, help="SQLite file of async jobs (default MODEL_DIR/.serve/jobs.sqlite), "
                   "or a postgresql://user@host/db URL: one job store shared by several server replicas")  # fmt: skip
    p.add_argument("--job-lease-s", type=float, default=15.0,
                   help="PostgreSQL store: a replica silent this long has its running jobs taken over (default 15)")  # fmt: skip
    p.add_argument("--max-job-attempts", type=int, default=3,
                   help="a job that crashed the server this many times is failed, not re-run (default 3)")  # fmt: skip
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(fn=cmd_serve)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve a model directory over HTTP (same as deepseek-serve)",
                       description="Serve a model directory over HTTP: predictions, async jobs, streams.")  # fmt: skip
    add_arguments(p)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``deepseek-serve`` command."""
    from deepseek.cli.dispatch import run_command

    sys.path.insert(0, os.getcwd())  # a trusted serve.yaml may name the user's own model classes (module:Class)
    parser = argparse.ArgumentParser(
        prog="deepseek-serve", description="Serve a model directory over HTTP: predictions, async jobs, streams."
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))
