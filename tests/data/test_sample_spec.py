"""The input spec a run saves for serving: described from one sample, read back only for the same config."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.data import TensorDataset

from deepseek.data.datasets import DatasetSplits
from deepseek.data.sample_spec import SPEC_FILE, describe_sample, read_input_spec, write_input_spec


def splits(x: torch.Tensor, **info) -> DatasetSplits:
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    return DatasetSplits(data, None, **info)


def test_one_sample_gives_shape_dtype_and_labels():
    spec = describe_sample(splits(torch.zeros(3, 2, 5), num_classes=3), None)
    assert spec == {"inputs": {"input": {"shape": [2, 5], "dtype": "float32"}}, "text": False,
                    "labels": ["0", "1", "2"]}  # fmt: skip


def test_text_needs_a_tokenizer_and_gets_dynamic_axes():
    texts = DatasetSplits([("a b", 0)], None)
    with pytest.raises(ValueError, match="no tokenizer"):
        describe_sample(texts, None)
    spec = describe_sample(texts, lambda s: {"input_ids": torch.ones(4, dtype=torch.long)})
    assert spec["text"] and spec["inputs"] == {"input_ids": {"shape": [None], "dtype": "int64"}}


def test_a_saved_spec_is_read_back_only_for_the_same_config(tmp_path):
    (tmp_path / "config.yaml").write_text("model: {name: mlp}\n")
    spec = describe_sample(splits(torch.zeros(2, 4)), None)
    write_input_spec(tmp_path, spec)
    assert read_input_spec(tmp_path) == {**read_input_spec(tmp_path), **spec}
    (tmp_path / "config.yaml").write_text("model: {name: mlp, hidden: [8]}\n")  # edited since: stale
    assert read_input_spec(tmp_path) is None


@pytest.mark.parametrize("bad", [[], {"inputs": [], "text": False}, {"inputs": {}, "text": "no"},
                                 {"inputs": {}, "text": False, "labels": [1, 2]}])  # fmt: skip
def test_a_malformed_spec_file_is_ignored(tmp_path, bad):
    (tmp_path / "config.yaml").write_text("model: {name: mlp}\n")
    write_input_spec(tmp_path, {"inputs": {}, "text": False, "labels": None})
    saved = json.loads((tmp_path / SPEC_FILE).read_text())
    body = {**bad, "config_sha256": saved["config_sha256"]} if isinstance(bad, dict) else bad
    (tmp_path / SPEC_FILE).write_text(json.dumps(body))
    assert read_input_spec(tmp_path) is None
