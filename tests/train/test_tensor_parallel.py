"""2-D data x tensor parallelism through the Trainer (``fsdp`` with ``tp``): on 2 gloo ranks (dp 1 x tp 2) the
loss at each of 10 steps, the gradient norm, the validation loss and the final gathered weights equal one
process on the same global batch to 1e-5 in fp32 (plain, sequence parallel, loss parallel); the ranks of one
tp group read the same data; sharded checkpoints resume bitwise at the same layout and load at tp 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import deepseek as ds
from deepseek.config import Config
from deepseek.train.assemble import build_loaders, data_shard
from deepseek.train.distributed import DistInfo
from tests.gloo_ranks import run_ranks

SEQ, VOCAB, STEPS = 8, 64, 10


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ds.models.build("gpt2", vocab_size=VOCAB, max_positions=SEQ, dim=16, depth=2, heads=2)


def token_batches(n: int, rows: int = 4, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` next-token batches (inputs (rows, SEQ), targets (rows, SEQ)); every tp rank reads all of them."""
    ids = torch.randint(0, VOCAB, (n, rows, SEQ + 1), generator=torch.Generator().manual_seed(seed))
    return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in ids]


def train_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One batch ``STEPS`` times: random tokens have nothing else to learn, and the loss must visibly fall."""
    return token_batches(1) * STEPS


class Record:
    """The loss (``loss_fn``) and the gradient norm before clipping (``on_step_end``) of every step."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.grad_norms: list[float] = []

    def loss_fn(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of ``(N, L, vocab)`` logits (a vocab-sharded DTensor under loss_parallel)."""
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        if torch.is_grad_enabled():  # training, not validation
            value = loss.detach()
            self.losses.append(float(value.full_tensor() if hasattr(value, "full_tensor") else value))
        return loss

    def on_step_end(self, trainer: ds.Trainer) -> None:
        self.grad_norms.append(float(trainer._step.grad_norm))


def make_trainer(model: torch.nn.Module, record: Record, strategy: Any, **kwargs: Any) -> ds.Trainer:
    # AdamW eps 1e-6: see tests/models/test_parallelize_tp.py (rounding noise on the key biases' zero gradient)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, eps=1e-6)
    defaults = dict(max_steps=STEPS, run_dir=None, checkpoint_every_steps=None)
    metrics = [ds.registry.metrics.build("token_accuracy")]  # summed over the ranks: tp duplicates cancel out
    return ds.Trainer(
        model, optimizer, loss_fn=record.loss_fn, max_epochs=None, device="cpu", metrics=metrics, strategy=strategy,
        grad_clip_norm=0.5, val_every_steps=5, callbacks=[record], tensorboard=False, progress="off",
        checkpoint_every_minutes=None, **{**defaults, **kwargs},
    )  # fmt: skip


def validation(trainer: ds.Trainer) -> list[float]:
    """The last validation's loss and token accuracy."""
    return [trainer.last_val_metrics["val/loss"], trainer.last_val_metrics["val/token_accuracy"]]


def plain(state: dict[str, torch.Tensor]) -> dict[str, list[float]]:
    return {name: t.flatten().tolist() for name, t in state.items()}


def train_tp2(rank: int, sequence_parallel: bool, loss_parallel: bool) -> dict[str, Any]:
    from deepseek.train.fsdp import FSDP

    strategy = FSDP(zero_stage=3, tp=2, sequence_parallel=sequence_parallel, loss_parallel=loss_parallel)
    record = Record()
    trainer = make_trainer(tiny_gpt2(), record, strategy)
    trainer.fit(train_batches(), token_batches(2, seed=2))
    weights = strategy.model_state_dict(trainer.model)  # a collective: the full weights on rank 0
    mesh = strategy.mesh
    return {"losses": record.losses, "grad_norms": record.grad_norms, "val": validation(trainer),
            "weights": plain(weights), "mesh": [list(mesh.shape), list(mesh.mesh_dim_names)]}  # fmt: skip


_REFERENCE: dict[str, Any] = {}


def reference() -> dict[str, Any]:
    """The same run on one process (cached: every parametrisation compares with it)."""
    if not _REFERENCE:
        record = Record()
        trainer = make_trainer(tiny_gpt2(), record, "single_device")
        trainer.fit(train_batches(), token_batches(2, seed=2))
        _REFERENCE.update(losses=record.losses, grad_norms=record.grad_norms,
                          val=validation(trainer), weights=plain(trainer.model.state_dict()))  # fmt: skip
    return _REFERENCE


def assert_close(got: Any, expected: Any, what: str) -> None:
    torch.testing.assert_close(
        torch.as_tensor(got), torch.as_tensor(expected), rtol=0, atol=1e-5, msg=lambda m: f"{what}: {m}"
    )


@pytest.mark.slow
@pytest.mark.distributed
# Plain tp runs through a config in test_a_tp2_config_trains_like_one_process; here both options at once (each
# alone was also checked when they were built; the suite keeps one run to stay inside its time budget).
@pytest.mark.parametrize("sequence_parallel, loss_parallel", [(True, True)], ids=["both"])
def test_tp2_through_the_trainer_matches_one_process(sequence_parallel, loss_parallel):
    expected = reference()
    results = run_ranks(train_tp2, 2, sequence_parallel, loss_parallel, timeout_s=180)
    assert results[0]["mesh"] == [[1, 2], ["dp_shard", "tp"]]
    for rank, got in results.items():
        assert len(got["losses"]) == STEPS, rank
        assert_close(got["losses"], expected["losses"], f"rank {rank} losses")
        assert_close(got["grad_norms"], expected["grad_norms"], f"rank {rank} grad norms")  # global over tp
        assert_close(got["val"], expected["val"], f"rank {rank} val/loss, val/token_accuracy")
    assert min(expected["grad_norms"]) > 0.5  # clipping was active at every step
    assert results[0]["weights"].keys() == expected["weights"].keys()
    for name, values in expected["weights"].items():
        assert_close(results[0]["weights"][name], values, name)
    assert expected["losses"][-1] < expected["losses"][0] - 0.5  # the steps do train


def tp_config(tmp_path: Path, strategy: str = "{name: fsdp, zero_stage: 3, tp: 2}", rank: int = 0) -> Config:
    """The config, written to a file of ``rank``'s own: ranks that shared one read it while another rewrote it."""
    from deepseek.config import load_config

    cfg_file = tmp_path / f"cfg-{rank}.yaml"
    cfg_file.write_text(f"model: {{name: gpt2, vocab_size: 259, max_positions: {SEQ}, dim: 16, depth: 2, heads: 2}}\n"
                        f"data: {{name: chatterbot_lm, seq_len: {SEQ}, batch_size: 4, val_fraction: 0}}\n"
                        f"train: {{max_steps: 3, device: cpu, loss: token_cross_entropy, strategy: {strategy}}}\n"
                        "logging: {progress: off, tensorboard: false}\n")  # fmt: skip
    return load_config(cfg_file, [])


def first_batches(cfg: Config, rank: int, world: int) -> list[list[int]]:
    train, _ = build_loaders(cfg, DistInfo(rank=rank, world_size=world))
    return [x.flatten().tolist() for (x, _), _ in zip(train, range(2))]


@pytest.mark.slow  # builds the loaders of 4 ranks; the fast lane keeps to its budget
def test_the_ranks_of_one_tp_group_read_the_same_batches(tmp_path):
    cfg = tp_config(tmp_path)
    assert [data_shard(cfg, DistInfo(rank=r, world_size=4)) for r in range(4)] == [(0, 2), (0, 2), (1, 2), (1, 2)]
    # dp 2 x tp 2: ranks 0 and 1 form one tp group, 2 and 3 the other; the two groups read different halves
    batches = [first_batches(cfg, rank, 4) for rank in range(4)]
    assert batches[0] == batches[1] and batches[2] == batches[3] and batches[0] != batches[2]
    # the 2-rank tp group reads what one process reads: the same global batch
    one_process = tp_config(tmp_path, "{name: auto}")
    assert first_batches(cfg, 1, 2) == first_batches(cfg, 0, 2) == first_batches(one_process, 0, 1)


def test_a_tp_degree_that_does_not_divide_the_world_is_one_line(tmp_path):
    from deepseek.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.strategy: tp 3 x pp 1 does not divide the world size 4"):
        data_shard(tp_config(tmp_path, "{name: fsdp, zero_stage: 3, tp: 3}"), DistInfo(rank=0, world_size=4))


def checkpointed_tp2(rank: int, run_dir: str, sharded: bool) -> None:
    """Under dp 1 x tp 2 with an EMA: 6 steps straight, and 3 steps then a resume to 6 in ``legs`` (checkpoints
    every 3 steps); rank 0 keeps the raw weights of step 3 in ``expected3.pt``."""
    from deepseek.train.fsdp import FSDP

    def trainer(seed: int, leg: str, steps: int) -> tuple[ds.Trainer, FSDP]:
        strategy = FSDP(zero_stage=3, tp=2)
        return make_trainer(tiny_gpt2(seed), Record(), strategy, max_steps=steps, run_dir=Path(run_dir) / leg,
                            checkpoint_every_steps=3, sharded_checkpoint=sharded, ema_decay=0.9), strategy  # fmt: skip

    trainer(0, "straight", 6)[0].fit(train_batches())
    first, strategy = trainer(0, "legs", 3)
    first.fit(train_batches())
    expected = strategy.model_state_dict(first.model)  # a collective: the full raw weights on rank 0
    if rank == 0:
        torch.save(expected, Path(run_dir) / "expected3.pt")
    trainer(1, "legs", 6)[0].fit(train_batches(), resume="auto")


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("sharded", [True, False], ids=["sharded", "full-state"])
def test_a_tp2_checkpoint_resumes_exactly_and_loads_at_tp1(tmp_path, sharded):
    from safetensors.torch import load_file

    from deepseek.runs import load_sharded_weights, load_trained_weights, verify

    run_ranks(checkpointed_tp2, 2, str(tmp_path), sharded, timeout_s=240)
    straight, legs = (load_file(tmp_path / leg / "final" / "model.safetensors") for leg in ("straight", "legs"))
    whole = tiny_gpt2().state_dict()
    assert {k: v.shape for k, v in straight.items()} == {k: v.shape for k, v in whole.items() if k in straight}
    assert straight.keys() == legs.keys() and all(straight[k].equal(legs[k]) for k in straight)  # bitwise

    ckpt = tmp_path / "legs" / "checkpoints" / "step-00000003"
    expected = torch.load(tmp_path / "expected3.pt", weights_only=True)
    meta = verify(ckpt)
    if sharded:
        assert meta["sharded"]["mesh"] == [1, 2] and not (ckpt / "model.safetensors").exists()
        plain_model = tiny_gpt2(seed=5)
        load_sharded_weights(plain_model, ckpt)  # one process, no group: the tp shards read into whole tensors
        saved = plain_model.state_dict()
    else:
        saved = load_file(ckpt / "model.safetensors")  # the whole unsharded model
    assert saved.keys() <= expected.keys() and all(saved[k].equal(expected[k]) for k in saved)  # tied: stored once

    # tp 2 -> tp 1: the step-3 checkpoint resumed on one process, weights and EMA included, then run to step 6
    record = Record()
    one = make_trainer(tiny_gpt2(seed=6), record, "single_device", max_steps=3, run_dir=tmp_path / "one", ema_decay=0.9)
    one.fit(train_batches(), resume=ckpt)
    assert one.global_step == 3 and all(one.model.state_dict()[k].equal(v) for k, v in expected.items())
    record = Record()  # a fresh Trainer: a second fit() of one would start a new average
    one = make_trainer(tiny_gpt2(seed=6), record, "single_device", max_steps=6, run_dir=tmp_path / "six", ema_decay=0.9)
    one.fit(train_batches(), resume=ckpt)
    assert len(record.losses) == 3
    with one.ema.swapped_in() as averaged:  # final/ holds the average: the tp 2 run's to 1e-5
        for name, tensor in averaged.state_dict().items():
            if name in straight:
                assert_close(tensor, straight[name], f"ema {name}")
    if sharded:  # eval / serving read the tp 2 average from its shards
        last = load_trained_weights(tiny_gpt2(seed=7), tmp_path / "legs" / "checkpoints" / "step-00000006")
        assert all(last.state_dict()[k].equal(t) for k, t in legs.items())


def meta_init_tp2(rank: int) -> dict[str, Any]:
    from deepseek.train.fsdp import FSDP
    from deepseek.train.meta_init import build_on_meta

    strategy = FSDP(zero_stage=3, tp=2, meta_init=True)
    record = Record()
    trainer = make_trainer(build_on_meta(tiny_gpt2), record, strategy, max_steps=3)
    trainer.fit(train_batches())
    local = {name: p.to_local().detach().flatten().tolist() for name, p in trainer.model.named_parameters()}
    tp_sharded = [name for name, p in trainer.model.named_parameters() if "tp" in p.device_mesh.mesh_dim_names
                  and not p.placements[p.device_mesh.mesh_dim_names.index("tp")].is_replicate()]  # fmt: skip
    return {"local": local, "tp_sharded": tp_sharded, "losses": record.losses}


@pytest.mark.distributed
def test_meta_init_under_tp_keeps_the_replicated_parameters_equal_on_the_tp_ranks():
    results = run_ranks(meta_init_tp2, 2, timeout_s=120)
    first, second = results[0], results[1]
    assert "pos.weight" not in first["tp_sharded"] and "blocks.0.attn.q.weight" in first["tp_sharded"]
    for name, values in first["local"].items():
        if name in first["tp_sharded"]:  # each rank's half drew its own values (the whole is not one half twice)
            assert values != second["local"][name] or not any(values), name
        else:  # replicated over tp (positions, norms): equal on both ranks, or they would silently drift apart
            assert values == second["local"][name], name
    assert first["losses"] == second["losses"] and first["losses"][-1] < first["losses"][0]


# dp 2 x tp 2, uneven on purpose: 8 rows a step, data-parallel index 0 reads 5 (micro-batches of 3 and 2),
# index 1 reads 3 (2 and 1); each micro-batch's loss is weighted by its share of the step's samples.
MICRO_ROWS = {0: [(0, 3), (3, 5)], 1: [(5, 7), (7, 8)]}


def windows_of(index: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    (x, y), micro = token_batches(1, rows=8)[0], MICRO_ROWS[index]
    return [(x[a:b], y[a:b]) for a, b in micro] * STEPS


def train_dp2_tp2(rank: int, run_dir: str) -> dict[str, Any]:
    """5 steps, then a fresh model (other weights) resumed from the sharded checkpoint of step 5 to STEPS."""
    from deepseek.train.fsdp import FSDP
    from deepseek.train.mesh_layout import data_parallel_index

    record = Record()
    index = data_parallel_index(rank, tp=2, dp=2)
    for seed, steps, resume in ((0, 5, None), (1, STEPS, "auto")):
        strategy = FSDP(zero_stage=2, tp=2)
        trainer = make_trainer(tiny_gpt2(seed), record, strategy, accumulate_grad_batches=2, max_steps=steps,
                               run_dir=Path(run_dir))  # fmt: skip
        trainer.fit(windows_of(index), [token_batches(2, seed=2)[index]], resume=resume)
    weights = strategy.model_state_dict(trainer.model)
    return {"index": index, "losses": record.losses, "grad_norms": record.grad_norms,
            "val": validation(trainer), "weights": plain(weights)}  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
def test_dp2_x_tp2_with_uneven_accumulation_matches_one_process(tmp_path):
    """dp 2 x tp 2, stopped after step 5 and resumed from its sharded checkpoint, equals one process throughout."""
    record = Record()
    one = make_trainer(tiny_gpt2(), record, "single_device")
    one.fit(token_batches(1, rows=8) * STEPS, token_batches(2, seed=2))
    results = run_ranks(train_dp2_tp2, 4, str(tmp_path / "ranks"), timeout_s=240)
    assert (tmp_path / "ranks" / "checkpoints" / "step-00000005" / "shards" / ".metadata").is_file()
    assert [results[r]["index"] for r in range(4)] == [0, 0, 1, 1]
    sizes = [b - a for index in (0, 1) for a, b in MICRO_ROWS[index]]  # 3, 2, 2, 1
    for first, second in ((0, 2), (1, 3), (0, 3)):  # one rank of each tp group
        micro = [results[first]["losses"], results[second]["losses"]]
        got = [sum(n * loss for n, loss in zip(sizes, (*micro[0][2 * s: 2 * s + 2], *micro[1][2 * s: 2 * s + 2]))) / 8
               for s in range(STEPS)]  # fmt: skip
        assert_close(got, record.losses, f"ranks {first}, {second} losses")
    for rank, got in results.items():
        assert_close(got["grad_norms"], record.grad_norms, f"rank {rank} grad norms")
        assert_close(got["val"], validation(one), f"rank {rank} val/loss, val/token_accuracy")
    for name, values in plain(one.model.state_dict()).items():
        assert_close(results[0]["weights"][name], values, name)


def test_the_mesh_layout_puts_tp_innermost_and_pp_outermost():
    from deepseek.train.mesh_layout import MESH_DIMS, MeshCoord, data_parallel_index, mesh_coord

    assert MESH_DIMS == ("pp", "dp_replicate", "dp_shard", "tp")
    # 16 ranks: pp 2 x dp_replicate 2 x dp_shard 2 x tp 2, row-major
    assert mesh_coord(11, pp=2, dp_replicate=2, dp_shard=2, tp=2) == MeshCoord(pp=1, dp_replicate=0, dp_shard=1, tp=1)
    assert [data_parallel_index(r, tp=2, dp=4) for r in range(16)] == [0, 0, 1, 1, 2, 2, 3, 3] * 2
    for rank in range(16):
        coord = mesh_coord(rank, pp=2, dp_replicate=2, dp_shard=2, tp=2)
        assert coord.data_parallel_index(dp_shard=2) == data_parallel_index(rank, tp=2, dp=4)
    with pytest.raises(ValueError, match=r"rank: 8; allowed: 0 to 7"):
        mesh_coord(8, dp_shard=4, tp=2)
    with pytest.raises(ValueError, match=r"tp: 0; allowed: a positive number"):
        data_parallel_index(0, tp=0, dp=1)


def test_fsdp_tp_arguments_and_mesh():
    from deepseek.train.fsdp import FSDP

    assert FSDP(tp=2).mesh_shape(8) == (4, 2) and FSDP(tp=2).mesh_dim_names() == ("dp_shard", "tp")
    assert FSDP(tp=2, dp_replicate=2).mesh_shape(8) == (2, 2, 2)
    assert FSDP(tp=2, dp_replicate=2).mesh_dim_names() == ("dp_replicate", "dp_shard", "tp")
    with pytest.raises(ValueError, match=r"fsdp dp_replicate 1 x dp_shard 2 x tp 2 does not make the world size 8"):
        FSDP(tp=2, dp_shard=2).mesh_shape(8)
    with pytest.raises(ValueError, match=r"fsdp zero_stage: 1 is not allowed; tp > 1 runs FSDP2 on the data dimension"):
        FSDP(zero_stage=1, tp=2)
    with pytest.raises(ValueError, match=r"fsdp tp: 0 is not allowed; use an integer >= 1"):
        FSDP(tp=0)
    with pytest.raises(ValueError, match=r"fsdp loss_parallel: True is not allowed; it needs tp > 1"):
        FSDP(loss_parallel=True)


def config_run(rank: int, cfg_dir: str, strategy: str, run_dir: str) -> None:
    cfg = tp_config(Path(cfg_dir), strategy, rank)
    ds.Trainer.from_config(cfg, overrides=None, run_dir=run_dir).fit()


@pytest.mark.slow
@pytest.mark.distributed
def test_a_tp2_config_trains_like_one_process(tmp_path):
    from safetensors.torch import load_file

    (tmp_path / "tp").mkdir()
    run_ranks(config_run, 2, str(tmp_path / "tp"), "{name: fsdp, zero_stage: 3, tp: 2}", str(tmp_path / "tp" / "run"),
              timeout_s=180)  # fmt: skip
    config_run(0, str(tmp_path), "{name: auto}", str(tmp_path / "one"))
    ours, theirs = (load_file(path / "final" / "model.safetensors") for path in (tmp_path / "tp" / "run", tmp_path / "one"))
    assert ours.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert_close(ours[name], tensor, name)
