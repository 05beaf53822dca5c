"""Progressive mixed precision: the planted overflow-prone layer is promoted, training matches fp32."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import deepseek as ds
from deepseek.amp import ProgressivePrecision
from tests.conftest import REPO


@pytest.mark.slow
def test_example_progressive_matches_fp32_where_plain_fp16_fails(tmp_path):
    """The acceptance run: examples/progressive_precision.py (fp32, plain fp16, progressive fp16)."""
    out, run_dir = tmp_path / "cmp.json", tmp_path / "run"
    cmd = [
        sys.executable,
        str(REPO / "examples" / "progressive_precision.py"),
        "--run-dir",
        str(run_dir),
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert r.returncode == 0, r.stderr[-2000:]
    runs = json.loads(out.read_text())
    fp32, fp16, progressive = runs["fp32"], runs["fp16-mixed"], runs["progressive"]
    assert abs(progressive["val"]["loss"] - fp32["val"]["loss"]) <= 0.01 * fp32["val"]["loss"]
    assert progressive["fp32_modules"] == ["amplify"]
    # Plain fp16 overflows on every step; the loss scaler cannot fix a forward overflow.
    assert fp16["skipped_steps"] >= 10 * max(progressive["skipped_steps"], 1)
    assert not fp16["val"]["loss"] <= fp32["val"]["loss"] * 1.01  # worse (or NaN)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    shares = [r["precision/low_share"] for r in records if "precision/low_share" in r]
    assert shares[0] < 0.5 and records[0]["step"] == 1 and records[0]["precision/promotions"] == 1


class Planted(nn.Module):
    """A small MLP whose ``amplify`` layer outputs ~1e5 (beyond fp16's 65504); a LayerNorm follows."""

    def __init__(self, gain: float = 3e5) -> None:
        super().__init__()
        self.inp, self.amplify, self.norm, self.out = (
            nn.Linear(32, 64),
            nn.Linear(64, 64),
            nn.LayerNorm(64),
            nn.Linear(64, 4),
        )
        with torch.no_grad():
            self.amplify.weight.mul_(gain)
            self.amplify.bias.mul_(gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.amplify(torch.relu(self.inp(x))))))


def _loop(model: nn.Module, policy: ProgressivePrecision, batches: list, lr: float = 1e-2) -> list[dict]:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    events = []
    for x, y in batches:
        with policy.autocast():
            loss = nn.functional.cross_entropy(model(x), y)
        policy.scaler.scale(loss).backward()
        events += policy.observe()
        policy.scaler.step(opt)
        policy.scaler.update()
        opt.zero_grad()
    return events


def test_standalone_policy_promotes_then_demotes_after_a_stable_window_and_round_trips():
    torch.manual_seed(0)
    model = Planted()
    policy = ProgressivePrecision(model, stable_steps=3)
    assert policy.low_precision_share() > 0.98 and policy.promoted == []
    batches = [(torch.randn(16, 32), torch.randint(0, 4, (16,))) for _ in range(6)]
    events = _loop(model, policy, batches)
    # promoted at step 1; demoted after 3 stable steps; overflows again; promoted with a doubled window
    assert [(e["step"], e["action"], e["module"]) for e in events] == [
        (1, "promote", "amplify"), (4, "demote", "amplify"), (5, "promote", "amplify"),
    ]  # fmt: skip
    assert "forward overflow" in events[0]["reason"]
    restored = ProgressivePrecision(Planted(), stable_steps=3)
    restored.load_state_dict(policy.state_dict())
    assert restored.promoted == ["amplify"] and restored.metrics() == policy.metrics()
    assert restored.state_dict()["modules"]["amplify"]["window"] == 6


def test_promoted_module_computes_in_fp32_and_others_in_fp16():
    model = Planted(gain=1.0)
    policy = ProgressivePrecision(model)
    policy._modules[1][1].promoted = True  # amplify
    dtypes = {}
    for name in ("inp", "amplify", "out"):
        getattr(model, name).register_forward_hook(lambda m, a, o, n=name: dtypes.__setitem__(n, o.dtype))
    with policy.autocast():
        model(torch.randn(2, 32))
    assert dtypes == {"inp": torch.float16, "amplify": torch.float32, "out": torch.float16}


def test_gradient_underflow_promotes_after_patience():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 1))
    policy = ProgressivePrecision(model, scaler=ds.amp.GradScaler(init_scale=1.0, enabled=False), patience=2)
    x = torch.randn(4, 8)
    events = []
    for _ in range(2):
        with policy.autocast():
            loss = model(x).sum() * 1e-6  # gradients below fp16's smallest normal number
        loss.backward()
        events += policy.observe()
        model.zero_grad()
    assert {e["module"] for e in events} >= {"1"} and all("underflow" in e["reason"] for e in events)
    assert events[0]["step"] == 2


def test_trainer_rejects_unknown_precision():
    with pytest.raises(ValueError, match="progressive"):
        ds.Trainer(nn.Linear(2, 2), precision="fp8", max_steps=1).fit([(torch.randn(2, 2), torch.tensor([0, 1]))])


def _promote(policy: ProgressivePrecision, name: str) -> None:
    """What ``observe()`` does on a promotion, without the statistics that lead to it."""
    health = next(h for _, h in policy._modules if h.name == name)
    health.promoted = True


def _grads(model: nn.Module, x: torch.Tensor, promote: str, after_forward: bool) -> list[torch.Tensor]:
    policy = ProgressivePrecision(model, scaler=ds.amp.GradScaler(enabled=False))
    if not after_forward:
        _promote(policy, promote)
    with policy.autocast():
        loss = model(x).float().pow(2).mean()
    if after_forward:  # as if observe() ran between this forward and its backward
        _promote(policy, promote)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("after_forward", [False, True])
def test_checkpointed_recompute_uses_the_precision_of_its_forward(after_forward):
    """Activation checkpointing re-runs a block's forward in backward: a module promoted at the forward
    must be promoted in the recompute too, and one promoted after it must not be."""
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(3)], nn.Linear(16, 4))
    plain = copy.deepcopy(model)
    ds.nn.checkpoint_modules(model, r"[0-2]")  # blocks; the promoted Linear runs inside the recompute
    x = torch.randn(8, 16)
    expected = _grads(plain, x, "1.0", after_forward)
    for a, b in zip(expected, _grads(model, x, "1.0", after_forward), strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
