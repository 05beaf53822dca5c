"""Token streams of a decoder at concurrency 1, 8 and 32: continuous vs static vs per-request batching.

The model is deepseek's GPT-2 with MiniLM's 30,522-token vocabulary, 4 blocks of width 256 and 4 heads
(256 positions; 11.0M parameters, 7.8M of them the tied embedding), untrained (seed 0): no small pretrained
decoder ships in a package usable offline here. ``--quick``: 2 blocks of width 64, fewer and shorter requests.

Each request has its own prompt (4 to 32 tokens) and its own ``max_new_tokens`` (cycling 8, 16, 32, 64;
quick: 4, 8, 16), greedy; ``concurrency`` clients send them closed-loop, in-process on one event loop, to
the same served model and its batcher (one model thread), so only the scheduling differs:

* continuous: :mod:`deepseek.serve.decode` (streams join and leave one running batch at token boundaries);
* static: a group of up to ``max_batch`` waiting requests runs until its longest member ends; requests that
  arrive meanwhile wait for the next group (each member's tokens still stream as they come);
* per-request: each stream's own generator, stepped one token at a time on the model thread (the path of
  models that cannot batch, and deepseek-serve's before continuous batching).

Printed per mode and concurrency: generated tokens/s, mean and p50 time to first token (ms), and the
ratio of continuous to the others. ``python benchmarks/serve_stream.py [--quick] [--requests N]``
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

import torch

from deepseek.models.decoding import DecodeBatch, pick_rows
from deepseek.models.language import GPT2
from deepseek.serve.batching import Batcher
from deepseek.serve.metrics import ServeMetrics
from deepseek.serve.model import ServedModel
from deepseek.serve.spec import InputSpec, TensorSpec
from deepseek.serve.streams import token_events

CONCURRENCY = (1, 8, 32)
MODES = ("continuous", "static", "per-request")


class StaticDecoder:
    """Static batching: waiting requests start together and the group runs until its longest member ends."""

    def __init__(self, module: torch.nn.Module, batcher: Batcher, max_batch: int) -> None:
        self.module, self.batcher, self.max_batch = module, batcher, max_batch
        self.waiting: list[tuple[torch.Tensor, int, asyncio.Queue]] = []
        self.task: asyncio.Task | None = None

    async def stream(self, ids: torch.Tensor, n: int) -> AsyncIterator[int]:
        queue: asyncio.Queue = asyncio.Queue()
        self.waiting.append((ids, n, queue))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drive())
        while (token := await queue.get()) is not None:
            yield token

    async def _drive(self) -> None:
        while self.waiting:
            group, self.waiting = self.waiting[: self.max_batch], self.waiting[self.max_batch :]
            batch, made = DecodeBatch(self.module), [0] * len(group)
            logits = await self.batcher.run_alone(functools.partial(batch.prefill, [g[0] for g in group]))
            for _ in range(max(n for _, n, _ in group)):
                tokens = pick_rows(logits, [0.0] * len(group), [None] * len(group))
                for i, (_, n, queue) in enumerate(group):
                    if made[i] < n:
                        made[i] += 1
                        queue.put_nowait(int(tokens[i]))
                        if made[i] == n:
                            queue.put_nowait(None)
                if all(m == n for m, (_, n, _) in zip(made, group, strict=True)):
                    break
                logits = await self.batcher.run_alone(functools.partial(batch.step, tokens))


def workload(count: int, lengths: tuple[int, ...], vocab: int, seed: int = 0) -> list[tuple[torch.Tensor, int]]:
    """``count`` requests: ``(prompt (L,) int64, max_new_tokens)``, prompts of 4..32 tokens."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        length = int(torch.randint(4, 33, (), generator=gen))
        out.append((torch.randint(0, vocab, (length,), generator=gen), lengths[i % len(lengths)]))
    return out


