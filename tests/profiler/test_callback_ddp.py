"""ProfilerCallback under DDP on two gloo ranks: the main rank writes the profile, with the gradient all-reduce as
communication; the other rank profiles nothing; the weights are those of the same run without the profiler. Python
stacks are not recorded under several processes (torch's stack tracer crashed a rank with SIGSEGV in CI); the
summary says so and the module flame graph is still written."""

from __future__ import annotations

import pytest

from tests.gloo_ranks import run_ranks

WORLD = 2


def _worker(rank: int, out: str) -> dict:
    import torch
    import torch.nn as nn

    import deepseek as ds
    from deepseek.profiler import ProfilerCallback

    def fit(callbacks: list) -> list:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 4))
        g = torch.Generator().manual_seed(rank)
        data = [(torch.randn(8, 32, generator=g), torch.randint(0, 4, (8,), generator=g)) for _ in range(5)]
        trainer = ds.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=1, metrics=(),
                             progress="off", tensorboard=False, checkpoint_every_minutes=None, strategy="ddp",
                             callbacks=callbacks)  # fmt: skip
        trainer.fit(data)
        return [p.detach().tolist() for p in model.parameters()]

    plain = fit([])
    callback = ProfilerCallback(start_step=1, steps=2, warmup=1, output_dir=out, print_table=False)
    profiled = fit([callback])
    summary = callback.summary
    return {"same": plain == profiled, "summary": None if summary is None else
            {"steps": summary["steps"], "split_s": summary["split_s"],
                                                       "notes": summary["flops"].get("notes", [])}}  # fmt: skip


@pytest.mark.distributed
def test_the_main_rank_profiles_ddp_with_its_all_reduce_as_communication(tmp_path):
    got = run_ranks(_worker, WORLD, str(tmp_path / "profile"), timeout_s=120)
    assert got[0]["same"] and got[1]["same"]  # profiling changed nothing on either rank
    assert got[1]["summary"] is None  # only the main rank is profiled
    summary = got[0]["summary"]
    assert summary["steps"] == 2 and summary["split_s"]["communication"] > 0
    assert any("Python stacks are not recorded (in a run of 2 processes by default)" in n for n in summary["notes"])
    for name in ("summary.json", "flamegraph_module.svg", "flamegraph_stack.svg", "stacks_module.txt"):
        assert (tmp_path / "profile" / name).is_file(), name
