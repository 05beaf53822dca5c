"""Format versions of checkpoints (``meta.json``'s ``format_version``) and run directories (``RUN/format.json``).

``tests/fixtures/run_v1`` was written by deepseek before versions existed (format version 0, see
tests/fixtures/README.md): it must still resume and evaluate. A version newer than this release reads is
refused with one line (exit 2 in the CLI), never skipped like a damaged checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from deepseek import runs
from deepseek.train.checkpoint import CheckpointManager, claim_run_dir
from tests.conftest import REPO, run_cli

FIXTURE = REPO / "tests" / "fixtures" / "run_v1"
NEWER = runs.FORMAT_VERSION + 1


@pytest.fixture
def old_run(tmp_path: Path) -> Path:
    """A copy of the version-0 fixture run (never write into the fixture itself)."""
    return Path(shutil.copytree(FIXTURE, tmp_path / "run_v1"))


def _meta(ckpt: Path) -> dict:
    return json.loads((ckpt / runs.META_FILE).read_text())


def _plant_version(ckpt: Path, version: object) -> None:
    """Rewrite a checkpoint's meta.json with ``format_version`` (meta.json lists the other files' hashes, not its own)."""
    meta = _meta(ckpt)
    meta["format_version"] = version
    (ckpt / runs.META_FILE).write_text(json.dumps(meta))


def test_checkpoints_and_run_dirs_are_written_with_the_current_format_version(tmp_path: Path) -> None:
    claim_run_dir(tmp_path, resume=False, overwrite=False, is_main=True)
    assert json.loads((tmp_path / runs.FORMAT_FILE).read_text()) == {"format_version": runs.FORMAT_VERSION}
    path = CheckpointManager(tmp_path / "checkpoints").save(1, nn.Linear(2, 2), {"epoch": 0})
    assert _meta(path)["format_version"] == runs.FORMAT_VERSION == 2  # 2: checkpoints may be sharded
    assert runs.verify(path)["format_version"] == runs.FORMAT_VERSION == runs.check_run_format(tmp_path)


def test_the_version_0_fixture_reads_as_version_0(old_run: Path) -> None:
    assert not (old_run / runs.FORMAT_FILE).exists()
    assert runs.check_run_format(old_run) == 0
    newest = runs.resolve_checkpoint(old_run)
    assert newest.name == "step-00000004" and "format_version" not in _meta(newest)
    cfg, model = runs.read_run(old_run)
    assert cfg.model.name == "mlp" and model(torch.zeros(1, 64)).shape == (1, 10)


def test_a_newer_checkpoint_is_refused_not_skipped(old_run: Path) -> None:
    newest = old_run / "checkpoints" / "step-00000004"
    _plant_version(newest, NEWER)
    want = f"checkpoint {newest} has format version {NEWER}; this deepseek reads up to {runs.FORMAT_VERSION}: upgrade deepseek"
    with pytest.raises(runs.FormatVersionError) as err:
        runs.latest_valid_checkpoint(old_run / "checkpoints")  # not the older step-3 with a warning
    assert str(err.value) == want
    with pytest.raises(runs.FormatVersionError):
        runs.find_trained_weights(old_run / "checkpoints" / "step-00000003")  # anywhere in the run: the run is newer
    with pytest.raises(runs.FormatVersionError):
        runs.read_run(old_run)


@pytest.mark.parametrize("version", ["1", -1, True, 1.0])
def test_a_malformed_version_is_damage_and_skipped(old_run: Path, version: object) -> None:
    _plant_version(old_run / "checkpoints" / "step-00000004", version)
    with pytest.warns(UserWarning, match="format_version"):
        assert runs.latest_valid_checkpoint(old_run / "checkpoints").name == "step-00000003"


def test_a_newer_run_directory_is_refused(old_run: Path) -> None:
    (old_run / runs.FORMAT_FILE).write_text(json.dumps({"format_version": NEWER}))
    want = f"run directory {old_run} has format version {NEWER}; this deepseek reads up to {runs.FORMAT_VERSION}"
    for read in (runs.read_run, runs.resolve_checkpoint, lambda p: runs.find_trained_weights(p / "final")):
        with pytest.raises(runs.FormatVersionError, match=want):
            read(old_run)
    for resume in (True, False):
        with pytest.raises(runs.FormatVersionError, match=want):
            claim_run_dir(old_run, resume=resume, overwrite=False, is_main=True)
    (old_run / runs.FORMAT_FILE).write_text("{not json")
    with pytest.raises(runs.CheckpointError, match=runs.FORMAT_FILE):
        runs.check_run_format(old_run)


@pytest.mark.slow
def test_the_fixture_evaluates_and_resumes_with_the_cli(old_run: Path) -> None:
    r = run_cli("eval", str(old_run / "config.yaml"), "--checkpoint", str(old_run), "--json")
    assert r.returncode == 0, r.stderr
    # its newest checkpoint (step 4) holds the weights the run validated last
    assert json.loads(r.stdout) == {
        f"val/{k}": v for k, v in json.loads((old_run / "summary.json").read_text())["val"].items()
    }
    r = run_cli(
        "train", str(old_run / "config.yaml"), "train.max_steps=6", "--run-dir", str(old_run), "--resume", "auto"
    )
    assert r.returncode == 0, r.stderr
    assert json.loads((old_run / "summary.json").read_text())["steps"] == 6
    ckpts = [p.name for p in runs.checkpoint_dirs(old_run / "checkpoints")]
    assert ckpts == ["step-00000005", "step-00000006"]  # continued from step 4, keep_last 2
    assert _meta(old_run / "checkpoints" / "step-00000006")["format_version"] == runs.FORMAT_VERSION
    assert runs.check_run_format(old_run) == runs.FORMAT_VERSION  # resumed by this release: now its version


@pytest.mark.slow
def test_the_cli_refuses_a_newer_version_with_one_line(old_run: Path) -> None:
    newest = old_run / "checkpoints" / "step-00000004"
    _plant_version(newest, NEWER)
    want = f"error: checkpoint {newest} has format version {NEWER}; this deepseek reads up to {runs.FORMAT_VERSION}: upgrade deepseek"
    before = sorted(p.name for p in old_run.iterdir())
    r = run_cli(
        "train", str(old_run / "config.yaml"), "train.max_steps=6", "--run-dir", str(old_run), "--resume", "auto"
    )
    assert (r.returncode, r.stderr.strip()) == (2, want)
    assert sorted(p.name for p in old_run.iterdir()) == before  # refused before writing anything (no config.v2.yaml)
    r = run_cli("eval", str(old_run / "config.yaml"), "--checkpoint", str(old_run))
    assert (r.returncode, r.stderr.strip()) == (2, want)


def test_a_gpt2_checkpoint_of_the_packed_attention_layout_is_refused_for_resume_in_one_line(tmp_path):
    """gpt2's attention stored q, k and v packed in one `attn.qkv` until issue 16 split them: such a checkpoint's
    weights still load (the model's load hook splits them), but its optimizer state was per packed parameter, so
    resuming it is refused with a line that says so, not a list of missing and unexpected keys."""
    import torch.nn.functional as F
    from safetensors.torch import load_file, save_file

    import deepseek as ds

    def trainer(steps: int) -> ds.Trainer:
        torch.manual_seed(0)
        model = ds.models.build("gpt2", vocab_size=32, max_positions=8, dim=16, depth=1, heads=2)
        loss = lambda logits, y: F.cross_entropy(logits.flatten(0, 1), y.flatten())  # noqa: E731
        return ds.Trainer(model, torch.optim.AdamW(model.parameters()), loss_fn=loss, max_steps=steps, max_epochs=None,
                          metrics=(), run_dir=tmp_path / "run", tensorboard=False, progress="off",
                          checkpoint_every_steps=2)  # fmt: skip

    ids = torch.randint(0, 32, (2, 9), generator=torch.Generator().manual_seed(0))
    trainer(2).fit([(ids[:, :-1], ids[:, 1:])] * 4)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    weights = load_file(ckpt / runs.MODEL_FILE)
    for kind in ("weight", "bias"):  # back to the packed layout an older release wrote
        parts = [weights.pop(f"blocks.0.attn.{p}.{kind}") for p in "qkv"]
        weights[f"blocks.0.attn.qkv.{kind}"] = torch.cat(parts)
    save_file(weights, ckpt / runs.MODEL_FILE)
    meta = _meta(ckpt)
    meta["files"][runs.MODEL_FILE] = {"size": (ckpt / runs.MODEL_FILE).stat().st_size,
                                      "sha256": runs.sha256_of(ckpt / runs.MODEL_FILE)}  # fmt: skip
    (ckpt / runs.META_FILE).write_text(json.dumps(meta))
    model = ds.models.build("gpt2", vocab_size=32, max_positions=8, dim=16, depth=1, heads=2)
    runs.load_trained_weights(model, ckpt)  # the weights load into today's layout
    with pytest.raises(runs.CheckpointMismatchError, match="older layout of this model: its weights load"):
        trainer(4).fit([(ids[:, :-1], ids[:, 1:])] * 4, resume="auto")
