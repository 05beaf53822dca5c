"""A continuous decode batch (rows joining and leaving, padding) computes what each row computes alone."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from deepseek.models.decoding import DecodeBatch, pick_rows, supports_padded_decode
from deepseek.models.language import GPT2

ATOL = 1e-4  # float32: a row's logits in the batch against its own forward



@pytest.fixture(scope="module")
def model() -> GPT2:
    torch.manual_seed(0)
    return GPT2(vocab_size=101, max_positions=48, dim=64, depth=2, heads=2).eval()

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is faster


def alone(model: GPT2, context: list[int]) -> torch.Tensor:
    """The next-token logits ``(vocab,)`` of one sequence, run alone without a cache."""
    with torch.no_grad():
        return model(torch.tensor([context]))[0, -1]


def test_rows_joining_and_leaving_match_their_own_forward_and_generate(model):
    gen = torch.Generator().manual_seed(1)
    # (prompt length, step it joins at, tokens wanted): joins mid-decode, different lengths, one longer than all
    plan = [(3, 0, 12), (9, 0, 4), (1, 2, 7), (14, 3, 5), (5, 6, 3)]
    prompts = [torch.randint(0, 101, (n,), generator=gen) for n, _, _ in plan]
    batch, rows, contexts, made = DecodeBatch(model), [], {}, {i: [] for i in range(len(plan))}
    widths, worst = [], 0.0
    for step in range(40):
        join = [i for i, (_, at, _) in enumerate(plan) if at == step]
        logits = []
        if rows:
            logits += list(batch.step(torch.tensor([made[i][-1] for i in rows])))
        if join:
            logits += list(batch.prefill([prompts[i] for i in join]))
            for i in join:
                contexts[i] = prompts[i].tolist()
            rows += join
        for i, lg in zip(rows, logits, strict=True):
            ref = alone(model, contexts[i])
            worst = max(worst, float((lg - ref).abs().max()))
            top2 = ref.topk(2).values
            token = int(pick_rows(lg[None], [0.0], [None])[0])
            if float(top2[0] - top2[1]) > ATOL:  # a near tie may go either way
                assert token == int(ref.argmax())
            made[i].append(token)
            contexts[i].append(token)
        keep = [k for k, i in enumerate(rows) if len(made[i]) < plan[i][2]]
        batch.keep(keep)
        rows = [rows[k] for k in keep]
        widths.append((batch.width, int(batch.lengths.max()) if rows else 0))
        if not rows and step > max(at for _, at, _ in plan):
            break
    assert worst < ATOL
    assert len(batch) == 0 and batch.cache is None
    assert all(w == longest for w, longest in widths)  # no column is kept that no row uses
    assert max(widths)[0] >= 14  # the long late prompt widened the batch
    for i, (n, _, wanted) in enumerate(plan):
        assert made[i] == model.generate(prompts[i][None], wanted)[0, n:].tolist()


def test_padding_with_an_all_true_mask_changes_nothing(model):
    ids = torch.randint(0, 101, (2, 6))
    with torch.no_grad():
        plain = model(ids)
        masked = model(ids, attention_mask=torch.ones(2, 6, dtype=torch.bool))
        logits, cache = model(ids, use_cache=True, positions=torch.arange(6).expand(2, 6))
    assert torch.allclose(plain, masked, atol=1e-6) and torch.allclose(plain, logits, atol=1e-6)
    assert cache[0][0].shape == (2, 2, 6, 32)


def test_padding_never_puts_nan_in_the_cache(model):
    # the short row's padding queries see no real key: without the self-attention fallback they would be NaN
    batch = DecodeBatch(model)
    batch.prefill([torch.tensor([5]), torch.arange(1, 11)])
    assert all(torch.isfinite(k).all() and torch.isfinite(v).all() for k, v in batch.cache)
    assert batch.lengths.tolist() == [1, 10] and batch.valid()[0].tolist() == [False] * 9 + [True]


def test_positions_past_the_model_are_refused_and_bad_calls_say_what_is_wrong(model):
    with pytest.raises(ValueError, match="max_positions=48"):
        model(torch.zeros(1, 1, dtype=torch.long), positions=torch.tensor([[48]]))
    batch = DecodeBatch(model)
    with pytest.raises(ValueError, match="at least one token"):
        batch.prefill([torch.tensor([], dtype=torch.long)])
    batch.prefill([torch.tensor([1, 2])])
    with pytest.raises(ValueError, match="one token per row"):
        batch.step(torch.tensor([1, 2]))
    assert len(batch) == 1  # a refused step leaves the batch as it was


def test_only_decoders_with_padded_forward_qualify(model):
    assert supports_padded_decode(model)
    assert not supports_padded_decode(nn.Linear(2, 2))

    class Legacy(nn.Module):  # today's GPT-2 signature, without positions and attention_mask
        max_positions = 8

        def forward(self, ids, past=None, use_cache=False):
            return ids

    assert not supports_padded_decode(Legacy())
    with pytest.raises(ValueError, match="Legacy"):
        DecodeBatch(Legacy())


def test_rows_sample_with_their_own_temperature_and_top_k():
    logits = torch.tensor([[0.0, 3.0, 1.0], [0.0, 3.0, 1.0], [5.0, 0.0, 4.9]])
    gen = torch.Generator().manual_seed(0)
    picks = {tuple(pick_rows(logits, [0.0, 1.0, 2.0], [None, 1, 2], gen).tolist()) for _ in range(40)}
    assert {p[:2] for p in picks} == {(1, 1)}  # greedy, and top_k=1 sampling is greedy too
    assert {p[2] for p in picks} == {0, 2}  # sampled among the two kept tokens, never the third


def test_last_only_gives_the_last_positions_logits(model):
    ids = torch.randint(0, 101, (2, 7))
    with torch.no_grad():
        full, _ = model(ids, use_cache=True)
        last, cache = model(ids, use_cache=True, last_only=True)
    assert last.shape == (2, 1, 101) and torch.allclose(last[:, 0], full[:, -1], atol=1e-6)
    assert cache[0][0].shape[2] == 7  # the cache still holds every position
