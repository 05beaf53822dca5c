"""bert_base (MLM and classification heads), vit and the encoder-decoder transformer under their tensor-parallel
plans on 2 gloo ranks equal the unsharded models in one process: the forward outputs, the loss at each of 10
AdamW steps on the same batch, and the final gathered weights, to 1e-5 in fp32; plain, and with sequence
parallelism (bert, vit; the transformer has none) and the sharded loss (``loss_parallel``)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import deepseek as ds
from tests.gloo_ranks import run_ranks

pytestmark = pytest.mark.distributed

STEPS = 10
BERT = {"vocab_size": 40, "dim": 16, "depth": 2, "heads": 4, "dropout": 0.0}


def bert_inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    mask = torch.ones(4, 8, dtype=torch.long)
    mask[1, 6:], mask[3, 3:] = 0, 0  # padding the keys must ignore
    return {"input_ids": torch.randint(1, 40, (4, 8), generator=g), "attention_mask": mask}


def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``(N, L, vocab)`` logits (a vocab-sharded DTensor under loss parallelism)."""
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten())


# family -> (build, inputs, labels, loss, sequence parallel planned); every size divides by tp=2, and the ViT's
# 3 x 3 patches + class token make 10 tokens, so its sequence splits too. bert has 2 blocks (under sequence
# parallelism the first slices the sequence, the last gathers it), vit 1 (which does both).
FAMILIES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], Any], Callable[[], torch.Tensor], Callable, bool]] = {
    "bert_mlm": (lambda: ds.models.build("bert_base", head="mlm", **BERT), bert_inputs,
                 lambda: (bert_inputs()["input_ids"] * 7) % 40, token_loss, True),
    "bert_classification": (lambda: ds.models.build("bert_base", num_classes=4, **BERT), bert_inputs,
                            lambda: torch.tensor([0, 3, 1, 2]), F.cross_entropy, True),
    "vit": (lambda: ds.models.vision.ViT(image_size=12, patch=4, dim=16, depth=1, heads=4, num_classes=4),
            lambda: torch.randn(4, 3, 12, 12, generator=torch.Generator().manual_seed(3)),
            lambda: torch.tensor([0, 3, 1, 2]), F.cross_entropy, True),
    "transformer": (
        lambda: ds.models.build("transformer", src_vocab=30, tgt_vocab=21, d_model=16, heads=4, encoder_layers=1,
                                decoder_layers=1, ff=32, dropout=0.0),
        lambda: (torch.tensor([[3, 4, 5, 6, 7, 8], [9, 10, 11, 0, 0, 0], [12, 13, 14, 15, 16, 0], [1, 2, 0, 0, 0, 0]]),
                 torch.tensor([[1, 2, 3, 4, 5], [1, 6, 7, 0, 0], [1, 8, 9, 10, 0], [1, 11, 0, 0, 0]])),
        lambda: torch.tensor([[2, 3, 4, 5, 6], [6, 7, 8, 0, 0], [8, 9, 10, 11, 0], [11, 12, 0, 0, 0]]),
        token_loss, False,
    ),
}  # fmt: skip


def build(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return FAMILIES[family][0]()


def train(model: torch.nn.Module, family: str, loss_parallel: bool = False) -> tuple[list[float], list[float]]:
    """The forward output (flattened) and the losses of ``STEPS`` AdamW steps on the family's batch."""
    from torch.distributed.tensor.parallel import loss_parallel as sharded_loss

    _, inputs, labels, loss_fn, _ = FAMILIES[family]
    x, y = inputs(), labels()
    with torch.no_grad():
        out = model(x)
    first = (out.full_tensor() if loss_parallel else out).flatten().tolist()
    # The key biases are left out (they stay at their initial values on both sides): their true gradient is
    # zero (softmax ignores a shift shared by all keys), so what they get is rounding noise, which Adam divides
    # by its own size into steps of up to lr that differ between the sharded and the unsharded run.
    trained = [p for name, p in model.named_parameters() if not name.endswith("k_proj.bias")]
    optimizer = torch.optim.AdamW(trained, lr=1e-2, weight_decay=0.1, eps=1e-6)
    losses = []
    for _ in range(STEPS):
        optimizer.zero_grad()
        if loss_parallel:
            with sharded_loss():
                loss = loss_fn(model(x), y)
                loss.backward()
            loss = loss.detach().full_tensor()
        else:
            loss = loss_fn(model(x), y)
            loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
    return first, losses


def full_weights(model: torch.nn.Module) -> dict[str, list[float]]:
    from torch.distributed.tensor import DTensor

    return {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().flatten().tolist()
        for name, p in model.named_parameters()
    }


# mode -> (sequence_parallel, loss_parallel); one spawn of the 2 ranks runs both, to keep the file fast.
MODES = {"plain": (False, False), "sequence and loss parallel": (True, True)}


def tp_worker(rank: int) -> dict[str, dict[str, Any]]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from deepseek.models.parallelize import plan_for_model

    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    results: dict[str, dict[str, Any]] = {}
    for mode, (sequence_parallel, loss_parallel) in MODES.items():
        for family, (*_, planned_sp) in FAMILIES.items():
            model = build(family)
            plan_for_model(model)(model, mesh, sequence_parallel=sequence_parallel and planned_sp,
                                  loss_parallel=loss_parallel)  # fmt: skip
            q = next(m for n, m in model.named_modules() if n.endswith("q_proj"))
            local_q = tuple(q.weight.to_local().shape) if isinstance(q.weight, DTensor) else None
            out, losses = train(model, family, loss_parallel)
            results[f"{family}, {mode}"] = {
                "family": family, "out": out, "losses": losses, "weights": full_weights(model), "local_q": local_q,
            }  # fmt: skip
    return results


@functools.cache
def reference(family: str) -> dict[str, Any]:
    """The unsharded model trained in this process."""
    model = build(family)
    out, losses = train(model, family)
    return {"out": out, "losses": losses, "weights": full_weights(model)}


@pytest.mark.slow
def test_tensor_parallel_families_match_one_process():
    results = run_ranks(tp_worker, 2, timeout_s=240)
    for rank, runs in results.items():
        assert len(runs) == len(MODES) * len(FAMILIES)
        for case, got in runs.items():
            expected, where = reference(got["family"]), f"{case}, rank {rank}"
            assert expected["losses"][-1] < expected["losses"][0] - 0.3, where  # the steps do train
            assert got["local_q"] == (8, 16), where  # 2 of 4 heads per rank
            torch.testing.assert_close(torch.tensor(got["out"]), torch.tensor(expected["out"]), rtol=0, atol=1e-5,
                                       msg=lambda m, where=where: f"{where} outputs: {m}")  # fmt: skip
            torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(expected["losses"]), rtol=0,
                                       atol=1e-5, msg=lambda m, where=where: f"{where} losses: {m}")  # fmt: skip
            assert got["weights"].keys() == expected["weights"].keys(), where
            for name, values in expected["weights"].items():
                torch.testing.assert_close(torch.tensor(got["weights"][name]), torch.tensor(values), rtol=0,
                                           atol=1e-5, msg=lambda m, name=name, where=where: f"{where} {name}: {m}")  # fmt: skip
