"""Pipeline stages per model family: run one after another they equal the whole model, their parameter names
are the whole model's, and pruning leaves a model that holds only its stages' parameters."""

from __future__ import annotations

import copy

import pytest
import torch

import deepseek as ds
from deepseek.models.language import Bert
from deepseek.models.parallelize.stages import (
    Stage,
    build_stages,
    family_of,
    first_stage_args,
    prune_to_stages,
    stage_bounds,
    tied_names,
)


def _gpt2() -> torch.nn.Module:
    torch.manual_seed(0)
    return ds.models.build("gpt2", vocab_size=32, max_positions=8, dim=16, depth=4, heads=2)


def _vit() -> torch.nn.Module:
    from deepseek.models.vision import ViT

    torch.manual_seed(0)
    return ViT(image_size=8, patch=4, dim=16, depth=4, heads=2, num_classes=5, in_channels=3)


def _bert(head: str = "classification") -> torch.nn.Module:
    torch.manual_seed(0)
    return Bert(vocab_size=32, dim=16, depth=4, heads=2, hidden=32, max_positions=8, head=head, num_classes=3, dropout=0.0)


CASES = {
    "gpt2": (_gpt2, lambda: torch.randint(0, 32, (3, 8), generator=torch.Generator().manual_seed(1))),
    "vit": (_vit, lambda: torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))),
    "bert-classification": (_bert, lambda: torch.randint(0, 32, (3, 8), generator=torch.Generator().manual_seed(1))),
    "bert-mlm-mask": (
        lambda: _bert("mlm"),
        lambda: {"input_ids": torch.randint(0, 32, (3, 8), generator=torch.Generator().manual_seed(1)),
                 "attention_mask": torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])},
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("num_stages, split", [(2, None), (3, None), (2, [1, 3])])
def test_stages_in_turn_equal_the_whole_model_under_its_names(case, num_stages, split):
    build, inputs = CASES[case]
    whole, x = build().eval(), inputs()
    expected = whole(x)
    names = dict(whole.named_parameters())
    stages = [Stage(whole, s, num_stages, b) for s, b in enumerate(stage_bounds(4, num_stages, split))]
    carried = first_stage_args(x)
    for stage in stages:
        out = stage(*carried)
        carried = out if isinstance(out, tuple) else (out,)
    torch.testing.assert_close(carried[0], expected, atol=0, rtol=0)
    for stage in stages:  # the whole model's names and tensors, each stage its own blocks
        own = dict(stage.named_parameters())
        assert own and all(own[n] is names[n] for n in own if n in names), stage.index
        assert {n.split(".")[1] for n in own if n.startswith("blocks.")} == {str(i) for i in range(stage.a, stage.b)}
    assert set().union(*(dict(s.named_parameters()) for s in stages)) >= set(names)


def test_pruning_keeps_only_the_stages_parameters_and_unties_the_head():
    model = _gpt2()
    assert tied_names(model) == [("tok.weight", "head.weight")]
    first = copy.deepcopy(model)
    build_stages(first, [0], 2)
    assert set(dict(first.named_parameters())) == {n for n, _ in _gpt2().named_parameters() if n.startswith(("tok.", "pos.", "blocks.0.", "blocks.1."))}
    last = copy.deepcopy(model)
    (stage,) = build_stages(last, [1], 2)
    held = dict(last.named_parameters())
    assert "head.weight" in held and "tok.weight" not in held and "blocks.0.ln1.weight" not in held
    assert held["head.weight"] is dict(stage.named_parameters())["head.weight"]
    both = copy.deepcopy(model)  # interleaved: a rank holding stages 1 and 3 of 4
    stages = build_stages(both, [1, 3], 4)
    assert [(s.a, s.b) for s in stages] == [(1, 2), (3, 4)]
    assert {n.split(".")[1] for n in dict(both.named_parameters()) if n.startswith("blocks.")} == {"1", "3"}
    prune_to_stages(both, stages)  # idempotent


def test_bad_splits_and_models_are_refused_in_one_line():
    assert stage_bounds(5, 2) == [(0, 3), (3, 5)]
    with pytest.raises(ValueError, match=r"parallel\.pp_split: \[2, 1\] is not allowed; give 2 block counts >= 1 that add up to the model's 4 blocks"):
        stage_bounds(4, 2, [2, 1])
    with pytest.raises(ValueError, match=r"parallel\.pp: 5 stages need at least 5 blocks; the model has 4"):
        stage_bounds(4, 5)
    with pytest.raises(ValueError, match=r"model ResNet has no pipeline stages \(parallel\.pp > 1 needs one of: Bert, GPT2, ViT\)"):
        family_of(ds.models.build("resnet18", num_classes=2))
    with pytest.raises(ValueError, match=r"token_type_ids are not supported"):
        first_stage_args({"input_ids": torch.zeros(1, 2), "token_type_ids": torch.zeros(1, 2)})
