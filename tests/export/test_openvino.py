"""OpenVINO IR export verified in OpenVINO's CPU runtime: LeNet-5 fp32 (1e-4 of torch, two batch sizes), a
dict-input transformer (cosine >= 0.9999), NNCF INT8 (argmax agreement, smaller on disk), reloading saved files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import deepseek as ds

pytest.importorskip("openvino")
from deepseek.export.openvino import (  # noqa: E402  (after the skip: the module needs openvino to run)
    OpenVINOModule,
    export_openvino,
    is_transformer,
    openvino_variant,
    quantize_openvino,
    verify_openvino,
)


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return ds.models.build("lenet5", num_classes=10).eval()


@pytest.fixture(scope="module")
def lenet_ir(lenet, tmp_path_factory):
    return export_openvino(lenet, (torch.randn(4, 1, 28, 28),), tmp_path_factory.mktemp("ov") / "lenet.xml")


def test_lenet_fp32_matches_torch_on_two_batch_sizes(lenet, lenet_ir):
    for batch in (1, 13):
        assert verify_openvino(lenet_ir, lenet, (torch.randn(batch, 1, 28, 28),)) < 1e-4
    module = OpenVINOModule(lenet_ir)
    assert module.input_names == ["input"]
    # fp32 inference (not the plugin's bf16) and unpinned threads, unless the caller asks otherwise
    assert module.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "f32"
    assert module.compiled.get_property("ENABLE_CPU_PINNING") is False
    pinned = OpenVINOModule(lenet_ir, config={"ENABLE_CPU_PINNING": True})
    assert pinned.compiled.get_property("ENABLE_CPU_PINNING") is True
    x = torch.randn(6, 1, 28, 28)
    assert torch.allclose(module({"input": x}), module(x)) and module(x).dtype == torch.float32
    assert module.size_bytes() == lenet_ir.stat().st_size + lenet_ir.with_suffix(".bin").stat().st_size


def test_saved_ir_reloads_in_a_fresh_module(lenet, lenet_ir, tmp_path):
    saved = OpenVINOModule(lenet_ir).save(tmp_path / "copy" / "m.xml")
    assert sorted(p.name for p in saved.parent.iterdir()) == ["m.bin", "m.xml"]
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (OpenVINOModule(saved)(x) - lenet(x)).abs().max() < 1e-4
    saved.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"\.bin"):
        OpenVINOModule(saved)


def test_importing_deepseek_export_leaves_openvino_and_nncf_unimported():
    code = "import sys, deepseek, deepseek.export; print(sorted({'openvino', 'nncf'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bad_paths_and_options_are_refused(lenet, tmp_path):
    x = (torch.randn(2, 1, 28, 28),)
    with pytest.raises(ValueError, match=r"ends in \.xml"):
        export_openvino(lenet, x, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="quantize='int4'"):
        openvino_variant(lenet, x[0], tmp_path, quantize="int4")
    with pytest.raises(ValueError, match="calib"):
        quantize_openvino(lenet, x, [], tmp_path / "q.xml")


class Tagger(nn.Module):
    """A MiniLM-shaped dict-input transformer: ``{"input_ids", "attention_mask"}`` (N, L) -> mean-pooled
    embeddings (N, 32), like MiniLM's ``Embedder``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 32)
        self.enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(32, 4, 64, batch_first=True), 2)

    def forward(self, inputs: dict) -> torch.Tensor:
        mask = inputs["attention_mask"]
        hidden = self.enc(self.emb(inputs["input_ids"]), src_key_padding_mask=mask == 0)
        weights = mask.unsqueeze(-1).float()
        return (hidden * weights).sum(1) / weights.sum(1)


def _tokens(batch: int, padded_row: int | None = None) -> dict[str, torch.Tensor]:
    mask = torch.ones(batch, 12, dtype=torch.long)
    if padded_row is not None:
        mask[padded_row, 5:] = 0
    return {"input_ids": torch.randint(0, 100, (batch, 12)), "attention_mask": mask}


@pytest.mark.slow  # converts a transformer twice and calibrates NNCF: ~15 s on 2 cores
def test_dict_input_transformer_fp32_and_int8(tmp_path):
    torch.manual_seed(0)
    model = Tagger().eval()
    assert is_transformer(model) and not is_transformer(ds.models.build("lenet5", num_classes=10))
    fp32 = openvino_variant(model, _tokens(4), tmp_path)
    assert fp32.input_names == ["input_ids", "attention_mask"]
    other = _tokens(7, padded_row=2)
    with torch.no_grad():
        expected = model(other)
    assert F.cosine_similarity(fp32(other), expected).min() >= 0.9999
    int8 = openvino_variant(model, _tokens(4), tmp_path, quantize="int8", calib=[_tokens(8, i) for i in range(4)])
    assert F.cosine_similarity(int8(other), expected).min() >= 0.99
    assert "FakeQuantize" in int8.path.read_text()  # a model this small is not smaller on disk: scales per channel


def test_lenet_int8_agrees_with_fp32_and_is_smaller(lenet, lenet_ir, tmp_path):
    calib = [torch.randn(16, 1, 28, 28) for _ in range(4)]
    path = quantize_openvino(lenet, (calib[0],), calib, tmp_path / "lenet.int8.xml")
    int8, fp32 = OpenVINOModule(path), OpenVINOModule(lenet_ir)
    x = torch.randn(64, 1, 28, 28)
    assert (int8(x).argmax(1) == fp32(x).argmax(1)).float().mean() >= 0.9
    assert not torch.equal(int8(x), fp32(x))  # quantized for real, not the fp32 graph again
    assert int8.size_bytes() < 0.5 * fp32.size_bytes()
    xml = path.read_text()
    assert "FakeQuantize" in xml or "FakeConvert" in xml or 'element_type="i8"' in xml


def test_a_child_exiting_after_dataloader_workers_and_openvino_does_not_crash_the_parent(tmp_path):
    # torch's DataLoader SIGCHLD handler and OpenVINO in one process: the next child to exit crashed the parent with
    # SIGSEGV (in either order of the two). Run in a fresh interpreter so that the handler is really installed.
    code = textwrap.dedent("""
        import gc, subprocess, sys, torch
        from torch.utils.data import DataLoader, TensorDataset
        import deepseek as ds
        from deepseek.export.openvino import OpenVINOModule, export_openvino
        for _ in range(3):
            for _ in DataLoader(TensorDataset(torch.randn(40, 3)), batch_size=4, num_workers=2):
                pass
        model, x = ds.models.build("lenet5", num_classes=10).eval(), torch.randn(4, 1, 28, 28)
        path = export_openvino(model, (x,), sys.argv[1])
        first, second = OpenVINOModule(path), OpenVINOModule(path)
        first(x), second(x)
        del first, second
        gc.collect()
        print(subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True, text=True).stdout.strip())
    """)
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.xml")], capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("child"), (done.returncode, done.stderr[-2000:])
