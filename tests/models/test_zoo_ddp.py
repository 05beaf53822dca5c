"""Every registered model trains 3 optimizer steps under ``DistributedDataParallel`` with default settings
(``find_unused_parameters=False``) on 2 gloo ranks on 127.0.0.1, and ends with the same weights on both.

A model that leaves a parameter without a gradient in a step (an MoE expert that got no tokens, a pooler
the head ignores, a branch skipped at random) fails DDP's next forward with "Expected to have finished
reduction in the prior iteration". One spawn of 2 processes loops over all models at tiny sizes; each
model gets its own process group, so one model's failure cannot stall the ones after it.
"""

from __future__ import annotations

import gc
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import deepseek as ds
from tests.gloo_ranks import run_ranks
from tests.models.test_zoo import example_input

WORLD = 2
STEPS = 3
MODEL_TIMEOUT = timedelta(seconds=30)  # a collective one rank never joins (the other failed) ends here
TOTAL_TIMEOUT_S = 400.0

# Tiny sizes: the template's architecture with few layers and narrow widths. Models without size
# arguments (ResNets, MobileNets, EfficientNet, ViT-Base, pretrained MiniLM) only lose their 1000-way head.
# Integer example inputs are drawn from [0, 30), so every vocabulary is >= 30.
TINY: dict[str, dict[str, Any]] = {
    "bert_base": {"dim": 32, "depth": 2, "heads": 2, "vocab_size": 64},
    "conformer": {
        "encoder": {"num_layers": 1, "d_model": 32, "attention_heads": 4},
        "decoder": {"vocab_size": 30, "embedding_dim": 32},
    },
    "cross_modal_hashing": {"bits": 16, "vocab_size": 64, "dim": 32},
    "efficientnet_b0": {"num_classes": 10},
    "gpt2": {"vocab_size": 64, "max_positions": 16, "dim": 32, "depth": 2, "heads": 2},
    "graph_transformer": {"dim": 16, "depth": 1, "heads": 2},
    "lstm_classifier": {"vocab_size": 64, "input_dim": 16, "hidden": 16},
    "mlp": {"in_features": 64, "hidden": [16]},
    "mobilenet_v3_large": {"num_classes": 10},
    "mobilenet_v3_small": {"num_classes": 10},
    "moe_transformer": {"vocab_size": 64, "dim": 32, "depth": 1, "heads": 2},
    "pointnet": {"num_classes": 10},
    "resnet18": {"num_classes": 10},
    "resnet34": {"num_classes": 10},
    "resnet50": {"num_classes": 10},
    "simple_cnn": {"width": 8},
    "tcn": {"width": 8, "levels": 2},
    "transformer": {
        "src_vocab": 64, "tgt_vocab": 64, "d_model": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "ff": 64
    },
    "unet": {"base": 8, "depth": 2},
    "vae": {"hidden": 32, "latent": 4},
    "vit_base_patch16": {"image_size": 32, "num_classes": 10},
    "vit_tiny": {"image_size": 32, "num_classes": 10},
}  # fmt: skip
# Settings other than the template's that change which parameters a step uses: (case id, model, overrides).
# The example's 2 x 12 tokens cannot reach 32 top-1 experts: at least 8 experts are idle in every step.
VARIANTS = [
    ("bert_base[mlm]", "bert_base", {"head": "mlm"}),
    ("moe_transformer[idle experts]", "moe_transformer", {"num_experts": 32, "top_k": 1}),
]


def cases() -> list[tuple[str, str, dict[str, Any]]]:
    """``(case id, registered model name, build overrides)`` for every registered model and variant."""
    plain = [(name, name, TINY.get(name, {})) for name in ds.models.list_models()]
    return plain + [(case, name, {**TINY.get(name, {}), **extra}) for case, name, extra in VARIANTS]


def _main_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _train_under_ddp(name: str, overrides: dict[str, Any], rank: int, group: dist.ProcessGroup) -> None:
    """Build ``name``, wrap it in DDP on ``group`` and take ``STEPS`` SGD steps; raise if the ranks' weights differ.

    Each rank seeds its own initialization and dropout differently: DDP must broadcast rank 0's weights
    and average the (different) gradients for both ranks to end with equal weights.
    """
    example = ds.models.template(name)["example"]
    torch.manual_seed(1000 + rank)
    model = ds.models.build(name, **{**example.get("build", {}), **overrides}).train()
    ddp = DistributedDataParallel(model, process_group=group)  # defaults: find_unused_parameters=False
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batch = example_input(example)
    for _ in range(STEPS):
        loss = _main_output(ddp(batch)).float().pow(2).mean()
        aux = ds.nn.aux_loss(model)  # what ds.Trainer adds (MoE load balancing)
        if aux is not None:
            loss = loss + aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    trainable = [p for p in model.parameters() if p.requires_grad]
    sums = torch.stack([p.detach().double().sum() for p in trainable])  # (params,)
    gathered = [torch.empty_like(sums) for _ in range(WORLD)]
    dist.all_gather(gathered, sums, group=group)
    if not torch.equal(gathered[0], gathered[1]):
        differ = (gathered[0] != gathered[1]).sum().item()
        raise AssertionError(f"weights differ between ranks after {STEPS} steps in {differ} parameters")


def _worker(rank: int) -> dict[str, str | None]:
    """One rank: every case in turn, each on a fresh process group; returns ``{case: error or None}``."""
    outcome: dict[str, str | None] = {}
    for case, name, overrides in cases():
        group = dist.new_group(list(range(WORLD)), timeout=MODEL_TIMEOUT)
        try:
            _train_under_ddp(name, overrides, rank, group)
            outcome[case] = None
        except Exception as exc:  # reported per model; the next one gets a fresh group
            lines = str(exc).strip().splitlines() or [""]
            unused = [line.strip() for line in lines if "did not receive grad" in line]  # DDP names them
            outcome[case] = " ".join([f"{type(exc).__name__}: {lines[0][:160]}", *unused])
        finally:
            dist.destroy_process_group(group)
            gc.collect()
    return outcome


@pytest.mark.slow
@pytest.mark.distributed
def test_every_model_trains_under_ddp_on_two_gloo_ranks():
    by_rank = run_ranks(_worker, WORLD, timeout_s=TOTAL_TIMEOUT_S)
    missing = "not reached (the rank stopped before it)"
    # a case passes when both ranks finished it
    report = {case: by_rank[0].get(case, missing) or by_rank[1].get(case, missing) for case, _, _ in cases()}
    failed = {case: error for case, error in report.items() if error}
    lines = [f"{case}: {'FAIL ' + error if error else 'ok'}" for case, error in report.items()]
    assert not failed, f"{len(failed)} of {len(report)} models fail under DDP:\n" + "\n".join(lines)
