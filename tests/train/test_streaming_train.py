"""Training from streaming shards (issue 17): an empty last batch on one rank, resume at another world size
with real processes, and ``deepseek train`` on token shards."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from tests.gloo_ranks import run_ranks

TIMEOUT_S = 120


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (5,), generator=g)


# rank -> its batches: the last global step has 1 sample, all on rank 0; rank 1's last batch is empty
# (the structure of a batch with a 0-length batch axis), as a StreamingLoader gives at an uneven epoch end.
BATCHES = {0: [slice(0, 2), slice(4, 5)], 1: [slice(2, 4), slice(5, 5)]}


def _empty_batch_worker(rank: int) -> tuple[int, int, list]:
    """Two steps through the Trainer under DDP; returns (steps, nan/inf steps, weights as plain lists)."""
    from deepseek.train import Trainer

    model, (x, y) = _tiny_model(), _data()
    batches = [(x[s], y[s]) for s in BATCHES[rank]]
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), max_epochs=1, device="cpu",
                      strategy="ddp", val_every_epochs=None, progress="off", tensorboard=False, sinks=[],
                      on_nonfinite="stop", checkpoint_every_minutes=None)  # fmt: skip
    trainer.fit(batches)
    return trainer.global_step, trainer.nonfinite_steps, [p.detach().tolist() for p in model.parameters()]


@pytest.mark.slow
@pytest.mark.distributed
def test_a_rank_with_an_empty_last_batch_steps_with_the_others_and_adds_nothing():
    by_rank = run_ranks(_empty_batch_worker, 2, timeout_s=TIMEOUT_S)
    model, (x, y) = _tiny_model(), _data()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in ([0, 1, 2, 3], [4]):  # one process with each global step's samples: the reference
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[step]), y[step]).backward()
        opt.step()
    for rank, (steps, nonfinite, params) in by_rank.items():
        assert (steps, nonfinite) == (2, 0), f"rank {rank}"
        for got, want in zip(params, model.parameters(), strict=True):
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), want.detach(), atol=1e-9, rtol=0)


class _StreamingStandIn:
    """A loader with the StreamingLoader's protocol (``"format": "streaming"`` in its state): batches of
    ``(x, y)``, and the state the Trainer hands it on resume recorded in ``loaded``."""

    def __init__(self, batches: list) -> None:
        self.batches, self.epoch, self.loaded, self.start = batches, 0, None, 0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self.batches[start:])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"format": "streaming", "epoch": self.epoch, "world_size": 2, "anchor_position": 0,
                "anchor_batches": 0, "batch_size": 1}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.loaded, self.start = dict(state), int(state["batches"])


def _quiet_trainer(model: nn.Module, run_dir, max_steps: int, strategy: str):
    from deepseek.train import Trainer

    return Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_steps=max_steps, device="cpu",
                   strategy=strategy, run_dir=run_dir, val_every_epochs=None, progress="off", tensorboard=False,
                   sinks=[], checkpoint_every_minutes=None, checkpoint_every_steps=2)  # fmt: skip


def _write_two_steps(rank: int, run_dir: str) -> int:
    model, (x, y) = _tiny_model(), _data()
    trainer = _quiet_trainer(model, run_dir, 2, "ddp")
    trainer.fit(_StreamingStandIn([(x[i : i + 1], y[i : i + 1]) for i in range(4)]))
    return trainer.global_step


@pytest.mark.slow
@pytest.mark.distributed
def test_a_streaming_loader_keeps_its_position_at_another_world_size(tmp_path, recwarn):
    run_dir = tmp_path / "run"
    assert run_ranks(_write_two_steps, 2, str(run_dir), timeout_s=TIMEOUT_S) == {0: 2, 1: 2}
    model, (x, y) = _tiny_model(), _data()
    loader = _StreamingStandIn([(x[i : i + 1], y[i : i + 1]) for i in range(4)])
    trainer = _quiet_trainer(model, tmp_path / "again", 3, "single_device")
    trainer.fit(loader, resume=run_dir)
    assert loader.loaded is not None and loader.loaded["format"] == "streaming"
    assert (loader.loaded["batches"], loader.loaded["world_size"], trainer.global_step) == (2, 2, 3)
    assert not [w for w in recwarn if "data position" in str(w.message)]


# ----------------------------------------------------------------- resume at another world size, real shards
SAMPLES, BATCH, STEPS_BEFORE = 21, 2, 3  # 3 steps of 2 x 2 at world 2 leave 9: at world 4 ranks 1-3 end empty


class _IdRecorder(nn.Module):
    """A linear model that records the sample ids (input feature 0) it trains on."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear, self.seen = nn.Linear(4, 3), []

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 4) -> logits (batch, 3)
        if self.training:
            self.seen += [int(i) for i in x[:, 0].tolist()]
        return self.linear(x)


