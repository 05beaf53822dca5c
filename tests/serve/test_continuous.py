"""Continuous batching of token streams: streams join and leave one running batch at token boundaries."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
import torch.nn as nn

from deepseek.models.language import GPT2
from deepseek.serve.batching import Batcher
from deepseek.serve.decode import ContinuousDecoder
from deepseek.serve.metrics import ServeMetrics
from deepseek.serve.model import ServedModel
from deepseek.serve.spec import InputSpec, TensorSpec
from deepseek.serve.streams import continuous_decoder, token_events

GREEDY = {"temperature": 0.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster


def lm(cls: type[nn.Module] = GPT2) -> nn.Module:
    torch.manual_seed(0)
    return cls(vocab_size=211, max_positions=64, dim=64, depth=2, heads=2).eval()


def served(module: nn.Module, **settings) -> ServedModel:
    spec = InputSpec({"ids": TensorSpec([None], "int64", max_dim=64)})
    return ServedModel("lm", "1", module, spec, "test", settings=settings)


def prompt(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 211, (n,), generator=torch.Generator().manual_seed(seed))


def alone(module: nn.Module, ids: torch.Tensor, n: int) -> list[int]:
    """What ``generate()`` gives the prompt on its own (greedy)."""
    return module.generate(ids[None], n)[0, len(ids) :].tolist()


def serve(m: ServedModel, test, max_batch: int = 8):
    """Run ``await test(batcher)`` with the model's batcher started, in a fresh event loop."""

    async def main():
        batcher = Batcher(m, max_batch_size=max_batch, max_delay_ms=0)
        batcher.start()
        try:
            return await test(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


async def collect(decoder: ContinuousDecoder, tag: str, ids: torch.Tensor, n: int, log: list,
                  reached: asyncio.Event | None = None, at: int = 1) -> list[int]:  # fmt: skip
    """A greedy stream's tokens; ``log`` gets ``(tag, index, rows in the batch)`` per event; ``reached`` is set
    once ``at`` tokens came."""
    tokens = []
    async for event in decoder.stream({"ids": ids}, {"max_new_tokens": n, **GREEDY}):
        assert event["index"] == len(tokens)
        log.append((tag, event["index"], len(decoder.rows)))
        tokens.append(event["token_id"])
        if reached is not None and len(tokens) == at:
            reached.set()
    log.append((tag, "end", len(decoder.rows)))
    return tokens


def test_a_short_stream_ends_before_a_long_one_that_started_first_and_both_equal_generate():
    m = served(lm())
    long_ids, short_ids = prompt(3, 1), prompt(11, 2)

    async def test(batcher):
        decoder, log, started = ContinuousDecoder(m, batcher, 8), [], asyncio.Event()
        long = asyncio.create_task(collect(decoder, "long", long_ids, 24, log, started))
        await started.wait()  # the long one is decoding; the short one joins it
        short = await collect(decoder, "short", short_ids, 3, log)
        return await long, short, log, decoder

    long, short, log, decoder = serve(m, test)
    events = [(tag, i) for tag, i, _ in log]
    assert events.index(("long", 0)) < events.index(("short", 0))
    assert events.index(("short", "end")) < events.index(("long", "end"))
    assert sum(tag == "long" for tag, _ in events[: events.index(("short", "end"))]) < 10  # not held back
    assert any(rows == 2 for _, _, rows in log)  # the two ran in one batch
    assert decoder.steps == 23  # after its prefill the long one needed 23 steps; the short one's rode along
    assert long == alone(m.module, long_ids, 24) and short == alone(m.module, short_ids, 3)
    assert decoder.task.done() and not decoder.rows and len(decoder.batch) == 0


def test_streams_that_go_away_leave_the_batch_and_the_others_stay_correct():
    m = served(lm())
    ids = [prompt(n, seed) for seed, n in enumerate((4, 9, 2, 6))]

    async def test(batcher):
        decoder, log = ContinuousDecoder(m, batcher, max_batch=3), []  # the fourth waits for a free row

        async def close_after(n: int, i: int) -> list[int]:
            stream, tokens = decoder.stream({"ids": ids[i]}, {"max_new_tokens": 20, **GREEDY}), []
            async for event in stream:
                tokens.append(event["token_id"])
                if len(tokens) == n:
                    break
            await stream.aclose()
            return tokens

        third = asyncio.Event()
        cancelled = asyncio.create_task(collect(decoder, "cancelled", ids[1], 20, log, third, at=3))
        tasks = [asyncio.create_task(collect(decoder, "kept", ids[0], 12, log)), cancelled,
                 asyncio.create_task(close_after(2, 2)), asyncio.create_task(collect(decoder, "late", ids[3], 5, log))]  # fmt: skip
        await third.wait()
        cancelled.cancel()  # as when the client's connection drops
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return results, log, decoder

    (kept, cancelled, closed, late), log, decoder = serve(m, test)
    assert isinstance(cancelled, asyncio.CancelledError)
    assert kept == alone(m.module, ids[0], 12) and late == alone(m.module, ids[3], 5)
    assert closed == alone(m.module, ids[2], 2)
    assert max(rows for *_, rows in log) <= 3
    assert decoder.task.done() and not decoder.rows and not decoder.waiting and len(decoder.batch) == 0


def test_token_events_batch_streams_and_fall_back_where_a_model_cannot():
    module = lm()
    batched, one_by_one = served(module), served(module, continuous_batching=False)

    class Legacy(nn.Module):  # a decoder with stream() but no padded forward: steps one request at a time
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def stream(self, ids, *args, **kwargs):
            return self.inner.stream(ids, *args, **kwargs)

    legacy = served(Legacy())
    ids = prompt(5, 7)

    async def test(batcher):
        metrics, out = ServeMetrics(), []
        for m in (batched, one_by_one, legacy):
            out.append([e async for e in token_events(metrics, m, batcher, {"ids": ids}, {"max_new_tokens": 6, **GREEDY})])
        observed = metrics.registry.get_sample_value("ds_serve_stream_first_event_seconds_count", {"model": "lm"})
        return out, observed, [continuous_decoder(m, batcher) for m in (batched, one_by_one, legacy)]

    out, observed, decoders = serve(batched, test)
    assert out[0] == out[1] == out[2]
    assert [kind for kind, _ in out[0]] == ["token"] * 6 + ["done"]
    assert out[0][-1][1]["token_ids"] == alone(module, ids, 6)
    assert observed == 3
    assert isinstance(decoders[0], ContinuousDecoder) and decoders[1] is None and decoders[2] is None


class Flaky(GPT2):
    """Raises on a prompt holding token 13 (prefill only: a generated 13 decodes as usual)."""

    def forward(self, ids, past=None, use_cache=False, positions=None, attention_mask=None, last_only=False):
        if ids.shape[1] > 1 and (ids == 13).any():
            raise ValueError("unlucky 13")
        return super().forward(ids, past, use_cache, positions, attention_mask, last_only)


def test_a_prompt_that_breaks_the_model_ends_only_its_own_stream():
    m = served(lm(Flaky))
    good, bad = prompt(4, 3), torch.tensor([5, 13, 7])
    assert 13 not in good.tolist()

    async def test(batcher):
        decoder, log, started = ContinuousDecoder(m, batcher, 8), [], asyncio.Event()
        task = asyncio.create_task(collect(decoder, "good", good, 10, log, started))
        await started.wait()
        events = [e async for e in token_events(ServeMetrics(), m, batcher, {"ids": bad}, {"max_new_tokens": 4})]
        return await task, events

    tokens, events = serve(m, test)
    assert events == [("error", {"error": "model 'lm' raised ValueError: unlucky 13"})]
    assert tokens == alone(m.module, good, 10)


def test_the_server_streams_concurrent_prompts_of_different_lengths_as_predict_generates(server):
    texts = ["hi", "the weather today is", "a much longer prompt that has many more tokens than the others do", "ok"]
    wanted = [20, 3, 12, 7]
    with server.client() as c, ThreadPoolExecutor(len(texts)) as pool:
        streams = list(pool.map(lambda tn: list(c.stream("gpt2", tn[0], {"max_new_tokens": tn[1]})), zip(texts, wanted)))
        for text, n, events in zip(texts, wanted, streams, strict=True):
            assert [e["event"] for e in events] == ["token"] * n + ["done"]
            (alone,) = c.predict("gpt2", [text], {"max_new_tokens": n})
            assert events[-1]["token_ids"] == alone["token_ids"] == [e["token_id"] for e in events[:-1]]
            assert events[-1]["text"] == alone["text"]


def test_each_row_samples_with_its_own_temperature_and_top_k():
    m = served(lm())
    ids = [prompt(5, 11), prompt(8, 12), prompt(3, 13)]
    params = [{"temperature": 0.0}, {"temperature": 1.5, "top_k": 1}, {"temperature": 5.0}]  # top_k=1: greedy

    async def test(batcher):
        decoder = ContinuousDecoder(m, batcher, 8)

        async def one(i: int) -> list[int]:
            return [e["token_id"] async for e in decoder.stream({"ids": ids[i]}, {"max_new_tokens": 10, **params[i]})]

        return await asyncio.gather(*(one(i) for i in range(3))), decoder.steps

    (greedy, top1, hot), steps = serve(m, test)
    assert greedy == alone(m.module, ids[0], 10) and top1 == alone(m.module, ids[1], 10)
    assert hot != alone(m.module, ids[2], 10)  # sampled at temperature 5 from 211 tokens: not the greedy path
    assert steps == 9  # the three shared every step
