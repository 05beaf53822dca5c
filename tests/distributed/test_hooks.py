"""CommHook on DDP (gloo): plain and topology hooks match DDP's own gradients, compressed hooks with error feedback
train, their state resumes exactly, and the inter-node-only variants work on 2 nodes x 2."""

from __future__ import annotations

import io

import pytest

from deepseek.distributed.hooks import CommHook
from tests.gloo_ranks import run_ranks


def _model(seed: int = 0):
    import torch

    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8))


def _batch(rank: int, step: int):
    import torch

    gen = torch.Generator().manual_seed(100 * step + rank)
    x = torch.randn(32, 16, generator=gen)
    target = torch.sin(x[:, :8]) + 0.5 * x[:, 8:]  # a smooth function both layers must fit
    return x, target


def _ddp(model, hook_kwargs: dict | None, topo_args: tuple | None = None):
    from torch.nn.parallel import DistributedDataParallel as DDP

    from deepseek.distributed.topology import Topology

    ddp = DDP(model, bucket_cap_mb=0.001)  # several buckets: one per parameter or two
    hook = None
    if hook_kwargs is not None:
        topology = Topology(*topo_args) if topo_args else None
        hook = CommHook(topology, **hook_kwargs).install(ddp)
    return ddp, hook


def _train(ddp, hook, rank: int, steps: range, lr: float = 0.3) -> list[float]:
    import torch

    opt = torch.optim.SGD(ddp.parameters(), lr=lr)
    losses = []
    for step in steps:
        x, y = _batch(rank, step)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _grads(ddp, rank: int, steps: int = 3) -> list[list[float]]:
    """Gradients of ``steps`` backward passes (no update: DDP's rebuilt buckets are used from the second on)."""
    import torch

    out = []
    for step in range(steps):
        x, y = _batch(rank, step)
        ddp.zero_grad()
        torch.nn.functional.mse_loss(ddp(x), y).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in ddp.parameters()]).tolist())
    return out


def _resume_matches(rank: int, kwargs: dict, topo_args: tuple | None = None) -> list[bool]:
    """[6 straight steps == 3 steps + hook state through torch.save/load(weights_only) + 3 steps (bitwise),
    the same resume without the hook's state == straight] (the second must be False for the check to mean much)."""
    import torch

    ddp, hook = _ddp(_model(), kwargs, topo_args)
    _train(ddp, hook, rank, range(6))
    straight = [p.detach().clone() for p in ddp.parameters()]
    ddp, hook = _ddp(_model(), kwargs, topo_args)
    _train(ddp, hook, rank, range(3))
    params = {k: v.detach().clone() for k, v in ddp.module.state_dict().items()}
    blob = io.BytesIO()
    torch.save(hook.state_dict(), blob)
    blob.seek(0)
    state = torch.load(blob, weights_only=True)
    same = []
    for restore in (True, False):
        model = _model()
        model.load_state_dict(params)
        ddp, hook = _ddp(model, kwargs, topo_args)
        if restore:
            hook.load_state_dict(state)
        _train(ddp, hook, rank, range(3, 6))
        same.append(all(torch.equal(a, b) for a, b in zip(straight, ddp.parameters())))
    return same


def _two_rank_checks(rank: int) -> dict:

    out: dict = {}
    reference = _grads(_ddp(_model(), None)[0], rank)
    ddp, hook = _ddp(_model(), {})
    out["none"] = _grads(ddp, rank) == reference
    stats = hook.pop_step_stats()
    out["none_stats"] = [stats["calls"], stats["bytes"], stats["bytes_uncompressed"], stats["seconds"] > 0]
    out["topology"] = {}
    for args in (("tree", 1, 1), ("hybrid", 1, 1), ("hybrid", 2, 1), ("tree", 2, 1)):
        got = _grads(_ddp(_model(), {}, args)[0], rank)
        out["topology"][str(args)] = max(abs(a - b) for g, r in zip(got, reference) for a, b in zip(g, r))
    out["losses"] = {}
    for kwargs in ({}, {"compression": "fp16"}, {"compression": "bf16"}, {"compression": "powersgd",
                                                                          "powersgd_rank": 1}):
        ddp, hook = _ddp(_model(), kwargs, ("hybrid", 1, 1) if kwargs.get("compression") == "bf16" else None)
        losses = _train(ddp, hook, rank, range(60))
        stats = hook.pop_step_stats()
        out["losses"][kwargs.get("compression", "none")] = [losses[0], sum(losses[-5:]) / 5,
                                                            stats["bytes"] / stats["bytes_uncompressed"]]
    out["resume"] = {}
    for kwargs in ({"compression": "powersgd", "powersgd_rank": 1, "start_iter": 2}, {"compression": "bf16"}):
        out["resume"][kwargs["compression"]] = _resume_matches(rank, kwargs)
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_hooks_on_two_ranks() -> None:
    for res in run_ranks(_two_rank_checks, 2, timeout_s=240).values():
        assert res["none"], "the plain hook changed DDP's gradients"
        calls, sent, plain, timed = res["none_stats"]
        # 3 backward passes of 808 fp32 gradients; a 2-rank ring all-reduce sends 2 (p-1)/p n = n bytes
        assert calls >= 3 and sent == plain == 3 * 808 * 4 and timed
        assert max(res["topology"].values()) < 1e-6, res["topology"]
        plain_end = res["losses"]["none"][1]
        for name, (first, last, _ratio) in res["losses"].items():
            assert last < first / 5, (name, first, last)  # every variant learns
            assert last < 1.5 * plain_end, (name, last, plain_end)  # and nearly as well as uncompressed
        assert res["losses"]["fp16"][2] == pytest.approx(0.5) and res["losses"]["bf16"][2] == pytest.approx(0.5)
        assert res["losses"]["powersgd"][2] < 0.5
        assert res["resume"] == {"powersgd": [True, False], "bf16": [True, False]}, res["resume"]


