"""A real PostgreSQL server for tests, started from the installed binaries (Debian's ``postgresql`` package).

``postgres_server`` (session scope) runs ``initdb`` into a fresh temporary directory and starts ``postgres``
on 127.0.0.1 at a port the OS picked, with its unix socket inside that directory; ``postgres_url`` (per test)
creates a fresh database on it and yields its SQLAlchemy URL ``postgresql+psycopg2://postgres@127.0.0.1:PORT/DB``.
As root (CI) the server runs as the ``postgres`` user (``runuser``), which owns the directory: PostgreSQL
refuses to run as root. Teardown stops it with ``pg_ctl stop -m immediate`` and kills whatever is left of
its process tree. Without PostgreSQL binaries the tests that use it are skipped, saying so.

Use it in a test module with ``postgres_server, postgres_url = postgres.postgres_server, postgres.postgres_url``
(after ``from tests import postgres``), then ask for ``postgres_url`` in a test's arguments.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests import process_tree

START_TIMEOUT_S = 60.0  # an upper bound for a cold start on a loaded machine; polling returns as soon as it is up


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    data_dir: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{self.user}@{self.host}:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its name."""
        import psycopg2

        name = "test_" + uuid.uuid4().hex[:12]
        conn = psycopg2.connect(host=self.host, port=self.port, user=self.user, dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name


def find_bindir() -> Path | None:
    """The directory holding ``initdb``, ``postgres`` and ``pg_ctl``: ``pg_config --bindir`` when it has them
    (Debian's pg_config comes from libpq-dev and may name a server version that is not installed), else the
    newest ``/usr/lib/postgresql/*/bin``; None when there is none."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
    candidates += [Path(p) for p in reversed(versions)]
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "postgres", "pg_ctl")):
            return bindir
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    """PostgreSQL will not run as root: as root, run ``cmd`` as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _can_connect(host: str, port: int) -> bool:
    import psycopg2

    try:
        psycopg2.connect(host=host, port=port, user="postgres", dbname="postgres", connect_timeout=2).close()
    except psycopg2.OperationalError:
        return False
    return True


def _initdb(bindir: Path, data: Path) -> None:
    args = ["-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"]
    init = subprocess.run(_as_server_user([str(bindir / "initdb"), *args]), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, f"initdb failed:\n{init.stdout}\n{init.stderr}"


def _start(bindir: Path, data: Path, sockets: Path, log: Path, port: int) -> subprocess.Popen | None:
    """``postgres`` on 127.0.0.1:``port``, once it accepts connections; None when it exited instead."""
    settings = {"listen_addresses": "127.0.0.1", "fsync": "off", "synchronous_commit": "off",
                "full_page_writes": "off", "max_connections": "60"}  # fmt: skip
    cmd = [str(bindir / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sockets)]
    cmd += [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
    with open(log, "ab") as log_file:
        proc = process_tree.popen(_as_server_user(cmd), stdout=log_file, stderr=subprocess.STDOUT)
    process_tree.poll(lambda: proc.poll() is not None or _can_connect("127.0.0.1", port), START_TIMEOUT_S)
    if proc.poll() is None and _can_connect("127.0.0.1", port):
        return proc
    process_tree.kill_tree(proc)
    return None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (initdb, postgres, pg_ctl): install Debian's postgresql package")
    base = Path(tempfile.mkdtemp(prefix="ds-pg-"))  # under /tmp: the postgres user cannot enter pytest's 0700 dirs
    data, sockets, log = base / "data", base / "sock", base / "postgres.log"
    sockets.mkdir()
    proc = None
    try:
        if os.geteuid() == 0:
            try:
                shutil.chown(base, "postgres", "postgres")
                shutil.chown(sockets, "postgres", "postgres")
            except LookupError:
                pytest.fail(
                    "running as root, but there is no 'postgres' user to run the server (Debian's package adds it)"
                )
        _initdb(bindir, data)
        for _attempt in range(3):  # the port may be taken between choosing and binding it
            port = _free_port()
            proc = _start(bindir, data, sockets, log, port)
            if proc is not None:
                break
        assert proc is not None, f"postgres did not start; its log:\n{log.read_text(errors='replace')[-3000:]}"
        yield PostgresServer("127.0.0.1", port, "postgres", data)
    finally:
        if proc is not None:
            stop = [str(bindir / "pg_ctl"), "stop", "-D", str(data), "-m", "immediate"]
            subprocess.run(_as_server_user(stop), capture_output=True, timeout=60)
            process_tree.kill_tree(proc)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The SQLAlchemy URL of a fresh, empty database on the test server."""
    return postgres_server.url(postgres_server.create_database())


def run_sql(url: str, query: str, *args: Any) -> list[tuple]:
    """One statement on a connection of its own (a test's view of a table): its rows, if it returns any."""
    import psycopg2

    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn, conn.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def poll(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """``condition()``'s first truthy value, polled until ``timeout_s`` (then the test fails)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)  # polling a state another process changes, not synchronising on time
    return value
