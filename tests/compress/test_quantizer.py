"""Quantizer levels on a trained digits CNN/MLP: output close to fp32, size shrinks; calibration methods."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

pytest.importorskip("torchao")

import deepseek as ds  # noqa: E402
from deepseek.compress import Int4Linear, Quantizer, clip_range, size_bytes  # noqa: E402
from deepseek.compress.quantizer import openvino_installed  # noqa: E402
from deepseek.data.datasets import digits  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    """An MLP on digits, trained for a few epochs, with its validation data."""
    splits = digits(flatten=True)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    ds.Trainer(model, max_epochs=6, progress="off").fit(DataLoader(splits.train, batch_size=64, shuffle=True))
    x = torch.stack([s[0] for s in splits.val])
    y = torch.tensor([int(s[1]) for s in splits.val])
    return model.eval(), DataLoader(splits.train, batch_size=64), x, y


def _accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _rel_error(model, reference, x) -> float:
    with torch.no_grad():
        ref = reference(x)
        return float((model(x).float() - ref).norm() / ref.norm())


@pytest.mark.slow  # quantizes to every level: seconds; the fast lane keeps to its 2-minute budget
@pytest.mark.parametrize(
    ("kwargs", "max_error", "max_size"),
    [
        ({"bit_width": 16}, 1e-3, 0.55),  # fp16: half the bytes
        ({"bit_width": 16, "dtype": "bf16"}, 1e-2, 0.55),
        ({"bit_width": 8, "backend": "pt2e", "method": "minmax"}, 0.03, 0.30),  # static, calibrated
        ({"bit_width": 8, "backend": "torchao"}, 0.01, 0.30),  # weight-only
        ({"bit_width": 4, "group_size": 32}, 0.1, 0.20),  # packed two per byte + fp16 scales
    ],
)
def test_levels_stay_close_to_fp32_and_shrink(trained, kwargs, max_error, max_size):
    model, calib, x, y = trained
    quantizer = Quantizer(model, calib_data=calib, **kwargs)
    small = quantizer.compress()
    assert _rel_error(small, model, x) < max_error
    assert _accuracy(small, x, y) >= _accuracy(model, x, y) - 0.02
    assert size_bytes(small) < max_size * size_bytes(model)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the original is untouched


def test_document_003_call_quantizes_dynamically_and_says_so(trained, capsys):
    model, _, x, y = trained
    small = Quantizer(model, method="KL", bit_width=8, symmetric=False).compress()
    assert "quantized dynamically" in capsys.readouterr().err
    assert _accuracy(small, x, y) >= _accuracy(model, x, y) - 0.02


@pytest.mark.slow  # about 5 s: every backend of the auto report
def test_document_001_config_and_auto_backend_report(trained):
    model, calib, x, _ = trained
    quantizer = Quantizer(model, act_quant="per_tensor", wt_quant="per_tensor", calib_data=calib, method="percentile")
    small = quantizer.compress()
    report = quantizer.report
    expected = {"pt2e static (percentile)", "torchao int8 weight-only", "onnxruntime dynamic"}
    assert set(report["candidates"]) == expected | ({"openvino nncf"} if openvino_installed() else set())
    assert report["backend"] in report["candidates"]
    chosen = report["candidates"][report["backend"]]
    assert chosen["rel_error"] <= 0.05 and chosen["speedup"] > 0
    assert _rel_error(small, model, x) < 0.05
    with pytest.raises(ValueError, match="act_quant"):
        Quantizer(model, act_quant="per_channel")
    with pytest.raises(ValueError, match="method must be one of"):
        Quantizer(model, method="entropy")


def test_int4_packs_two_weights_per_byte():
    linear = nn.Linear(70, 5)
    q = Int4Linear(linear, group_size=32)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (5, 48)  # 70 inputs padded to 96, halved
    assert (q.weight() - linear.weight).abs().max() <= (q.scale.float().max() / 2) + 1e-3


def test_kl_and_percentile_clip_heavy_tails_tighter_than_minmax():
    rng = np.random.default_rng(0)
    values = np.concatenate([np.abs(rng.standard_normal(50_000)), [60.0, 90.0]])  # ReLU-like with outliers
    hist, _ = np.histogram(values, bins=2048, range=(0, values.max()))
    _, top_minmax = clip_range(hist, 0.0, float(values.max()), "minmax")
    _, top_kl = clip_range(hist, 0.0, float(values.max()), "kl")
    _, top_pct = clip_range(hist, 0.0, float(values.max()), "percentile", percentile=99.9)
    assert top_minmax == 90.0 and top_kl < 20.0 and 3.0 < top_pct < 4.0
    lo, hi = clip_range(np.ones(10), -1.0, 3.0, "kl")  # two-sided: searched symmetrically, within the range
    assert -1.0 <= lo < 0 < hi <= 3.0


@pytest.mark.slow  # QAT training: seconds; the fast lane keeps to its 2-minute budget
def test_qat_trains_in_the_trainer_and_converts_to_int8(trained):
    from deepseek.compress import convert, prepare_qat

    model, calib, x, y = trained
    qat = prepare_qat(model, x[:8])
    summary = ds.Trainer(qat, max_epochs=1, progress="off").fit(calib, DataLoader(list(zip(x, y)), batch_size=128))
    assert summary["steps"] > 0 and summary["val"]["accuracy"] > 0.8
    small = convert(qat)
    assert _accuracy(small, x, y) >= _accuracy(model, x, y) - 0.03
    assert size_bytes(small) < 0.3 * size_bytes(model)


@pytest.mark.parametrize("bits", [2, 1])
def test_ternary_and_binary_weights_pack_four_per_byte(trained, bits):
    from deepseek.compress.lowbit import TernaryLinear

    model, _, x, y = trained
    small = Quantizer(model, bit_width=bits).compress()
    layer = small[0]
    assert isinstance(layer, TernaryLinear) and layer.packed.shape == (256, 16)  # 64 inputs / 4
    values = set(torch.unique(layer.weight() / layer.alpha.float().unsqueeze(1)).tolist())
    assert values <= ({-1.0, 1.0} if bits == 1 else {-1.0, 0.0, 1.0})
    assert size_bytes(small) < 0.2 * size_bytes(model)
    assert _accuracy(small, x, y) > 0.2  # experimental: far from fp32 without QAT, but not chance


def test_onnxruntime_backend_returns_a_callable_in_memory_model(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    model, calib, x, y = trained
    small = Quantizer(model, calib_data=calib, backend="onnxruntime").compress()
    assert _rel_error(small, model, x) < 0.05 and _accuracy(small, x, y) >= _accuracy(model, x, y) - 0.02
    assert size_bytes(small) < 0.35 * size_bytes(model)
    path = small.save(tmp_path / "m.onnx")
    assert path.stat().st_size == size_bytes(small)


def test_openvino_backend_quantizes_with_nncf_and_saves_the_ir(trained, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    model, calib, x, y = trained
    small = Quantizer(model, calib_data=calib, backend="openvino").compress()
    with torch.no_grad():
        agree = float((small(x).argmax(1) == model(x).argmax(1)).float().mean())
    assert agree >= 0.97 and _accuracy(small, x, y) >= _accuracy(model, x, y) - 0.02  # INT8: argmax agreement
    assert size_bytes(small) < 0.35 * size_bytes(model)
    path = small.save(tmp_path / "m.xml")
    assert path.with_suffix(".bin").exists() and size_bytes(small) == small.size_bytes()
    with pytest.raises(ValueError, match="backend='openvino' exports the model: pass calib_data or example_inputs"):
        Quantizer(model, backend="openvino").compress()


def test_unknown_backend_is_a_one_line_error_listing_the_allowed_ones():
    with pytest.raises(
        ValueError, match=r"^backend must be one of auto, pt2e, torchao, onnxruntime, openvino; got 'tvm'$"
    ):
        Quantizer(nn.Linear(2, 2), backend="tvm")


@pytest.mark.parametrize("kwargs", [{"bit_width": 16}, {"bit_width": 4}, {"bit_width": 8, "backend": "torchao"}])
def test_quantizer_leaves_the_callers_model_as_it_was(kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.1), nn.Linear(64, 10)).train()
    model[1].eval()  # a mix of flags: each module's own flag must come back, not one for all
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calib = DataLoader(torch.randn(16, 64), batch_size=8)
    Quantizer(model, calib_data=calib, **kwargs).compress()
    assert [m.training for m in model.modules()] == [True, True, False, True]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
