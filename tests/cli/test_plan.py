"""``deepseek plan CONFIG --world N`` (issue 15): the per-rank table and JSON, the fully_shard check for a
1,024-rank world, degrees that do not fit as one-line errors (exit 2), and a plan that does not fit (exit 1)."""

from __future__ import annotations

import json

import pytest

from deepseek.cli.main import main
from tests.conftest import run_cli, write_yaml
from tests.train.test_plan import TINY_GPT2


@pytest.fixture
def config(tmp_path):
    return str(write_yaml(tmp_path / "tiny.yaml", {**TINY_GPT2, "parallel": {"zero_stage": 3}}))


def test_plan_prints_per_rank_memory_collectives_and_the_shard_check(capsys, config):
    assert main(["plan", config, "--world", "1024", "--device", "h100-80gb"]) == 0
    out = capsys.readouterr().out
    assert "plan: 1024 ranks = dp_replicate 1 x dp_shard 1024 x tp 1 x pp 1; strategy fsdp, zero_stage 3" in out
    for row in ("parameters", "gradients", "optimizer state", "activations (estimate)", "all_gather (parameters)",
                "reduce_scatter (gradients)", "fits h100-80gb"):  # fmt: skip
        assert row in out
    assert "fully_shard check (fake process group, rank 0)" in out and "rank 1023" in out and "MISMATCH" not in out


def test_plan_json_shrinks_per_rank_state_with_the_world(capsys, config):
    plans = {}
    for world in (1, 4):
        assert main(["plan", config, "--world", str(world), "--device", "cpu", "--json"]) == 0
        plans[world] = json.loads(capsys.readouterr().out)
    one, four = plans[1], plans[4]
    assert one["collectives"] == {} and one["shard_check"] == [] and one["strategy"] == "single_device"
    assert four["degrees"]["dp_shard"] == 4 and all(c["ok"] for c in four["shard_check"])
    for key in ("parameters", "gradients", "optimizer_state"):
        assert four["memory"][key] == pytest.approx(one["memory"][key] / 4, rel=0.10)
    assert four["memory"]["activations"] == one["memory"]["activations"] > 0  # per-rank batch: the same


def test_world_from_torchruns_environment(capsys, config, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert main(["plan", config, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["world"] == 8


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--world", "6", "parallel.dp_shard=4"], "parallel: dp_replicate x tp x pp = 1 x 1 x 1 x dp_shard 4 = 4, "
                                                   "but the world has 6 ranks"),  # fmt: skip
        (["--world", "8", "parallel.dp_replicate=3"], "does not divide the world size 8"),
        (["--world", "0"], "--world: 0; allowed: 1 to 65536"),
        (["--world", "4", "parallel.tp=2", "parallel.zero_stage=0"], "parallel: tp: 2 needs zero_stage 2 or 3"),
        (["--world", "4", "parallel.tp=4"], "parallel.tp=4 must be a positive integer dividing gpt2's heads 2"),
        (["--world", "4", "parallel.pp=4"], "parallel: pp x pp_stages_per_rank = 4 x 1 = 4 stages, but the model "
                                            "has 2 blocks"),  # fmt: skip
    ],
)
def test_bad_degrees_are_one_line_and_exit_2(capsys, config, args, expected):
    assert main(["plan", config, *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_plan_that_does_not_fit_says_so_and_exits_1(capsys, config):
    big = ["model.dim=4096", "model.depth=16", "model.heads=32", "parallel.zero_stage=0"]
    assert main(["plan", config, "--world", "8", "--device", "a100-40gb", *big]) == 1
    assert "does NOT fit a100-40gb" in capsys.readouterr().out


@pytest.mark.slow  # a fresh interpreter imports torch: ~15 s on this machine; the in-process tests cover the rest
def test_plan_from_a_shell(config):
    done = run_cli("plan", config, "--world", "2", "--device", "v100-32gb")
    assert done.returncode == 0, done.stderr
    assert "fits v100-32gb" in done.stdout
