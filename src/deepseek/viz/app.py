"""The visualizer's web app: one page (``static/index.html`` + ``static/viz.js``) and the JSON it polls.

Routes (every path or run name a client sends is resolved inside the log directory, see
:func:`deepseek.viz.runs.resolve_under`; bad input answers a JSON ``{"error": "..."}`` with 400 or 404):

- ``GET /``: the page; ``GET /static/...``: its script and style; ``GET /plotly.min.js``: plotly's JavaScript
  from the installed ``plotly`` Python package (no CDN: the page works offline).
- ``GET /healthz``: ``{"ok": true}``, for readiness checks.
- ``GET /api/runs``: the runs and profiler summaries under the log directory, and a ``message`` when there are none.
- ``GET /api/metrics?run=NAME&offset=N`` and ``GET /api/stats?run=NAME&offset=N``: the records of the run's
  ``metrics.jsonl`` / ``stats.jsonl`` from byte ``N`` on, and the offset to ask for next (see
  :class:`deepseek.viz.runs.JsonlChunk`).
- ``GET /api/profile?path=REL``: a profiler ``summary.json``, with ``links`` to its files.
- ``GET /files/REL``: a file under the log directory (the profiler's flame graph SVGs, its trace).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from deepseek.viz.runs import OutsideLogdirError, discover, read_jsonl, read_profile, resolve_under

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_POLL_MS = 3000


def plotly_js() -> Path:
    """``plotly.min.js`` as shipped in the installed plotly Python package's ``package_data``."""
    path = Path(str(resources.files("plotly") / "package_data" / "plotly.min.js"))
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js not found in the installed plotly package ({path})")
    return path


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _run_file(logdir: Path, run: str, name: str, offset: int) -> dict[str, Any] | JSONResponse:
    try:
        run_dir = resolve_under(logdir, run)
    except OutsideLogdirError as exc:
        return _error(400, f"run: {exc}")
    if not (run_dir / "metrics.jsonl").is_file():
        return _error(404, f"run: no run {run!r} under the log directory (no metrics.jsonl there)")
    if offset < 0:
        return _error(400, f"offset: {offset} is not allowed; it must be >= 0")
    try:
        chunk = read_jsonl(run_dir / name, offset)
    except OSError as exc:  # unreadable (permissions, a directory by that name): say so, do not fail the page
        return _error(400, f"{run}/{name}: cannot be read ({exc.strerror or exc})")
    return {"run": run, "file": name, **chunk.as_dict()}


def create_app(logdir: str | Path, poll_ms: int = DEFAULT_POLL_MS) -> FastAPI:
    """The app serving the runs under ``logdir``; the page polls every ``poll_ms`` milliseconds."""
    root = Path(logdir).resolve()
    app = FastAPI(title="deepseek-viz", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    plotly_path = plotly_js()

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/plotly.min.js", include_in_schema=False)
    def plotly() -> FileResponse:
        return FileResponse(plotly_path, media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})

    @app.get("/healthz")
    def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/api/runs")
    def runs() -> dict[str, Any]:
        found = discover(root)
        message = None
        if not root.is_dir():
            message = f"the log directory {root} does not exist (any more)"
        elif not found["runs"] and not found["profiles"]:
            message = (f"no runs under {root} yet: a run is a directory holding metrics.jsonl "
                       "(deepseek train ... --run-dir DIR); the page looks again every few seconds")  # fmt: skip
        return {"logdir": str(root), "poll_ms": poll_ms, "message": message, **found}

    @app.get("/api/metrics", response_model=None)
    def metrics(run: str = Query(...), offset: int = 0) -> dict[str, Any] | JSONResponse:
        return _run_file(root, run, "metrics.jsonl", offset)

    @app.get("/api/stats", response_model=None)
    def stats(run: str = Query(...), offset: int = 0) -> dict[str, Any] | JSONResponse:
        return _run_file(root, run, "stats.jsonl", offset)

    @app.get("/api/profile", response_model=None)
    def profile(path: str = Query(...)) -> dict[str, Any] | JSONResponse:
        try:
            return read_profile(root, path)
        except OutsideLogdirError as exc:
            return _error(400, f"path: {exc}")
        except ValueError as exc:
            return _error(404 if "no such file" in str(exc) else 400, str(exc))

    @app.get("/files/{relative:path}", response_model=None)
    def files(relative: str) -> FileResponse | JSONResponse:
        try:
            target = resolve_under(root, relative)
        except OutsideLogdirError as exc:
            return _error(400, f"path: {exc}")
        if not target.is_file():
            return _error(404, f"path: no file {relative!r} under the log directory")
        return FileResponse(target)

    return app