async def run_mode(mode: str, module: GPT2, requests: list, concurrency: int, max_batch: int) -> dict[str, float]:
    """Send every request with ``concurrency`` closed-loop clients -> tokens/s and time to first token."""
    m = ServedModel("lm", "1", module, InputSpec({"ids": TensorSpec([None], "int64", max_dim=module.max_positions)}),
                    "benchmark", settings={"continuous_batching": mode == "continuous"})  # fmt: skip
    batcher, metrics = Batcher(m, max_batch_size=max_batch, max_delay_ms=0), ServeMetrics()
    batcher.start()
    static = StaticDecoder(module, batcher, max_batch)
    device = next(module.parameters()).device
    todo, firsts, tokens = list(reversed(requests)), [], 0

    async def one(ids: torch.Tensor, n: int) -> int:
        start, made = time.perf_counter(), 0
        if mode == "static":
            stream: AsyncIterator[Any] = static.stream(ids, n)
        else:
            params = {"max_new_tokens": n, "temperature": 0.0}
            stream = token_events(metrics, m, batcher, {"ids": ids.to(device) if mode == "per-request" else ids}, params)
        async for item in stream:
            if isinstance(item, tuple) and item[0] == "error":
                raise RuntimeError(item[1]["error"])
            if isinstance(item, tuple) and item[0] != "token":
                continue
            if made == 0:
                firsts.append(time.perf_counter() - start)
            made += 1
        return made

    async def client() -> None:
        nonlocal tokens
        while todo:
            ids, n = todo.pop()
            made = await one(ids, n)  # not `tokens += await ...`: that reads tokens before the await
            tokens += made

    start = time.perf_counter()
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        await batcher.stop()
    wall = time.perf_counter() - start
    if tokens != sum(n for _, n in requests):
        raise RuntimeError(f"{mode}: {tokens} tokens streamed, {sum(n for _, n in requests)} asked for")
    return {"tokens_s": tokens / wall, "ttft_ms": 1e3 * statistics.fmean(firsts),
            "ttft_p50_ms": 1e3 * statistics.median(firsts)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small model and few short requests (a test)")
    parser.add_argument("--requests", type=int, default=None, help="requests per concurrency (default 64; quick 16)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dim, depth, heads = (64, 2, 2) if args.quick else (256, 4, 4)
    module = GPT2(vocab_size=30522, max_positions=256, dim=dim, depth=depth, heads=heads).eval().to(args.device)
    lengths = (4, 8, 16) if args.quick else (8, 16, 32, 64)
    requests = workload(args.requests or (16 if args.quick else 64), lengths, 30522)
    params = sum(p.numel() for p in module.parameters())
    print(f"gpt2 dim={dim} depth={depth} heads={heads} ({params / 1e6:.1f}M parameters, untrained), {args.device}, "
          f"torch threads {torch.get_num_threads()}, {len(requests)} requests per concurrency, "
          f"max_new_tokens cycling {lengths}")  # fmt: skip
    for mode in MODES:  # warm-up of every path (kernels, the allocator at each batch shape), so order matters less
        asyncio.run(run_mode(mode, module, requests[:8], 8, 32))
    print(f"{'mode':<12} {'conc':>4} {'tokens/s':>9} {'ttft_ms':>8} {'ttft_p50':>8}")
    results: dict[tuple[str, int], dict[str, float]] = {}
    for c in CONCURRENCY:
        for mode in MODES:
            r = results[mode, c] = asyncio.run(run_mode(mode, module, requests, c, max_batch=32))
            print(f"{mode:<12} {c:>4} {r['tokens_s']:>9.1f} {r['ttft_ms']:>8.1f} {r['ttft_p50_ms']:>8.1f}")
    print("continuous / other: tokens/s ratio (higher is better), mean ttft ratio (lower is better)")
    for c in CONCURRENCY:
        for other in MODES[1:]:
            a, b = results["continuous", c], results[other, c]
            print(f"ratio vs {other:<11} {c:>4} {a['tokens_s'] / b['tokens_s']:>9.2f} {a['ttft_ms'] / b['ttft_ms']:>8.2f}")


if __name__ == "__main__":
    main()