def _write_id_shards(out_dir) -> None:
    from torch.utils.data import TensorDataset

    from deepseek.data.shards.writer import write_shards

    ids = torch.arange(SAMPLES, dtype=torch.float32)
    x = torch.stack([ids, torch.ones(SAMPLES), ids % 5, -ids], dim=1)  # (SAMPLES, 4): feature 0 is the id
    write_shards(TensorDataset(x, torch.arange(SAMPLES) % 3), out_dir, shard_size=200)  # a few samples a shard


def _train_ids(rank: int, world: int, shards: str, run_dir: str, resume: str | None, workers: int) -> list[int]:
    """Train on the shards at ``world`` ranks (3 steps, or the rest of the epoch when resuming); the ids seen."""
    from deepseek.data import DistributedDataset
    from deepseek.train import Trainer

    model = _IdRecorder()
    loader = DistributedDataset(shards, BATCH, num_workers=workers, seed=7, rank=rank, world_size=world)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), max_epochs=1,
                      max_steps=None if resume else STEPS_BEFORE, device="cpu", strategy="ddp" if world > 1 else "auto",
                      run_dir=run_dir, val_every_epochs=None, progress="off", tensorboard=False, sinks=[],
                      checkpoint_every_minutes=None)  # fmt: skip
    trainer.fit(loader, resume=resume)
    return model.seen


@pytest.mark.slow
@pytest.mark.distributed
def test_an_epoch_begun_on_two_ranks_ends_on_one_and_on_four_each_sample_once(tmp_path):
    shards, first = tmp_path / "shards", tmp_path / "at-2"
    _write_id_shards(shards)
    before = run_ranks(_train_ids, 2, 2, str(shards), str(first), None, 0, timeout_s=TIMEOUT_S)
    seen_before = before[0] + before[1]
    assert len(seen_before) == STEPS_BEFORE * BATCH * 2
    for world, workers in ((1, 2), (4, 0)):
        after = run_ranks(_train_ids, world, world, str(shards), str(tmp_path / f"at-{world}"), str(first), workers,
                          timeout_s=TIMEOUT_S)  # fmt: skip
        seen = seen_before + [i for rank in sorted(after) for i in after[rank]]
        assert sorted(seen) == list(range(SAMPLES)), f"world 2 -> {world}: {sorted(seen)}"


# ------------------------------------------------------------------------- the gpt2 config on token shards
TINY_GPT2 = ["model.dim=32", "model.depth=1", "model.heads=2", "train.max_steps=2", "scheduler.warmup_steps=1",
             "data.batch_size=4", "data.val_batch_size=128", "logging.tensorboard=false"]  # fmt: skip


@pytest.mark.slow
def test_the_gpt2_config_trains_from_token_shards_written_by_data_shard(tmp_path, capsys):
    from deepseek.cli.main import main
    from tests.conftest import REPO

    config, shards, run_dir = str(REPO / "configs" / "gpt2_chatterbot.yaml"), tmp_path / "lm", tmp_path / "run"
    assert main(["data", "shard", config, "--out", str(shards)]) == 0
    assert main(["train", config, f"data.shards={shards}", *TINY_GPT2, "--run-dir", str(run_dir),
                 "--progress", "off"]) == 0, capsys.readouterr().err  # fmt: skip
    state = torch.load(run_dir / "checkpoints" / "step-00000002" / "state.pt", weights_only=True)
    train_windows = (shards / "train" / "index.json").read_text()
    assert state["data"]["format"] == "streaming" and f'"samples": {state["data"]["samples"]},' in train_windows
    assert state["global_step"] == 2


