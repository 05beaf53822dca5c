"""Sharded checkpoints (``torch.distributed.checkpoint``) on one process: written atomically, verified,
resumed exactly, refused where they cannot be honoured, and read back by eval and serving in one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import deepseek as ds
from deepseek.runs import find_trained_weights, latest_valid_checkpoint, load_trained_weights, verify
from deepseek.train.checkpoint import CheckpointError

SEQ, VOCAB = 8, 64
SHARDS_DIR = "shards"  # where a sharded checkpoint keeps its DCP files


def tiny_gpt2(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return ds.models.build("gpt2", vocab_size=VOCAB, max_positions=SEQ, dim=16, depth=2, heads=2)


def token_batches(n: int, rows: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` (inputs (rows, SEQ), targets (rows, SEQ)) next-token batches."""
    ids = torch.randint(0, VOCAB, (n, rows, SEQ + 1), generator=torch.Generator().manual_seed(1))
    return [(b[:, :-1].contiguous(), b[:, 1:].contiguous()) for b in ids]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_trainer(model: torch.nn.Module, run_dir: Path, max_steps: int, **kwargs) -> ds.Trainer:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return ds.Trainer(
        model, optimizer, loss_fn=lm_loss, max_steps=max_steps, max_epochs=None, device="cpu", metrics=(),
        scheduler=lambda opt, total: torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.1, total_iters=10),
        run_dir=run_dir, tensorboard=False, progress="off", checkpoint_every_steps=3,
        checkpoint_every_minutes=None, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("ema_decay", [None, 0.9], ids=["raw", "ema"])
def test_a_sharded_checkpoint_is_written_atomically_and_resumes_exactly(tmp_path, ema_decay):
    batches = token_batches(6)
    straight = make_trainer(tiny_gpt2(), tmp_path / "straight", 6, sharded_checkpoint=True, ema_decay=ema_decay)
    straight.fit(batches)
    make_trainer(tiny_gpt2(), tmp_path / "legs", 3, sharded_checkpoint=True, ema_decay=ema_decay).fit(batches)
    resumed = make_trainer(tiny_gpt2(seed=1), tmp_path / "legs", 6, sharded_checkpoint=True, ema_decay=ema_decay)
    resumed.fit(batches, resume="auto")

    ckpt = tmp_path / "legs" / "checkpoints" / "step-00000003"
    meta = verify(ckpt)
    assert meta["sharded"] == {"world_size": 1, "strategy": "singledevice", "zero_stage": None, "mesh": None}
    assert not (ckpt / "model.safetensors").exists() and (ckpt / SHARDS_DIR / ".metadata").is_file()
    assert {name for name in meta["files"]} >= {"state.pt", f"{SHARDS_DIR}/.metadata"}
    assert not list((tmp_path / "legs" / "checkpoints").glob(".tmp-*"))
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    a, b = (load_file(tmp_path / run / "final" / "model.safetensors") for run in ("straight", "legs"))
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)  # bitwise: the resume was exact
    if ema_decay is not None:  # the average is written as shards too, not gathered into state.pt
        assert set(torch.load(ckpt / "state.pt", weights_only=True)["ema"]) == {"n_averaged", "in_shards"}
        last = tmp_path / "legs" / "checkpoints" / "step-00000006"  # eval / serving read the average from its shards
        ema = load_trained_weights(tiny_gpt2(seed=7), last).state_dict()
        assert all(ema[k].equal(t) for k, t in b.items())  # final/ is the same average, at the same step


def test_eval_and_serving_read_a_sharded_checkpoint_in_one_process(tmp_path):
    model = tiny_gpt2()
    make_trainer(model, tmp_path / "run", 3, sharded_checkpoint=True).fit(token_batches(3))
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000003"
    assert find_trained_weights(tmp_path / "run").path == ckpt
    loaded = load_trained_weights(tiny_gpt2(seed=5), tmp_path / "run")
    final = load_trained_weights(tiny_gpt2(seed=6), tmp_path / "run" / "final")  # one consolidated file
    assert all(t.equal(final.state_dict()[name]) for name, t in loaded.state_dict().items())
    assert not loaded.state_dict()["tok.weight"].equal(tiny_gpt2(seed=5).state_dict()["tok.weight"])


def test_a_damaged_shard_is_skipped_and_a_partial_save_is_never_picked(tmp_path):
    trainer = make_trainer(tiny_gpt2(), tmp_path / "run", 6, sharded_checkpoint=True)
    trainer.fit(token_batches(6))
    ckpts = tmp_path / "run" / "checkpoints"
    shard = next((ckpts / "step-00000006" / SHARDS_DIR).glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one byte flipped, the size unchanged
    shard.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"step-00000006: .*distcp does not match its SHA-256"):
        assert latest_valid_checkpoint(ckpts) == ckpts / "step-00000003"
    (ckpts / "step-00000003").rename(ckpts / ".tmp-step-00000009-1")  # what a kill mid-save leaves
    with pytest.warns(UserWarning, match="step-00000006"):
        assert latest_valid_checkpoint(ckpts) is None
    meta = json.loads((ckpts / "step-00000006" / "meta.json").read_text())
    (ckpts / "step-00000006" / "meta.json").write_text(json.dumps({**meta, "sharded": True}))
    with pytest.raises(CheckpointError, match=r"'sharded' is True, expected \{world_size: int"):
        verify(ckpts / "step-00000006")


@pytest.mark.parametrize("setting", ["yes", 2, None])
def test_a_bad_sharded_setting_is_one_line_naming_it(setting):
    with pytest.raises(ValueError, match=rf"checkpoint\.sharded: {setting!r} is not allowed; use auto, true or false"):
        make_trainer(tiny_gpt2(), Path("unused"), 1, sharded_checkpoint=setting)


def test_the_config_key_reaches_the_trainer(tmp_path):
    from deepseek.config import ConfigError, load_config
    from deepseek.train.assemble import assemble

    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("model: {name: mlp}\ndata: {name: digits}\n")
    cfg = load_config(cfg_file, ["checkpoint.sharded=true"])
    assert cfg.checkpoint.sharded is True and load_config(cfg_file, []).checkpoint.sharded == "auto"
    assert assemble(cfg, None).make_trainer(ds.Trainer).sharded_checkpoint is True
    plain = assemble(load_config(cfg_file, ["checkpoint.async_save=true"]), None).make_trainer(ds.Trainer)
    assert (plain.sharded_checkpoint, plain.async_checkpoint) == ("auto", True)
    with pytest.raises(ConfigError, match=r"checkpoint\.sharded"):
        load_config(cfg_file, ["checkpoint.sharded=sometimes"])


def test_a_resumed_run_may_change_its_layout_and_checkpoint_kind(tmp_path):
    import yaml

    from deepseek.cli.run_dir import check_resume_config

    saved = {"model": {"name": "gpt2"}, "parallel": None, "checkpoint": {"every_steps": 3}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    new = {"model": {"name": "gpt2"}, "parallel": {"dp_shard": 2, "zero_stage": 3},
           "checkpoint": {"every_steps": 3, "sharded": True, "async_save": True}}  # fmt: skip
    _, changes = check_resume_config([tmp_path], new)
    assert set(changes) == {"parallel.dp_shard", "parallel.zero_stage", "checkpoint.sharded", "checkpoint.async_save"}
