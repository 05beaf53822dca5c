"""Expert parallelism of ds.nn.MoE on 2 gloo ranks equals one process on the concatenated batch.

Each rank routes its own tokens, sends them to the rank that owns their expert (all-to-all) and gets the
results back; the aux loss and the capacity are computed over the global batch. The forward outputs, the
aux loss, the dropped-assignment count and the gradients (of the inputs, the router and every expert)
agree to 1e-5 with one process on the ranks' batches concatenated in rank order, with and without drops.
"""

from __future__ import annotations

import pytest
import torch

from deepseek.nn.moe import MoE
from tests.gloo_ranks import run_ranks

WORLD, TOKENS, DIM, EXPERTS = 2, 12, 8, 4


def _moe(capacity_factor: float) -> MoE:
    torch.manual_seed(0)
    return MoE(DIM, EXPERTS, top_k=2, capacity_factor=capacity_factor, d_hidden=16)


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Global tokens ``(WORLD * TOKENS, DIM)``, output weights of the same shape, a token mask ``(WORLD * TOKENS,)``."""
    gen = torch.Generator().manual_seed(1)
    x, w = torch.randn(WORLD * TOKENS, DIM, generator=gen), torch.randn(WORLD * TOKENS, DIM, generator=gen)
    mask = torch.rand(WORLD * TOKENS, generator=gen) > 0.2
    return x, w, mask


def _run(moe: MoE, x: torch.Tensor, w: torch.Tensor, mask: torch.Tensor | None, aux_share: float) -> dict:
    """Forward and backward of ``sum(out * w) + aux_share * aux_loss``; outputs and gradients as plain lists."""
    x = x.clone().requires_grad_(True)
    out = moe(x, token_mask=mask)
    ((out * w).sum() + aux_share * moe.aux_loss).backward()
    experts = {f"experts.{name}.{p_name}": p.grad.tolist()
               for name, expert in moe.experts.named_children() for p_name, p in expert.named_parameters()}  # fmt: skip
    return {"out": out.tolist(), "aux": moe.aux_loss.item(), "dropped": moe.last_dispatch.dropped,
            "x_grad": x.grad.tolist(), "router_grad": moe.router.weight.grad, "experts": experts}  # fmt: skip


def _rank_worker(rank: int, capacity_factor: float, masked: bool) -> dict:
    import torch.distributed as dist

    from deepseek.nn.expert_parallel import parallelize_experts

    moe = _moe(capacity_factor)
    kept = parallelize_experts(moe, expert_group=dist.group.WORLD)
    x, w, mask = _data()
    rows = slice(rank * TOKENS, (rank + 1) * TOKENS)
    # Each rank's gradient of the router is its tokens' share; summed over ranks, it is one process's.
    result = _run(moe, x[rows], w[rows], mask[rows] if masked else None, aux_share=1.0 / WORLD)
    router_grad = result["router_grad"]
    dist.all_reduce(router_grad)
    dropped = torch.tensor([result["dropped"]])
    dist.all_reduce(dropped)
    return {**result, "router_grad": router_grad.tolist(), "dropped": int(dropped), "kept": kept}


@pytest.mark.distributed
@pytest.mark.parametrize("capacity_factor, masked", [(8.0, False), (0.75, True)], ids=["uncapped", "capped-masked"])
def test_expert_parallel_moe_equals_one_process(capacity_factor: float, masked: bool) -> None:
    by_rank = run_ranks(_rank_worker, WORLD, capacity_factor, masked, timeout_s=120)
    moe = _moe(capacity_factor)
    x, w, mask = _data()
    ref = _run(moe, x, w, mask if masked else None, aux_share=1.0)
    assert (ref["dropped"] > 0) == (capacity_factor < 1), "the capped cases must drop assignments"

    def close(got: list, want: list | torch.Tensor) -> None:
        torch.testing.assert_close(torch.tensor(got), torch.as_tensor(want), rtol=0, atol=1e-5)

    close([row for r in range(WORLD) for row in by_rank[r]["out"]], ref["out"])
    close([row for r in range(WORLD) for row in by_rank[r]["x_grad"]], ref["x_grad"])
    for r in range(WORLD):
        assert by_rank[r]["aux"] == pytest.approx(ref["aux"], abs=1e-6)
        assert by_rank[r]["dropped"] == ref["dropped"]
        close(by_rank[r]["router_grad"], ref["router_grad"])
        per_rank = EXPERTS // WORLD  # rank r keeps experts r * per_rank ... under their original names
        assert sorted({name.split(".")[1] for name in by_rank[r]["experts"]}) == [
            str(e) for e in range(r * per_rank, (r + 1) * per_rank)
        ]
        assert by_rank[r]["kept"] == sorted(f"{n}" for n in by_rank[r]["experts"])
        for name, grad in by_rank[r]["experts"].items():
            close(grad, ref["experts"][name])


def test_parallelize_experts_refuses_experts_that_do_not_divide() -> None:
    from deepseek.nn.expert_parallel import check_expert_degree

    with pytest.raises(ValueError, match="num_experts 4 .* ep 3"):
        check_expert_degree(_moe(1.0), 3)
