"""ExecuTorch export (XNNPACK) verified in ExecuTorch's own runtime: an MLP (quick), LeNet-5 fp32 and INT8,
MiniLM's dict inputs. Tolerances: fp32 max |ExecuTorch - torch| <= 1e-4; INT8 argmax agreement >= 90%."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn as nn

import deepseek as ds

if importlib.util.find_spec("executorch") is None:  # find_spec: importing it here would slow every collection
    pytest.skip("needs executorch: pip install 'deepseek-framework[executorch]'", allow_module_level=True)

from deepseek.export.executorch import (  # noqa: E402
    ExecuTorchModule,
    executorch_variant,
    export_executorch,
    lower_executorch,
)


@pytest.mark.slow  # importing ExecuTorch's exporter alone takes ~15 s here
def test_mlp_is_delegated_to_xnnpack_and_matches_torch_at_any_batch(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    lowered = lower_executorch(model, torch.randn(2, 6), max_batch=4)
    assert lowered.subgraphs == 1 and lowered.delegated_nodes >= 3 and lowered.portable_ops == {}
    (tmp_path / "mlp.pte").write_bytes(lowered.buffer)
    module = ExecuTorchModule(tmp_path / "mlp.pte")
    assert module.capacity == 4
    for batch in (1, 3, 9):  # 9 > capacity: three chunks
        x = torch.randn(batch, 6)
        got = module(x)
        assert got.shape == (batch, 3) and (got - model(x)).abs().max() <= 1e-4


def test_bad_options_are_one_line_value_errors(tmp_path):
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="quantize='int4'.*None, 'int8'"):
        export_executorch(model, torch.randn(1, 2), tmp_path / "m.pte", quantize="int4")
    with pytest.raises(ValueError, match="needs calib"):
        export_executorch(model, torch.randn(1, 2), tmp_path / "m.pte", quantize="int8")


class Positions(nn.Module):
    """A transformer's input layer in small: ``{"input_ids", "attention_mask"}`` (N, L) -> (N, 3), with position
    ids ``arange(L) + 0`` indexing an embedding table."""

    def __init__(self) -> None:
        super().__init__()
        self.tok, self.pos, self.head = nn.Embedding(50, 8), nn.Embedding(16, 8), nn.Linear(8, 3)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        pos = torch.arange(ids.shape[1]) + 0
        hidden = self.head(self.tok(ids) + self.pos(pos)[None]) * mask[..., None]
        return hidden.sum(1) / mask.sum(1, keepdim=True)


@pytest.mark.slow
def test_int8_dict_inputs_keep_integer_position_ids_and_match(tmp_path):
    """prepare_pt2e turns the ``+ 0`` into a float constant; without the fix the export fails on float indices."""
    torch.manual_seed(0)
    model = Positions().eval()
    example = {"input_ids": torch.randint(0, 50, (4, 16)), "attention_mask": torch.ones(4, 16, dtype=torch.long)}
    example["attention_mask"][1, 10:] = 0
    module = executorch_variant(model, example, tmp_path, quantize="int8", calib=[example], max_batch=4)
    got = module({"attention_mask": example["attention_mask"], "input_ids": example["input_ids"]})  # by name
    assert torch.nn.functional.cosine_similarity(got, model(example), dim=-1).min() >= 0.99


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """LeNet-5 (untrained) exported once as fp32 and INT8 programs."""
    torch.manual_seed(0)
    model = ds.models.build("lenet5", num_classes=10).eval()
    workdir = tmp_path_factory.mktemp("lenet")
    calib = [torch.randn(16, 1, 28, 28) for _ in range(4)]
    fp32 = lower_executorch(model, torch.randn(4, 1, 28, 28))
    (workdir / "fp32.pte").write_bytes(fp32.buffer)
    int8 = export_executorch(model, (torch.randn(4, 1, 28, 28),), workdir / "int8.pte", quantize="int8", calib=calib)
    return model, fp32, ExecuTorchModule(workdir / "fp32.pte"), ExecuTorchModule(int8)


@pytest.mark.slow
def test_lenet_fp32_runs_delegated_in_executorch_within_1e4(lenet):
    model, lowered, fp32, _ = lenet
    # XNNPACK took the convolutions and linears; only the flatten (a view) runs in portable kernels
    assert lowered.subgraphs >= 1 and lowered.delegated_nodes >= 8
    assert set(lowered.portable_ops) <= {"view_copy"}
    for batch in (1, 7, 40):  # 40 > the planned 32 rows: chunked
        x = torch.randn(batch, 1, 28, 28)
        assert (fp32(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.slow
def test_lenet_int8_is_smaller_and_agrees_on_argmax(lenet, tmp_path):
    model, _, fp32, int8 = lenet
    assert int8.size_bytes() < 0.35 * fp32.size_bytes()
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    agree = (int8(x).argmax(1) == fp32(x).argmax(1)).float().mean().item()
    assert agree >= 0.9, agree
    copy = int8.save(tmp_path / "copy.pte")
    assert copy.stat().st_size == int8.size_bytes()


@pytest.mark.slow
def test_static_batch_program_pads_its_last_chunk(tmp_path):
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh()).eval()
    path = export_executorch(model, torch.randn(3, 5), tmp_path / "s.pte", dynamic_batch=False)
    module = ExecuTorchModule(path)
    x = torch.randn(7, 5)  # chunks of 3, 3 and 1 (padded to 3)
    assert module.capacity == 3 and (module(x) - model(x)).abs().max() <= 1e-4 and module.static_batch


@pytest.mark.slow
def test_minilm_dict_inputs_convert_and_match(tmp_path):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = ds.models.build("minilm", num_classes=4).eval()
    ids, mask = torch.randint(1000, 20000, (2, 16)), torch.ones(2, 16, dtype=torch.long)
    mask[1, 9:] = 0
    example = {"input_ids": ids, "attention_mask": mask}
    module = executorch_variant(model, example, tmp_path)
    got, expected = module(example), model(example)
    assert got.shape == expected.shape
    assert torch.nn.functional.cosine_similarity(got, expected, dim=-1).min() >= 0.9999
