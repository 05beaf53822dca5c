"""3-D training: the ``pipeline`` strategy composed with gpt2's tensor-parallel plan (pp 2 x tp 2 on 4 gloo ranks).

Each stage is sharded over its tp group (column/row-wise blocks, vocab-parallel embedding and head; the last
stage's head untied from the first stage's embedding, their vocab shards' gradients summed between the ranks
of the same tp index), then run by the 1F1B schedule. Through ``ds.Trainer`` for 10 steps in fp32 with gradient
accumulation, clipping, a scheduler and EMA: every step's loss and the gathered ``final/`` weights equal one
process on the same global batch to 1e-5, also after a resume at step 5, and the run's sharded checkpoint loads
into a plain gpt2 in one process; on 8 ranks dp 2 x pp 2 x tp 2 (FSDP2 on the data dimension), resumed from a
full checkpoint, equals one process on the global batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from deepseek.train.pipeline import Pipeline
from tests.gloo_ranks import run_ranks
from tests.train.test_pipeline import STEPS, _model, _per_step, _rank_worker, _train

PP, TP = 2, 2


def _rank_worker_3d(rank: int, run_dir: str, spec: dict, stop_at: int, sharded: bool, dp: int) -> dict[str, Any]:
    """One rank of a (pp, dp_shard, tp) mesh, row-major: it reads data-parallel slice ``(rank // tp) % dp``."""
    return _train("gpt2", Path(run_dir), spec, stop_at, sharded, dp, (rank // TP) % dp)


@pytest.mark.slow
@pytest.mark.distributed
def test_pp2_x_tp2_resumed_equals_one_process_and_its_shards_load_into_a_plain_gpt2(tmp_path):
    """Stopped after step 5 and resumed from a sharded checkpoint (DCP, each rank's DTensor shards): equal to
    one uninterrupted process; the shards read into a plain gpt2 in one process are the trained weights."""
    from deepseek.runs import load_sharded_weights

    sharded = True
    spec = {"name": "pipeline", "pp": PP, "tp": TP, "schedule": "1f1b", "microbatches": 2}
    results = run_ranks(_rank_worker, PP * TP, "gpt2", str(tmp_path / "ranks"), spec, 5, sharded, timeout_s=240)
    single = _train("gpt2", tmp_path / "one", "single_device")

    expected = torch.tensor(single["logged"], dtype=torch.float64)
    assert len(expected) == STEPS
    for rank in range(PP * TP):  # ranks (pp, tp) row-major: 2 and 3 hold the last stage, which computes the loss
        if rank >= TP:
            got = _per_step(results[rank]["losses"])
            torch.testing.assert_close(got, _per_step(single["losses"]), atol=1e-5, rtol=0, msg=f"rank {rank}")
        else:
            assert not results[rank]["losses"]
    logged = torch.tensor(results[0]["logged"], dtype=torch.float64)  # what rank 0 (the first stage's) logs
    torch.testing.assert_close(logged, expected, atol=1e-5, rtol=0)
    for rank in range(PP * TP):  # each rank's stage, gathered over tp: the one process's weights
        for name, value in results[rank]["weights"].items():
            reference = single["weights"]["tok.weight" if name == "head.weight" else name]
            torch.testing.assert_close(torch.tensor(value), torch.tensor(reference), atol=1e-5, rtol=0, msg=name)
    ours = load_file(tmp_path / "ranks" / "final" / "model.safetensors")
    theirs = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)
    assert abs(results[0]["val"]["val/loss"] - single["val"]["val/loss"]) < 1e-5

    # 3-D -> one process: the pp 2 x tp 2 shards read into a plain gpt2 are the trained weights
    last = tmp_path / "ranks" / "checkpoints" / f"step-{STEPS:08d}"
    assert (last / "shards").is_dir()
    whole = _model("gpt2", seed=5)
    load_sharded_weights(whole, last)
    for name, p in whole.named_parameters():
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(single["weights"][name]), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.distributed
def test_dp2_x_pp2_x_tp2_resumed_from_a_full_checkpoint_equals_one_process(tmp_path):
    """8 ranks: each stage sharded over tp, then with FSDP2 over 2 data-parallel ranks; stopped after step 5
    and resumed from a full checkpoint (each rank distributes its stage's part of the whole state into its
    DTensors). Each pipeline reads its half of every global batch; one process trains on the whole batches."""
    dp = 2
    spec = {"name": "pipeline", "pp": PP, "tp": TP, "dp_shard": dp, "schedule": "1f1b", "microbatches": 2}
    results = run_ranks(_rank_worker_3d, PP * dp * TP, str(tmp_path / "ranks"), spec, 5, False, dp, timeout_s=300)
    single = _train("gpt2", tmp_path / "one", "single_device", dp=dp)
    last_stage = [rank for rank in results if rank >= dp * TP and rank % TP == 0]  # tp rank 0 of each pipeline
    got = sum(_per_step(results[rank]["losses"]) for rank in last_stage) / dp  # the last stage's two halves
    torch.testing.assert_close(got, _per_step(single["losses"]), atol=1e-5, rtol=0)
    ours = load_file(tmp_path / "ranks" / "final" / "model.safetensors")
    theirs = load_file(tmp_path / "one" / "final" / "model.safetensors")
    assert set(ours) == set(theirs)
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=0, msg=name)


def test_pp_x_tp_arguments_and_mesh():
    assert Pipeline(pp=2, tp=2).mesh_shape(8) == (2, 1, 2, 2)
    assert Pipeline(pp=2).mesh_shape(4) == (2, 1, 2)  # tp 1: the mesh has no tp dim
    with pytest.raises(ValueError, match=r"pipeline sequence_parallel: True is not allowed; .*tp 1 or"):
        Pipeline(pp=2, tp=2, sequence_parallel=True)
    with pytest.raises(ValueError, match=r"pipeline pp 2 x dp_replicate 1 x dp_shard -1 x tp 2 does not make"):
        Pipeline(pp=2, tp=2).mesh_shape(6)
