"""``deepseek-viz --logdir DIR [--port 6006] [--host 127.0.0.1]``: the training visualizer's web server.

Binds 127.0.0.1 unless ``--host`` says otherwise (the page shows everything under the log directory to whoever
can reach it). ``--port 0`` takes a free port; the ``listening on`` line says which.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from deepseek.cli.errors import UsageError


def cmd_viz(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from deepseek.viz import create_app
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"deepseek-viz needs the viz extra ({exc.name} is missing): pip install 'deepseek-framework[viz]'"
        ) from None
    logdir = Path(args.logdir)
    if not logdir.is_dir():
        what = "is not a directory" if logdir.exists() else "does not exist"
        raise UsageError(f"--logdir: {str(logdir)!r} {what}; pass a directory that holds run directories")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port: {args.port} is not allowed; it must be 0..65535 (0 picks a free port)")
    if args.poll_ms < 100:
        raise UsageError(f"--poll-ms: {args.poll_ms} is not allowed; it must be >= 100")
    try:
        sock = socket.create_server((args.host, args.port))
    except OSError as exc:
        raise UsageError(f"--port: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    port = sock.getsockname()[1]
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving {logdir} on {args.host}: anyone who can reach it can read the runs", file=sys.stderr)
    print(f"deepseek-viz: runs under {logdir.resolve()}", flush=True)
    print(f"listening on http://{args.host}:{port}", flush=True)
    config = uvicorn.Config(create_app(logdir, poll_ms=args.poll_ms), log_level=args.log_level, access_log=False,
                            timeout_graceful_shutdown=2)  # fmt: skip
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--logdir", required=True, help="a directory of run directories (or one run directory)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=6006, help="default 6006; 0 picks a free port")
    p.add_argument("--poll-ms", type=int, default=3000, help="how often the page looks for new records (ms)")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(fn=cmd_viz)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``deepseek-viz`` command."""
    from deepseek.cli.dispatch import run_command

    parser = argparse.ArgumentParser(
        prog="deepseek-viz", description="Show the runs under a log directory in a web page, updated while they train."
    )
    add_arguments(parser)
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":  # python -m deepseek.cli.viz_cmd: the same command without the installed script
    sys.exit(main())