def _inter_node_only_checks(rank: int) -> dict:
    from deepseek.distributed.topology import Topology

    out: dict = {}
    reference = _grads(_ddp(_model(), None)[0], rank, steps=2)
    for compression in ("fp16", "powersgd"):
        kwargs = {"compression": compression, "inter_node_only": True, "powersgd_rank": 1}
        ddp, hook = _ddp(_model(), kwargs, ("hybrid", 2, 1))
        got = _grads(ddp, rank, steps=2)  # PowerSGD starts at iteration 2: both passes uncompressed
        diff = max(abs(a - b) / (abs(b) + 1e-3) for g, r in zip(got, reference) for a, b in zip(g, r))
        hook.pop_step_stats()
        losses = _train(ddp, hook, rank, range(40))
        stats = hook.pop_step_stats()
        out[compression] = [diff, losses[0], sum(losses[-5:]) / 5, stats["bytes"] / stats["bytes_uncompressed"]]
        out[f"{compression}_inter"] = [stats["bytes_inter"], stats["bytes_inter_uncompressed"]]
    out["leader"] = rank % 2 == 0
    out["resume"] = [_resume_matches(rank, {"compression": c, "inter_node_only": True, "powersgd_rank": 1},
                                     ("hybrid", 2, 1)) for c in ("fp16", "powersgd")]
    try:
        CommHook(Topology("ring", 2), "fp16", inter_node_only=True)
    except ValueError as err:
        out["error"] = str(err)
    return out


@pytest.mark.distributed
@pytest.mark.slow
def test_inter_node_only_compression_on_two_nodes_of_two() -> None:
    for res in run_ranks(_inter_node_only_checks, 4, timeout_s=180).values():
        fp16_diff, first, last, ratio = res["fp16"]
        assert fp16_diff < 1e-2 and last < first / 5, res["fp16"]
        # per bucket of n bytes: reduce-scatter + all-gather send n inside the node (fp32 both times), the shard
        # n/2 crosses once: fp16 halves only that leg, 1.5 n -> 1.25 n
        assert ratio == pytest.approx(1.25 / 1.5), res["fp16"]
        inter, inter_fp32 = res["fp16_inter"]
        assert inter_fp32 > 0 and inter == pytest.approx(inter_fp32 / 2)  # the leg across nodes: half the bytes
        inter, inter_fp32 = res["powersgd_inter"]  # only each node's leader crosses, with P, Q and the 1-D tensors
        assert inter_fp32 > 0 and ((0 < inter < inter_fp32) if res["leader"] else inter == 0), res["powersgd_inter"]
        psgd_diff, first, last, ratio = res["powersgd"]
        assert psgd_diff < 1e-4 and last < first / 5 and ratio < 1, res["powersgd"]
        assert res["resume"] == [[True, False], [True, False]], res["resume"]
        assert res["error"] == ("inter_node_only: True with mode 'ring' and compression 'fp16'; allowed: only with "
                                "mode 'hybrid' and a compression")


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ValueError, match=r"^compression: 'int8'; allowed: none, fp16, bf16, powersgd$"):
        CommHook(compression="int8")
    with pytest.raises(ValueError, match=r"^powersgd_rank: 0; allowed: an integer >= 1$"):
        CommHook(compression="powersgd", powersgd_rank=0)
    with pytest.raises(ValueError, match=r"^start_iter: 1; allowed: an integer >= 2 "):
        CommHook(compression="powersgd", start_iter=1)
