"""The search YAML: document 000's form as written, the richer forms, sizes, and one-line errors."""

from __future__ import annotations

import pytest
import yaml

from deepseek.errors import ConfigError
from deepseek.search.nas.space import load_space, parse_size, parse_space

DOC000 = """\
search_space:
  - layer_type: [Conv, Transformer]
    channels: [64, 128, 256]
    activation: [ReLU, Swish]
constraints: {max_params: 10M, target_device: "v100"}
optimizer: {algorithm: "reinforce", sample_size: 100}
"""


def test_document_000_yaml_as_written(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(DOC000)
    space = load_space(path)
    assert space.kind == "stack" and space.algorithm == "reinforce" and space.sample_size == 100
    assert space.choices() == {
        "layers.0.layer_type": ["Conv", "Transformer"],
        "layers.0.channels": [64, 128, 256],
        "layers.0.activation": ["ReLU", "Swish"],
    }
    assert space.constraints.max_params == 10_000_000 and space.constraints.target_device == "v100"
    blocks = space.block_list({"layers.0.layer_type": "Transformer", "layers.0.channels": 128,
                               "layers.0.activation": "Swish"})  # fmt: skip
    assert [(b["layer_type"], b["channels"], b["activation"]) for b in blocks] == [("Transformer", 128, "Swish")]


@pytest.mark.parametrize("text,value", [("10M", 1e7), ("2.5k", 2500), ("1G", 1e9), ("1B", 1e9), ("300", 300),
                                        (300, 300), ("1_000", 1000), ("15.7T", 15.7e12), ("1e6", 1e6)])  # fmt: skip
def test_sizes(text, value):
    assert parse_size("constraints.max_params", text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["10X", "-1", "M", "", "10 MB", True, 0, "10m"])
def test_bad_sizes_name_the_key_and_the_forms(text):
    with pytest.raises(ConfigError) as err:
        parse_size("constraints.max_params", text)
    assert str(err.value).startswith("constraints.max_params: ") and "10M, 2.5k, 1G" in str(err.value)


def test_richer_stack_form_with_fixed_values_and_skip():
    space = parse_space(
        yaml.safe_load("""
search_space:
  - {layer_type: Conv, width: [16, 32], kernel_size: [3, 5], depth: [1, 2], activation: gelu}
  - {layer_type: [Transformer, Skip], channels: 32, heads: [2, 4], depth: 1}
optimizer: {algorithm: evolution, sample_size: 20, population: 8, tournament: 2, seed: 3}
""")
    )
    assert space.choices()["layers.0.channels"] == [16, 32]
    assert space.choices()["layers.0.activation"] == ["GELU"]  # any case, stored as allowed
    assert space.options == {"population": 8, "tournament": 2} and space.seed == 3
    cand = {k: v[-1] for k, v in space.choices().items()}
    assert [b["layer_type"] for b in space.block_list(cand)] == ["Conv"]  # Skip leaves the position out


def test_model_family_form():
    space = parse_space({"model": "simple_cnn", "search_space": {"width": [8, 16], "dropout": [0.0, 0.1]},
                         "optimizer": {"algorithm": "tpe", "sample_size": 4}})  # fmt: skip
    assert space.kind == "model" and space.choices() == {"width": [8, 16], "dropout": [0.0, 0.1]}


@pytest.mark.parametrize(
    "raw,expected",
    [
        (
            {"search_space": [{"layer_type": "Conv", "channels": 8, "colour": 1}]},
            "search_space[0].colour: unknown key; allowed: layer_type, channels, depth",
        ),
        (
            {"search_space": [{"layer_type": ["Conv", "LSTM"], "channels": 8}]},
            "search_space[0].layer_type: 'LSTM'; allowed: Conv, Transformer, Skip",
        ),
        (
            {"search_space": [{"layer_type": "Conv", "channels": 8, "activation": "Softplus"}]},
            "search_space[0].activation: 'Softplus'; allowed: ReLU, Swish",
        ),
        (
            {"search_space": [{"layer_type": "Conv", "channels": [8, -8]}]},
            "search_space[0].channels: -8; allowed: a positive",
        ),
        (
            {"search_space": [{"layer_type": "Transformer", "channels": [64, 96], "heads": [5]}]},
            "search_space[0].heads: 5 does not divide channels 64",
        ),
        ({"search_space": [{"channels": 8}]}, "search_space[0]: 'layer_type' is missing"),
        (
            {"search_space": [{"layer_type": "Conv", "channels": 8}], "optimiser": {}},
            "optimiser: unknown key; allowed:",
        ),
        (
            {"search_space": [{"layer_type": "Conv", "channels": 8}], "optimizer": {"algorithm": "bayes"}},
            "optimizer.algorithm: 'bayes'; allowed: reinforce, evolution, random, tpe",
        ),
        (
            {"search_space": [{"layer_type": "Conv", "channels": 8}], "optimizer": {"algorithm": "evolution", "lr": 1}},
            "optimizer: evolution option 'lr': unknown; allowed: population, tournament",
        ),
        (
            {"search_space": [{"layer_type": "Conv", "channels": 8}], "constraints": {"max_param": "1M"}},
            "constraints.max_param: unknown key; allowed: max_params",
        ),
        (
            {
                "search_space": [{"layer_type": "Conv", "channels": 8}],
                "constraints": {"latency": "approximate_by_flops"},
            },
            "constraints.latency: approximate_by_flops needs constraints.device_flops",
        ),
        ({"model": "no_such_net", "search_space": {"width": [1, 2]}}, "model: unknown model 'no_such_net'"),
        ({"search_space": {"width": [1, 2]}}, "search_space: a mapping needs 'model'"),
    ],
)
def test_errors_are_one_line_naming_key_value_and_allowed(raw, expected):
    with pytest.raises(ConfigError) as err:
        parse_space(raw)
    assert len(err.value.problems) == 1 and "\n" not in str(err.value)
    assert expected in str(err.value)


def test_user_builder_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "nas_test_user_nets.py").write_text(
        "import torch.nn as nn\n\ndef build(width: int = 4, depth: int = 1):\n"
        "    return nn.Sequential(nn.Flatten(), *[nn.Linear(64 if i == 0 else width, width) for i in range(depth)])\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    space = parse_space({"model": "nas_test_user_nets:build", "search_space": {"width": [4, 8], "depth": [1, 2]}})
    assert space.kind == "model" and space.model == "nas_test_user_nets:build"
