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


def test_seq2seq_transformer_ignores_source_and_target_padding():
    """chatterbot_pairs pads sources and target inputs with PAD (0) to max_length: the logits at the real
    target positions must not depend on max_length (the encoder, the cross-attention and the decoder
    keys all skip padding)."""
    from deepseek.data.tasks.text import ReplyPairs

    torch.manual_seed(0)
    model = ds.models.build("transformer", src_vocab=259, tgt_vocab=259, d_model=32, heads=4, encoder_layers=2,
                            decoder_layers=2, ff=64, dropout=0.0).eval()  # fmt: skip
    pairs = [("Hello, how are you?", "I am fine."), ("Hi", "Good morning to you too")]
    real = [len("I am fine.") + 1, len("Good morning to you too") + 1]  # BOS + reply bytes
    tight_src, tight_tgt = zip(*(ReplyPairs(pairs, 24)[i][0] for i in range(2)))
    loose_src, loose_tgt = zip(*(ReplyPairs(pairs, 40)[i][0] for i in range(2)))
    with torch.no_grad():
        tight = model((torch.stack(tight_src), torch.stack(tight_tgt)))
        loose = model((torch.stack(loose_src), torch.stack(loose_tgt)))
        alone = model((tight_src[1][None, :2], tight_tgt[1][None, : real[1]]))  # "Hi" with no padding at all
    for i, n in enumerate(real):
        torch.testing.assert_close(loose[i, :n], tight[i, :n], rtol=0, atol=1e-5)
    torch.testing.assert_close(tight[1:, : real[1]], alone, rtol=0, atol=1e-5)
    with torch.no_grad():  # a source of padding only is left unmasked: finite logits, not an all -inf softmax
        assert torch.isfinite(model((torch.zeros(2, 8, dtype=torch.long), torch.stack(tight_tgt)))).all()
