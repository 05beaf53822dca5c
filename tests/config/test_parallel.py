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
        ("parallel.tp=2", ["parallel: tp: 2 needs zero_stage 2 or 3", "(got zero_stage: 0)"]),
        ("parallel.pp=4", ["parallel: pp: 4 needs zero_stage 2 or 3", "FSDP2 on the data dimension"]),
        ("parallel.tp=0", ["parallel.tp", "greater than 0", "(got 0)"]),
        ("parallel.pp_schedule=zb", ["parallel.pp_schedule", "'gpipe', '1f1b' or 'interleaved_1f1b'", "(got 'zb')"]),
        ("parallel.sequence_parallel=true", ["parallel: sequence_parallel: true needs tp > 1", "(got tp: 1)"]),
        ("parallel.loss_parallel=true", ["parallel: loss_parallel: true needs tp > 1"]),
        ("parallel.pp_microbatches=4", ["parallel: pp_microbatches: 4 needs pp > 1"]),
        ("parallel.ep=0", ["parallel.ep", "greater than 0", "(got 0)"]),
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
    (line,) = errors(capsys, "parallel.zero_stage=3", "parallel.pp=2", "train.strategy=fsdp")
    assert "train.strategy: 'fsdp' contradicts parallel.pp: 2" in line and "selects 'pipeline'" in line
    (line,) = errors(capsys, "parallel.ep=2", "train.strategy=ddp")
    assert "train.strategy: 'ddp' contradicts parallel.ep: 2" in line and "selects 'expert_parallel'" in line
    # the strategy parallel selects, named explicitly, agrees with it
    load_config(QUICKSTART, ["parallel.zero_stage=3", "parallel.pp=2", "train.strategy=pipeline"])
    load_config(QUICKSTART, ["parallel.ep=2", "train.strategy=expert_parallel"])


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
                                         "reshard_after_forward": None, "cpu_offload": False, "meta_init": False,
                                         "pp_schedule": "1f1b", "pp_microbatches": None, "pp_stages_per_rank": 1,
                                         "pp_split": None, "ep": 1, "sequence_parallel": False,
                                         "loss_parallel": False, "comm": None}  # fmt: skip
    for given in (["parallel.zero_stage=3"], ["train.strategy=fsdp"]):
        resolved = tmp_path / "resolved.yaml"
        resolved.write_text(yaml.safe_dump(load_config(QUICKSTART, given).to_dict()))
        assert load_config(resolved).to_dict() == load_config(QUICKSTART, given).to_dict()


def test_load_config_raises_config_error_listing_the_contradiction():
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, ["parallel.zero_stage=1", "train.strategy=single_device"])
    assert len(info.value.problems) == 1 and "parallel.zero_stage: 1" in info.value.problems[0]


PIPE = ["parallel.zero_stage=3", "parallel.pp=4"]


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # torch's Schedule1F1B needs n_microbatches >= the number of stages
        (["parallel.pp_microbatches=2"], "parallel: pp_microbatches: 2 with pp_schedule 1f1b and pp 4; allowed: "
                                         "at least pp (4)"),  # fmt: skip
        (["parallel.pp_schedule=interleaved_1f1b"], "parallel: pp_schedule: interleaved_1f1b needs "
                                                    "pp_stages_per_rank >= 2 (got 1)"),  # fmt: skip
        (["parallel.pp_stages_per_rank=2"], "parallel: pp_stages_per_rank: 2 needs pp_schedule interleaved_1f1b "
                                            "(got 1f1b); allowed with 1f1b: 1"),  # fmt: skip
        # ScheduleInterleaved1F1B: n_microbatches a multiple of its rounds, max(1, n_microbatches // pp)
        (["parallel.pp_schedule=interleaved_1f1b", "parallel.pp_stages_per_rank=2", "parallel.pp_microbatches=9"],
         "parallel: pp_microbatches: 9 with pp_schedule interleaved_1f1b and pp 4; allowed: a multiple of its "
         "rounds max(1, 9 // 4) = 2"),
        # the pipeline strategy runs interleaved 1F1B with at least pp micro-batches, like 1F1B
        (["parallel.pp_schedule=interleaved_1f1b", "parallel.pp_stages_per_rank=2", "parallel.pp_microbatches=3"],
         "parallel: pp_microbatches: 3 with pp_schedule interleaved_1f1b and pp 4; allowed: at least pp (4)"),
        (["parallel.pp_split=[1,2,3]"], "parallel: pp_split: [1, 2, 3] has 3 stages; allowed: pp x "
                                        "pp_stages_per_rank = 4 entries"),  # fmt: skip
    ],
)
def test_pipeline_settings_that_do_not_suit_the_schedule_are_one_line(capsys, overrides, expected):
    (line,) = errors(capsys, *PIPE, *overrides)
    assert expected in line, line


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (["parallel.ep=2", "parallel.tp=2", "parallel.zero_stage=2"], "parallel: ep: 2 needs tp 1 and pp 1"),
        (["parallel.ep=2", "parallel.zero_stage=3"], "parallel: ep: 2 needs zero_stage 0"),
        (["parallel.ep=4", "parallel.dp_shard=6"], "parallel: ep: 4 does not divide the data-parallel degree "
                                                   "dp_replicate x dp_shard = 1 x 6 = 6"),  # fmt: skip
    ],
)
def test_expert_parallel_settings_are_one_line(capsys, overrides, expected):
    (line,) = errors(capsys, *overrides)
    assert expected in line, line


@pytest.mark.parametrize(
    "overrides",
    [
        ["parallel.zero_stage=2", "parallel.tp=2", "parallel.sequence_parallel=true", "parallel.loss_parallel=true"],
        [*PIPE],  # pp_microbatches null: = pp, which suits 1f1b
        [*PIPE, "parallel.pp_schedule=gpipe", "parallel.pp_microbatches=1"],  # GPipe takes any number
        [*PIPE, "parallel.pp_schedule=interleaved_1f1b", "parallel.pp_stages_per_rank=2", "parallel.pp_microbatches=8"],
        [*PIPE, "parallel.pp_split=[3,3,3,3]", "parallel.tp=2", "parallel.dp_shard=-1"],
        ["parallel.ep=2", "parallel.dp_shard=4"],
        ["parallel.ep=8"],  # dp_shard -1: checked against the world by `deepseek plan` and at run start
    ],
)
def test_tp_pp_ep_settings_that_fit_load(overrides):
    par = load_config(QUICKSTART, overrides).parallel
    assert par.tp * par.pp * par.ep >= 2
