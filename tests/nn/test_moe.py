"""MoE: sparse dispatch equals a dense reference over the selected experts; capacity overflow is
counted; the load-balancing loss evens out expert load; the Trainer adds it to the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import deepseek as ds


def dense_reference(moe: ds.nn.MoE, x: torch.Tensor) -> torch.Tensor:
    """Every expert on every token, then keep each token's top-k experts weighted by its gates."""
    tokens = x.reshape(-1, moe.d_model)
    probs = F.softmax(moe.router(tokens), dim=-1)
    gate, idx = probs.topk(moe.top_k, dim=-1)
    gate = gate / gate.sum(-1, keepdim=True)
    all_out = torch.stack([e(tokens) for e in moe.experts], dim=1)  # (T, E, d)
    weights = torch.zeros_like(probs).scatter(1, idx, gate)  # (T, E): zero for unselected experts
    return (all_out * weights.unsqueeze(-1)).sum(1).reshape(x.shape)


def test_sparse_dispatch_equals_the_dense_reference():
    torch.manual_seed(0)
    moe = ds.nn.MoE(d_model=12, num_experts=6, top_k=2, capacity_factor=6.0)  # room for every token
    x = torch.randn(3, 7, 12)
    torch.testing.assert_close(moe(x), dense_reference(moe, x), rtol=1e-5, atol=1e-6)
    assert moe.last_dispatch.dropped == 0 and int(moe.last_dispatch.tokens_per_expert.sum()) == 42


def test_only_selected_experts_run():
    torch.manual_seed(0)
    calls = []
    moe = ds.nn.MoE(d_model=8, num_experts=4, top_k=1, capacity_factor=4.0)
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda m, inp, out, e=e: calls.append((e, inp[0].shape[0])))
    moe(torch.randn(20, 8))
    assert sum(n for _, n in calls) == 20  # each token visited exactly one expert


def test_capacity_overflow_is_counted():
    torch.manual_seed(0)
    moe = ds.nn.MoE(d_model=8, num_experts=4, top_k=1, capacity_factor=1.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0  # everyone prefers expert 0
    x = torch.ones(16, 8)
    moe(x)
    d = moe.last_dispatch
    assert d.capacity == 4 and d.dropped == 12 and d.tokens_per_expert.tolist() == [4, 0, 0, 0]


def test_aux_loss_lowers_load_imbalance():
    torch.manual_seed(0)
    moe = ds.nn.MoE(d_model=16, num_experts=4, top_k=1, capacity_factor=4.0, aux_loss_weight=1.0)
    with torch.no_grad():
        moe.router.weight.add_(torch.tensor([2.0, 0, 0, 0]).unsqueeze(1))  # skewed towards expert 0
    x = torch.randn(512, 16) + 0.5

    def imbalance() -> float:
        with torch.no_grad():
            moe(x)
        load = moe.last_dispatch.tokens_per_expert.float()
        return float(load.std() / load.mean())

    before = imbalance()
    opt = torch.optim.Adam(moe.router.parameters(), lr=0.05)
    for _ in range(60):
        moe(x)
        moe.aux_loss.backward()
        opt.step()
        opt.zero_grad()
    assert imbalance() < 0.5 * before


def test_trainer_adds_the_aux_loss():
    torch.manual_seed(0)
    model = torch.nn.Sequential(ds.nn.MoE(4, 2, top_k=1, aux_loss_weight=10.0), torch.nn.Linear(4, 2))
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    seen = []

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(model[0].router.weight.grad.clone())
            return super().step(closure)

    ds.Trainer(model, Spy(model.parameters(), lr=0.0), max_steps=1, progress="off", tensorboard=False, metrics=()).fit(
        [(x, y)]
    )
    model.zero_grad()
    (F.cross_entropy(model(x), y) + model[0].aux_loss).backward()
    torch.testing.assert_close(seen[0], model[0].router.weight.grad)


def test_masked_tokens_take_no_capacity_and_no_part_in_the_aux_loss():
    torch.manual_seed(0)
    moe = ds.nn.MoE(d_model=8, num_experts=4, top_k=2, capacity_factor=1.0)
    real = torch.randn(10, 8)
    padded = torch.cat([real, torch.randn(30, 8)])  # 30 padding tokens that would crowd the experts
    mask = torch.arange(40) < 10
    alone = moe(real)
    aux, dispatch = moe.aux_loss, moe.last_dispatch
    out = moe(padded, token_mask=mask)
    torch.testing.assert_close(out[:10], alone)
    assert torch.equal(out[10:], torch.zeros(30, 8))
    torch.testing.assert_close(moe.aux_loss, aux)
    assert moe.last_dispatch.capacity == dispatch.capacity == 5
    assert torch.equal(moe.last_dispatch.tokens_per_expert, dispatch.tokens_per_expert)


def test_experts_without_tokens_still_get_a_zero_gradient():
    """DDP (find_unused_parameters=False) needs every parameter in every step's graph."""
    moe = ds.nn.MoE(d_model=8, num_experts=4, top_k=1, capacity_factor=4.0)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0] = 1.0  # every token goes to expert 0
    moe(torch.ones(6, 8)).sum().backward()
    assert moe.last_dispatch.tokens_per_expert.tolist() == [6, 0, 0, 0]
    missing = [name for name, p in moe.named_parameters() if p.grad is None]
    assert not missing, missing
    assert all(float(p.grad.abs().sum()) == 0 for p in moe.experts[1].parameters())
