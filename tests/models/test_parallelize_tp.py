"""gpt2 under its tensor-parallel plan on 2 gloo ranks equals the unsharded model in one process: the forward
logits, the loss at each of 10 AdamW steps on the same batch, and the final gathered weights, to 1e-5 in fp32,
plain, with sequence parallelism, and with the vocab-sharded loss (``loss_parallel``)."""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import deepseek as ds
from tests.gloo_ranks import run_ranks

pytestmark = pytest.mark.distributed

TINY = {"max_positions": 16, "dim": 32, "depth": 2, "heads": 4}
STEPS = 10


def batch(vocab: int) -> torch.Tensor:
    """The same ``(4, 8)`` token ids on every rank and in the reference, as tensor parallelism requires."""
    return torch.randint(0, vocab, (4, 8), generator=torch.Generator().manual_seed(3))


def build(vocab: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return ds.models.build("gpt2", vocab_size=vocab, **TINY)


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of ``(N, L, vocab)`` logits (a DTensor under loss parallelism)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def train(model: torch.nn.Module, vocab: int, loss_parallel: bool = False) -> tuple[list[float], list[float]]:
    """The forward logits (flattened) and the losses of ``STEPS`` AdamW steps on :func:`batch`."""
    from torch.distributed.tensor.parallel import loss_parallel as vocab_sharded_loss

    ids = batch(vocab)
    with torch.no_grad():
        logits = model(ids)
    first = (logits.full_tensor() if loss_parallel else logits).flatten().tolist()
    # eps 1e-6, not 1e-8: the key biases get no gradient (softmax ignores a shift shared by all keys), only
    # rounding noise of ~1e-11 that Adam would divide by its own size into 1e-5 steps differing between runs.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-6)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        if loss_parallel:
            with vocab_sharded_loss():
                loss = lm_loss(model(ids), ids)
                loss.backward()
            loss = loss.detach().full_tensor()
        else:
            loss = lm_loss(model(ids), ids)
            loss.backward()
        optimizer.step()
        loss = loss.detach()
        losses.append(loss.item())
    return first, losses


def full_weights(model: torch.nn.Module) -> dict[str, list[float]]:
    from torch.distributed.tensor import DTensor

    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().flatten().tolist()
        for name, p in model.named_parameters()
    }


def tp_worker(rank: int, vocab: int, sequence_parallel: bool, loss_parallel: bool) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    from deepseek.models.parallelize import plan_for

    model = build(vocab)
    plan_for("gpt2")(
        model, init_device_mesh("cpu", (2,)), sequence_parallel=sequence_parallel, loss_parallel=loss_parallel
    )
    local_q = tuple(model.blocks[0].attn.q.weight.to_local().shape)
    tied = model.head.weight is model.tok.weight
    logits, losses = train(model, vocab, loss_parallel)
    return {"logits": logits, "losses": losses, "weights": full_weights(model), "local_q": local_q, "tied": tied}


@functools.cache
def reference(vocab: int) -> dict[str, Any]:
    """The unsharded model trained in this process."""
    model = build(vocab)
    logits, losses = train(model, vocab)
    return {"logits": logits, "losses": losses, "weights": full_weights(model)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "vocab, sequence_parallel, loss_parallel",
    # 63: a vocabulary that does not split evenly over 2 ranks (like gpt2's 50,257)
    [(64, False, False), (64, True, False), (64, False, True), (64, True, True), (63, True, True)],
)
def test_tensor_parallel_gpt2_matches_one_process(vocab, sequence_parallel, loss_parallel):
    expected = reference(vocab)
    results = run_ranks(tp_worker, 2, vocab, sequence_parallel, loss_parallel, timeout_s=120)
    for rank, got in results.items():
        assert got["local_q"] == (16, 32) and got["tied"], rank  # 2 of 4 heads per rank; head tied to tok
        torch.testing.assert_close(torch.tensor(got["logits"]), torch.tensor(expected["logits"]), rtol=0, atol=1e-5)
        torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(expected["losses"]), rtol=0, atol=1e-5)
        assert got["weights"].keys() == expected["weights"].keys()
        for name, values in expected["weights"].items():
            torch.testing.assert_close(torch.tensor(got["weights"][name]), torch.tensor(values), rtol=0, atol=1e-5,
                                       msg=lambda m, name=name, rank=rank: f"rank {rank} {name}: {m}")  # fmt: skip
    assert expected["losses"][-1] < expected["losses"][0] - 0.5  # the steps do train