# ------------------------------------------------------- build_loaders: shard-time preprocess, per-sample seeds
def test_shard_time_preprocess_is_not_applied_again_and_transforms_match_in_memory(tmp_path):
    import yaml

    from deepseek.cli.main import main
    from deepseek.config import load_config
    from deepseek.data.shards.stream import StreamingLoader
    from deepseek.train.assemble import build_loaders
    from deepseek.train.distributed import DistInfo
    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "configs" / "quickstart.yaml").read_text())
    raw["data"].update(preprocess=[{"type": "Normalize", "params": {"mean": [0.5], "std": [0.25]}}], shuffle=False,
                       transforms=[{"type": "GaussianNoise", "params": {"sigma": 0.1}}], batch_size=16)  # fmt: skip
    (tmp_path / "digits.yaml").write_text(yaml.safe_dump(raw))
    assert main(["data", "shard", str(tmp_path / "digits.yaml"), "--out", str(tmp_path / "shards")]) == 0
    in_memory = build_loaders(load_config(tmp_path / "digits.yaml"), DistInfo())
    streamed = build_loaders(load_config(tmp_path / "digits.yaml", [f"data.shards={tmp_path / 'shards'}"]), DistInfo())
    assert isinstance(streamed[0], StreamingLoader) and isinstance(streamed[1], StreamingLoader)
    for memory, stream in zip(in_memory, streamed):  # train (augmented, seeded per sample), then val (not)
        for epoch in (0, 1):
            memory.set_epoch(epoch)
            stream.set_epoch(epoch)
            (mx, my), (sx, sy) = next(iter(memory)), next(iter(stream))
            torch.testing.assert_close(sx, mx, atol=0, rtol=0)
            assert torch.equal(sy, my)


def test_distributed_dataset_of_a_shard_directory_is_a_streaming_loader(tmp_path):
    from torch.utils.data import TensorDataset

    from deepseek.data import DistributedDataset
    from deepseek.data.shards.stream import StreamingLoader

    _write_id_shards(tmp_path / "shards")
    loader = DistributedDataset(str(tmp_path / "shards"), 4, num_workers=0, seed=3, streaming={"shuffle_window": 2})
    assert isinstance(loader, StreamingLoader) and len(loader) == -(-SAMPLES // 4)
    assert sorted(int(i) for x, _ in loader for i in x[:, 0]) == list(range(SAMPLES))
    with pytest.raises(ValueError, match=r"streaming options \['prefetch'\] apply to a shard set only"):
        DistributedDataset(TensorDataset(torch.zeros(4, 1)), 2, num_workers=0, streaming={"prefetch": 1})


def test_an_empty_validation_batch_adds_nothing_to_the_loss_or_the_metrics():
    """A rank's share of a streamed validation split may end in an empty batch: no nan, nothing counted."""
    from deepseek.train import Trainer

    model, (x, y) = _tiny_model(), _data()
    trainer = Trainer(model, device="cpu", progress="off", metrics=["accuracy"])
    assert trainer.validate([(x, y), (x[:0], y[:0])]) == trainer.validate([(x, y)])


def test_a_run_from_preprocessed_text_shards_is_served_with_text_inputs(tmp_path, capsys):
    """The shards of a text config hold token ids (data.preprocess applied at shard time); the run's
    input_spec.json still says what serving takes: text, as for the in-memory run."""
    import json

    from deepseek.cli.main import main
    from tests.conftest import REPO

    config, shards, run_dir = str(REPO / "configs" / "text_classifier.yaml"), tmp_path / "topics", tmp_path / "run"
    assert main(["data", "shard", config, "--out", str(shards)]) == 0
    assert main(["train", config, f"data.shards={shards}", "train.max_steps=1", "train.max_epochs=null", "scheduler=null",
                 "--run-dir", str(run_dir), "--progress", "off"]) == 0, capsys.readouterr().err  # fmt: skip
    spec = json.loads((run_dir / "input_spec.json").read_text())
    assert spec["text"] is True and spec["inputs"]["input_ids"]["shape"] == [None], spec
