"""LiteRT (TFLite): LiteRTModule runs .tflite files in the ai-edge-litert interpreter; export through litert-torch.

The interpreter tests build their tiny .tflite files here with the TFLite schema that ai-edge-litert ships
(``schema_py_generated`` + flatbuffers), so they run without the converter. The converter tests need
``litert-torch``, which does not install beside the project's pins (see the skip reason).
Tolerances: fp32 max |LiteRT - torch| <= 1e-4 on CNN logits; INT8 argmax agreement and cosine >= 0.99.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("ai_edge_litert", reason="the LiteRT interpreter: pip install 'deepseek-framework[litert]'")

import flatbuffers  # noqa: E402  (ai-edge-litert depends on it)
from ai_edge_litert import schema_py_generated as tfl  # noqa: E402

from deepseek.export.litert import LiteRTModule, export_litert, litert_variant, quantize_litert  # noqa: E402

CONVERTER_SKIP = (
    "litert-torch is not installed: the releases for torch 2.13 (0.10.0; 0.9.4 with ai-edge-litert<2.3) require "
    "litert-converter==0.5.* (0.4.*) -> xdsl==0.28.0 -> typing-extensions<4.13, "
    "which pydantic 2.14 (typing-extensions>=4.16) excludes; pip would downgrade to pydantic 2.11.10 and "
    "typing_extensions 4.12.2, so install it in a separate environment"
)


# --- tiny .tflite files written with the TFLite schema (no converter needed) ---------------------------------------
def _tensor(name: str, shape: tuple[int, ...], kind: int, buffer: int, scale: float | None = None, zero: int = 0):
    t = tfl.TensorT()
    t.name, t.shape, t.type, t.buffer = name, list(shape), kind, buffer
    if scale is not None:
        t.quantization = tfl.QuantizationParametersT()
        t.quantization.scale, t.quantization.zeroPoint = [scale], [zero]
    return t


def _buffer(data: np.ndarray | None = None):
    b = tfl.BufferT()
    if data is not None:
        b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
    return b


def _op(code_index: int, inputs: list[int], outputs: list[int], options: int = 0, value=None):
    op = tfl.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code_index, inputs, outputs
    op.builtinOptionsType, op.builtinOptions = options, value
    return op


def _model(tensors, buffers, ops, builtins: list[int], inputs: list[int], outputs: list[int]) -> bytes:
    """One subgraph with a ``serving_default`` signature whose inputs are args_0.. (as litert-torch names them)."""
    codes = []
    for builtin in builtins:
        code = tfl.OperatorCodeT()
        code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
        codes.append(code)
    graph = tfl.SubGraphT()
    graph.tensors, graph.operators, graph.inputs, graph.outputs = tensors, ops, inputs, outputs
    signature = tfl.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs, signature.outputs = [], []
    for prefix, indices, target in (("args", inputs, signature.inputs), ("output", outputs, signature.outputs)):
        for i, index in enumerate(indices):
            entry = tfl.TensorMapT()
            entry.name, entry.tensorIndex = f"{prefix}_{i}", index
            target.append(entry)
    model = tfl.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, codes, [graph], buffers
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _linear_file(path, weight: np.ndarray, bias: np.ndarray, batch: int):
    """y (batch, out) = x (batch, in) @ weight.T + bias: one FULLY_CONNECTED op, fp32, fixed batch."""
    f32 = tfl.TensorType.FLOAT32
    tensors = [_tensor("x", (batch, weight.shape[1]), f32, 0), _tensor("w", weight.shape, f32, 1),
               _tensor("b", bias.shape, f32, 2), _tensor("y", (batch, weight.shape[0]), f32, 0)]  # fmt: skip
    fc = _op(0, [0, 1, 2], [3], tfl.BuiltinOptions.FullyConnectedOptions, tfl.FullyConnectedOptionsT())
    buffers = [_buffer(), _buffer(weight.astype(np.float32)), _buffer(bias.astype(np.float32))]
    path.write_bytes(_model(tensors, buffers, [fc], [tfl.BuiltinOperator.FULLY_CONNECTED], [0], [3]))
    return path


def _int8_io_file(path, batch: int, width: int, scale_in: float, scale_out: float):
    """INT8 input (scale_in, zero point 3) -> DEQUANTIZE -> QUANTIZE -> INT8 output (scale_out, zero point -2)."""
    kinds = tfl.TensorType
    tensors = [_tensor("x", (batch, width), kinds.INT8, 0, scale_in, 3), _tensor("f", (batch, width), kinds.FLOAT32, 0),
               _tensor("y", (batch, width), kinds.INT8, 0, scale_out, -2)]  # fmt: skip
    ops = [_op(0, [0], [1]), _op(1, [1], [2])]
    builtins = [tfl.BuiltinOperator.DEQUANTIZE, tfl.BuiltinOperator.QUANTIZE]
    path.write_bytes(_model(tensors, [_buffer()], ops, builtins, [0], [2]))
    return path


def test_any_batch_runs_in_chunks_of_the_files_fixed_batch(tmp_path):
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)
    module = LiteRTModule(_linear_file(tmp_path / "fc.tflite", weight, bias, batch=4))
    assert module.batch == 4
    for rows in (1, 4, 7, 9):  # fewer, exactly, and more than the file's batch (a padded last chunk)
        x = torch.randn(rows, 3)
        expected = x @ torch.from_numpy(weight).T + torch.from_numpy(bias)
        got = module(x)
        assert got.shape == (rows, 2) and got.dtype == torch.float32
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(module({"x": x}), module(x))  # a dict of one tensor works too


def test_int8_inputs_and_outputs_use_the_files_scales(tmp_path):
    module = LiteRTModule(_int8_io_file(tmp_path / "q.tflite", batch=4, width=5, scale_in=0.05, scale_out=0.1))
    x = torch.rand(6, 5) * 4 - 2  # inside both ranges: int8 * 0.05 covers [-6.55, 6.2]
    got = module(x)
    assert got.dtype == torch.float32
    assert (got - x).abs().max() <= 0.05 / 2 + 0.1 / 2 + 1e-6  # half a step of each rounding
    assert (got - x).abs().max() > 0  # it really went through INT8


def test_size_save_pickle_and_a_wrong_input_count(tmp_path):
    module = LiteRTModule(_linear_file(tmp_path / "fc.tflite", np.ones((2, 3)), np.zeros(2), batch=2))
    assert module.size_bytes() == (tmp_path / "fc.tflite").stat().st_size
    copy = module.save(tmp_path / "copy.tflite")
    assert copy.read_bytes() == (tmp_path / "fc.tflite").read_bytes()
    x = torch.randn(3, 3)
    assert torch.equal(pickle.loads(pickle.dumps(module))(x), module(x))
    with pytest.raises(ValueError, match="takes 1 inputs, got 2"):
        module(x, x)


def test_quantize_names_the_allowed_values(tmp_path):
    with pytest.raises(ValueError, match=r"quantize='int4' is not supported; choose one of \[None, 'int8'\]"):
        export_litert(torch.nn.Linear(3, 2), (torch.randn(2, 3),), tmp_path / "m.tflite", quantize="int4")


# --- the converter (litert-torch) -------------------------------------------------------------------------------------
def test_dynamic_int8_of_a_tflite_file_needs_no_converter(tmp_path):
    pytest.importorskip("ai_edge_quantizer", reason="LiteRT INT8: pip install ai-edge-quantizer==0.10.*")
    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((64, 128)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    fp32 = LiteRTModule(_linear_file(tmp_path / "fc.tflite", weight, bias, batch=4))
    int8 = LiteRTModule(quantize_litert(fp32.path, tmp_path / "fc.int8.tflite"))
    assert int8.size_bytes() < fp32.size_bytes() / 2  # 64x128 fp32 weights -> int8
    x = torch.randn(10, 128)
    cosine = torch.nn.functional.cosine_similarity(int8(x), fp32(x), dim=-1)
    assert cosine.min() >= 0.99 and not torch.equal(int8(x), fp32(x))
    with pytest.raises(ValueError, match="recipe='int4' is not supported"):
        quantize_litert(fp32.path, tmp_path / "x.tflite", recipe="int4")


# --- the converter (litert-torch) -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    """(LeNet-5 untrained, its fp32 .tflite exported at batch 4)."""
    pytest.importorskip("litert_torch", reason=CONVERTER_SKIP)
    import deepseek as ds

    torch.manual_seed(0)
    model = ds.models.build("lenet5", num_classes=10).eval()
    return model, export_litert(model, (torch.randn(4, 1, 28, 28),), tmp_path_factory.mktemp("lenet") / "m.tflite")


def test_lenet_fp32_matches_torch_at_any_batch(lenet):
    model, path = lenet
    x = torch.randn(7, 1, 28, 28)
    with torch.no_grad():
        assert (LiteRTModule(path)(x) - model(x)).abs().max() <= 1e-4


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_lenet_int8_is_smaller_and_agrees(lenet, tmp_path, dynamic):
    model, fp32 = lenet
    calib = [torch.randn(6, 1, 28, 28) for _ in range(4)]  # batches of another size than the file's 4
    path = export_litert(model, (torch.randn(4, 1, 28, 28),), tmp_path / "m.tflite", quantize="int8", calib=calib,
                         dynamic_activations=dynamic)  # fmt: skip
    int8 = LiteRTModule(path)
    assert int8.size_bytes() < fp32.stat().st_size / 2
    x = torch.randn(32, 1, 28, 28)
    with torch.no_grad():
        expected, got = model(x), int8(x)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.9
    assert torch.nn.functional.cosine_similarity(got, expected, dim=-1).min() >= 0.99
    assert not torch.equal(got, expected)


def test_dict_inputs_keep_their_order(tmp_path):
    pytest.importorskip("litert_torch", reason=CONVERTER_SKIP)

    class Masked(torch.nn.Module):
        def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return inputs["values"] * inputs["mask"] - inputs["mask"]

    example = {"values": torch.randn(2, 5), "mask": (torch.rand(2, 5) > 0.5).float()}
    module = litert_variant(Masked(), example, tmp_path)
    other = {"mask": (torch.rand(3, 5) > 0.5).float(), "values": torch.randn(3, 5)}  # another order, another batch
    torch.testing.assert_close(module(other), Masked()(other))
