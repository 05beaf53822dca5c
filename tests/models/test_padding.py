"""Models that take a Tokenize + TruncatePad batch (``input_ids`` + ``attention_mask``) ignore padding:
the same sentences padded to a longer length give the same logits."""

from __future__ import annotations

import pytest
import torch

import deepseek as ds


def padded(ids: torch.Tensor, lengths: list[int], total: int) -> dict[str, torch.Tensor]:
    """Right-pad each row of ``ids (N, L)`` after its first ``lengths[i]`` tokens to ``total`` (pad id 0)."""
    out = torch.zeros(ids.shape[0], total, dtype=ids.dtype)
    mask = torch.zeros_like(out)
    for i, n in enumerate(lengths):
        out[i, :n], mask[i, :n] = ids[i, :n], 1
    return {"input_ids": out, "attention_mask": mask}


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("lstm_classifier", {"vocab_size": 50, "input_dim": 16, "hidden": 16, "num_classes": 3}),
        ("lstm_classifier", {"vocab_size": 50, "input_dim": 16, "hidden": 16, "layers": 2, "num_classes": 3}),
        # capacity_factor is the template's 1.25: capacity depends on the number of real tokens only
        ("moe_transformer", {"vocab_size": 50, "dim": 32, "depth": 2, "heads": 4, "num_experts": 4, "num_classes": 3}),
    ],
)
def test_extra_padding_does_not_change_the_logits(name, kwargs):
    torch.manual_seed(0)
    model = ds.models.build(name, **kwargs).eval()
    ids = torch.randint(1, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    lengths = [9, 5]
    with torch.no_grad():
        tight = model(padded(ids, lengths, 9))
        loose = model(padded(ids, lengths, 16))
        alone = model(ids[1:, :5])  # the short sentence with no padding at all, and padded on its own
        alone_padded = model(padded(ids[1:], lengths[1:], 16))
    torch.testing.assert_close(loose, tight, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone_padded, alone, rtol=0, atol=1e-5)
