"""ds.jit: in-place module compile (state dict unchanged), eager fallback, autotune, document 000's pattern."""

from __future__ import annotations

import copy
import io
import time
import warnings

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

import deepseek as ds
from deepseek import jit_compile
from deepseek.data.datasets import digits


def _failing_backend(gm, example_inputs):
    raise RuntimeError("no C++ compiler here")


def _slow_backend(gm, example_inputs):
    def run(*args):
        time.sleep(0.1)  # far above any eager step, even on a loaded machine
        return gm.forward(*args)

    return run


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Dropout(0.3), nn.ReLU(), nn.Linear(16, 3))


def test_module_is_compiled_in_place_with_its_state_dict_unchanged():
    model, reference = _net(), _net()
    keys = list(model.state_dict())
    assert ds.jit(model, backend="eager") is model
    assert list(model.state_dict()) == keys
    x = torch.randn(4, 8)
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    assert torch.allclose(out, reference(x)) and ds.jit_report(model)["choice"] == "compiled"
    ds.unjit(model)
    assert "forward" not in model.__dict__


def test_decorator_forms():
    @ds.jit(backend="eager")
    def affine(a, b):
        return a @ b + 1

    @ds.jit
    def double(a):
        return a * 2

    assert torch.equal(affine(torch.ones(2, 2), torch.ones(2, 2)), torch.full((2, 2), 3.0))
    assert double.__name__ == "double" and isinstance(double, jit_compile.JitFunction)


def test_a_failing_compiler_falls_back_to_eager_with_one_warning():
    f = ds.jit(lambda a: a * 2, backend=_failing_backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert torch.equal(f(torch.ones(2)), torch.full((2,), 2.0))
        assert torch.equal(f(torch.ones(3)), torch.full((3,), 2.0))
    assert len(caught) == 1 and "running eagerly" in str(caught[0].message)
    assert ds.jit_report(f) == {"choice": "eager", "error": "RuntimeError: no C++ compiler here"}
    strict = ds.jit(lambda a: a * 2, backend=_failing_backend, fallback=False)
    with pytest.raises(Exception, match="no C\\+\\+ compiler here"):
        strict(torch.ones(2))


def test_the_callers_own_error_is_raised_not_hidden():
    f = ds.jit(lambda a: a @ torch.ones(3, 3), backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning either
        with pytest.raises(RuntimeError, match="shape|size"):
            f(torch.ones(2, 2))


def test_autotune_keeps_eager_when_compiled_is_slower_and_leaves_training_undisturbed():
    model, reference = _net(), _net()
    ds.jit(model, backend=_slow_backend, autotune=True, repeats=3)
    x = torch.randn(8, 8)
    torch.manual_seed(3)
    out = model(x)
    out.sum().backward()
    torch.manual_seed(3)
    ref = reference(x)
    ref.sum().backward()
    report = ds.jit_report(model)
    assert report["choice"] == "eager" and report["measured"] == "forward+backward" and report["speedup"] < 1
    # the timing runs left no trace: same dropout draw, BatchNorm statistics and gradients
    assert torch.equal(out, ref) and torch.equal(model[1].running_mean, reference[1].running_mean)
    assert torch.equal(model[0].weight.grad, reference[0].weight.grad)


def test_autotune_keeps_compiled_when_it_measures_faster(monkeypatch):
    timings = iter([2e-3, 1e-3])  # eager, then compiled
    monkeypatch.setattr(jit_compile, "_median_time", lambda *a, **k: next(timings))
    model = ds.jit(_net().eval(), backend="eager", autotune=True)
    with torch.no_grad():
        model(torch.randn(2, 8))
    report = ds.jit_report(model)
    assert report["choice"] == "compiled" and report["speedup"] == 2.0 and report["measured"] == "forward"


def test_copies_and_pickles_compile_afresh_for_their_own_module():
    model = ds.jit(_net(), backend="eager")
    twin = copy.deepcopy(model)
    assert twin.forward.module is twin and twin.forward.choice is None
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert loaded.forward.module is loaded and loaded.eval()(torch.randn(2, 8)).shape == (2, 3)


def test_document_000_pattern_is_refused_with_advice():
    with pytest.raises(jit_compile.JitError, match="Create modules outside the compiled function"):

        @ds.jit
        def transformer_layer(x, attn_mask):
            qkv = ds.nn.Linear(768 * 3)(x)
            attn = ds.multi_head_attention(qkv[:, :256], qkv[:, 256:512], qkv[:, 512:], attn_mask)
            return ds.nn.LayerNorm(ds.nn.Linear(768)(attn))


def test_trainer_compile_auto_matches_an_eager_run_and_returns_the_model_unchanged():
    splits = digits(flatten=True)

    def fit(compile):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        trainer = ds.Trainer(model, compile=compile, max_epochs=2, progress="off")
        return model, trainer.fit(DataLoader(splits.train, batch_size=64), DataLoader(splits.val, batch_size=256))

    _, eager = fit(False)
    model, tuned = fit("auto")
    # inductor needs a C++ compiler: without one the run falls back to eager and says why
    assert tuned["compile"]["choice"] in ("compiled", "eager")
    assert abs(tuned["val"]["loss"] - eager["val"]["loss"]) < 1e-4  # autotuning left the run undisturbed
    assert "forward" not in model.__dict__ and "compile" not in eager
    with pytest.raises(ValueError, match="compile"):
        ds.Trainer(model, compile="sometimes")
