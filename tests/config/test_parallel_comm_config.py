"""``parallel.comm`` (issue 18): accepted values reach the DDP strategy; bad ones are refused with one line
naming the key, the value and what is allowed (exit 2, no traceback)."""

from __future__ import annotations

import pytest

from deepseek.cli.main import main
from deepseek.config import load_config
from deepseek.train.plan import strategy_spec
from deepseek.train.strategy import DDP
from tests.conftest import REPO

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")
HYBRID = ["parallel.comm.topology=hybrid", "parallel.comm.ring_size=2", "parallel.comm.tree_depth=3"]


def test_the_comm_section_selects_ddp_with_its_hook_settings():
    cfg = load_config(QUICKSTART, [*HYBRID, "parallel.comm.compression=bf16", "parallel.comm.inter_node_only=true"])
    comm = cfg.parallel.comm
    assert (comm.topology, comm.ring_size, comm.tree_depth, comm.compression, comm.inter_node_only) == (
        "hybrid", 2, 3, "bf16", True)  # fmt: skip
    spec = strategy_spec(cfg, world=4)
    assert spec["name"] == "ddp" and spec["comm"]["topology"] == "hybrid" and spec["comm"]["compression"] == "bf16"
    strategy = DDP(**{k: v for k, v in spec.items() if k != "name"})
    assert strategy.collective_state_dict  # compression state is per rank: every rank joins each checkpoint
    assert strategy_spec(cfg, world=1).name == "auto"  # one process: nothing to all-reduce
    assert load_config(QUICKSTART).parallel is None  # the default: DDP's flat all-reduce, timed
    assert not DDP().collective_state_dict and not DDP(comm={"topology": "tree"}).collective_state_dict


# override -> (key named in the message, value shown, what is allowed)
REFUSED = {
    "parallel.comm.topology=star": ("parallel.comm.topology", "star", "'ring', 'tree' or 'hybrid'"),
    "parallel.comm.compression=int8": ("parallel.comm.compression", "int8", "'powersgd'"),
    "parallel.comm.ring_size=0": ("parallel.comm.ring_size", "0", "greater than 0"),
    "parallel.comm.tree_depth=0": ("parallel.comm.tree_depth", "0", "greater than 0"),
    "parallel.comm.inter_node_only=true": ("inter_node_only", "true", "topology hybrid"),
    "parallel.comm.shuffle=1": ("parallel.comm.shuffle", "shuffle", "allowed keys: compression"),
}


@pytest.mark.parametrize("override", list(REFUSED))
def test_bad_comm_settings_are_refused_with_one_line(capsys, override):
    key, value, allowed = REFUSED[override]
    extra = ["parallel.comm.compression=fp16"] if "inter_node_only" in override else []
    assert main(["config", "validate", QUICKSTART, override, *extra]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert key in lines[0] and value in lines[0] and allowed in lines[0], lines[0]


def test_comm_under_fsdp_is_a_hierarchical_reduce_scatter_or_refused(capsys):
    cfg = load_config(QUICKSTART, ["parallel.comm.topology=hybrid", "parallel.comm.ring_size=2", "parallel.zero_stage=2"])
    spec = strategy_spec(cfg, world=4)
    assert spec["name"] == "fsdp" and spec["comm"]["topology"] == "hybrid" and spec["comm"]["ring_size"] == 2
    for refused in (["parallel.comm.compression=bf16"], ["parallel.comm.topology=tree"], ["parallel.dp_replicate=2"]):
        assert main(["config", "validate", QUICKSTART, "parallel.comm.topology=hybrid", "parallel.zero_stage=3",
                     *refused]) == 2  # fmt: skip
        err = capsys.readouterr().err.strip()
        assert "allowed under FSDP2: topology ring or hybrid" in err and len(err.splitlines()) == 1, err
    assert main(["config", "validate", QUICKSTART, "parallel.comm.topology=hybrid", "parallel.zero_stage=1"]) == 2
    assert "zero_stage 0 (DDP) or 2/3 (FSDP2)" in capsys.readouterr().err


def test_a_ddp_strategy_refuses_bad_comm_arguments():
    with pytest.raises(ValueError, match=r"comm\.topology.*'ring', 'tree' or 'hybrid'"):
        DDP(comm={"topology": "mesh"})
    with pytest.raises(ValueError, match="allowed: a parallel.comm mapping, null or false"):
        DDP(comm="hybrid")
    assert DDP(comm=False).comm is False  # no hook of ds's: a user may register their own
