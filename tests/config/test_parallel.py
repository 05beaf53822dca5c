"""The ``parallel:`` section (issue 15): each bad value is one config error naming the key, the value and what
is allowed (exit 2, no traceback); ``parallel`` and an explicit ``train.strategy`` must agree."""

from __future__ import annotations

import pytest
import yaml

from deepseek.cli.main import main
from deepseek.config import ConfigError, load_config
from tests.conftest import REPO

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


def errors(capsys, *overrides: str) -> list[str]:
    assert main(["config", "validate", QUICKSTART, *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("parallel.tp=2", ["parallel.tp", "tensor and pipeline parallelism come in the next issue", "(got 2)"]),
        ("parallel.pp=4", ["parallel.pp", "next issue", "allowed now: 1", "(got 4)"]),
        ("parallel.dp_shard=0", ["parallel.dp_shard", "-1 for the rest", "(got 0)"]),
        ("parallel.dp_shard=-2", ["parallel.dp_shard", "greater than or equal to -1", "(got -2)"]),
        ("parallel.zero_stage=4", ["parallel.zero_stage", "0, 1, 2 or 3", "(got 4)"]),
        ("parallel.dp_replicate=0", ["parallel.dp_replicate", "greater than 0", "(got 0)"]),
        ("parallel.reshard_after_forward=true", ["parallel: reshard_after_forward: True contradicts zero_stage: 0",
                                                  "allowed: null, or true with zero_stage 3"]),  # fmt: skip
        ("parallel.cpu_offload=true", ["parallel: zero_stage: 0 replicates parameters", "allowed: cpu_offload: false"]),
        ("parallel.zero_sage=3", ["parallel.zero_sage: unknown key 'zero_sage'", "did you mean 'zero_stage'"]),
    ],
)
def test_bad_parallel_value_is_one_line_with_key_value_and_allowed(capsys, override, expected):
    lines = errors(capsys, override)
    assert len(lines) == 1 and lines[0].startswith(f"error: config '{QUICKSTART}': parallel")
    assert all(part in lines[0] for part in expected), lines[0]


def test_settings_that_contradict_the_stage_are_one_line(capsys):
    (line,) = errors(capsys, "parallel.zero_stage=2", "parallel.reshard_after_forward=true")
    assert "parallel: reshard_after_forward: True contradicts zero_stage: 2" in line
    (line,) = errors(capsys, "parallel.zero_stage=1", "parallel.dp_replicate=2")
    assert "parallel: zero_stage: 1 replicates parameters" in line and "HSDP and offload need zero_stage 2 or 3" in line
    load_config(QUICKSTART, ["parallel.zero_stage=3", "parallel.reshard_after_forward=true", "parallel.cpu_offload=true"])
    load_config(QUICKSTART, ["parallel.zero_stage=2", "parallel.reshard_after_forward=false", "parallel.dp_replicate=2"])


def test_strategy_contradicting_parallel_is_one_line(capsys):
    (line,) = errors(capsys, "parallel.zero_stage=3", "train.strategy=ddp")
    assert "train.strategy: 'ddp' contradicts parallel.zero_stage: 3" in line and "allowed:" in line
    (line,) = errors(capsys, "parallel.zero_stage=0", "train.strategy=fsdp")
    assert "train.strategy: 'fsdp' contradicts parallel.zero_stage: 0" in line and "selects 'ddp'" in line


def test_fsdp_argument_contradicting_parallel_is_one_line(capsys):
    (line,) = errors(capsys, "parallel.zero_stage=2", "train.strategy.name=fsdp", "train.strategy.zero_stage=3")
    assert "train.strategy.zero_stage: 3 contradicts parallel.zero_stage: 2" in line


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.zero_stage=3", "train.strategy=auto"],
        ["parallel.zero_stage=3", "train.strategy=fsdp"],
        ["parallel.zero_stage=2", "train.strategy.name=fsdp", "train.strategy.zero_stage=2"],
        ["parallel.zero_stage=0", "train.strategy=ddp"],
        ["parallel.zero_stage=0", "train.strategy=single_device"],
        ["train.strategy=fsdp"],  # no parallel section: the strategy decides
    ],
)
def test_agreeing_settings_load(overrides):
    load_config(QUICKSTART, overrides)


def test_defaults_and_the_resolved_config_reloads(tmp_path):
    """No section: ``parallel`` is null (the strategy decides); a section gets every default; the resolved
    config a run directory keeps (``train.strategy: auto`` filled in) loads again without a contradiction."""
    assert load_config(QUICKSTART).parallel is None
    cfg = load_config(QUICKSTART, ["parallel.zero_stage=3"])
    assert cfg.parallel.model_dump() == {"dp_replicate": 1, "dp_shard": -1, "tp": 1, "pp": 1, "zero_stage": 3,
                                         "reshard_after_forward": None, "cpu_offload": False, "meta_init": False}  # fmt: skip
    for given in (["parallel.zero_stage=3"], ["train.strategy=fsdp"]):
        resolved = tmp_path / "resolved.yaml"
        resolved.write_text(yaml.safe_dump(load_config(QUICKSTART, given).to_dict()))
        assert load_config(resolved).to_dict() == load_config(QUICKSTART, given).to_dict()


def test_load_config_raises_config_error_listing_the_contradiction():
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, ["parallel.zero_stage=1", "train.strategy=single_device"])
    assert len(info.value.problems) == 1 and "parallel.zero_stage: 1" in info.value.problems[0]
