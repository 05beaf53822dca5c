"""The task losses and metrics a config picks by name (``train.loss: {name: ...}``, ``train.metrics``)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepseek.models.sequence import VAE
from deepseek.registry import losses, metrics


def test_every_task_loss_is_registered_by_name():
    for name in ("token_cross_entropy", "next_token", "ctc", "segmentation_cross_entropy", "vae_elbo",
                 "pairwise_hashing"):  # fmt: skip
        assert name in losses, name
    for name in ("token_accuracy", "pixel_accuracy", "char_error_rate"):
        assert name in metrics, name


def test_token_cross_entropy_skips_padding_positions():
    logits = torch.randn(2, 5, 7)
    targets = torch.tensor([[1, 2, 3, -100, -100], [4, 5, 6, 0, -100]])
    got = losses.build("token_cross_entropy")(logits, targets)
    keep = targets != -100
    want = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(got, want)
    changed = logits.clone()
    changed[0, 3:] = 100.0  # what the model says at padded positions cannot matter
    torch.testing.assert_close(losses.build("token_cross_entropy")(changed, targets), want)


def test_next_token_loss_shifts_inputs_to_targets_and_ignores_pad():
    ids = torch.tensor([[5, 6, 7, 0, 0]])
    logits = torch.randn(1, 5, 9)
    got = losses.build("next_token", pad_id=0)(logits, ids)
    want = F.cross_entropy(logits[0, :2], torch.tensor([6, 7]))  # predicts 6 from 5, 7 from 6; pads ignored
    torch.testing.assert_close(got, want)


def test_ctc_matches_torch_with_tuple_or_negative_padded_targets():
    torch.manual_seed(0)
    log_probs = torch.randn(3, 12, 6).log_softmax(-1)  # (N, T, C), blank = last class (the Conformer's)
    labels = torch.tensor([[0, 1, 2, -1], [3, 3, -1, -1], [4, 0, 1, 2]])
    lengths = torch.tensor([3, 2, 4])
    want = F.ctc_loss(log_probs.transpose(0, 1), labels.clamp_min(0), torch.full((3,), 12), lengths, blank=5)
    ctc = losses.build("ctc")
    torch.testing.assert_close(ctc(log_probs, (labels, lengths)), want)
    torch.testing.assert_close(ctc(log_probs, labels), want)  # lengths read from the -1 padding


def test_ctc_loss_gets_smaller_for_the_right_alignment():
    labels = torch.tensor([[0, 1]])
    right = torch.full((1, 6, 3), -9.0)
    for t, c in enumerate([0, 0, 2, 1, 1, 2]):  # "a a _ b b _" collapses to "a b"
        right[0, t, c] = 0.0
    wrong = right.flip(-1)
    ctc = losses.build("ctc")
    assert ctc(right, labels) < 0.1 < ctc(wrong, labels)


def test_segmentation_cross_entropy_is_per_pixel_and_ignores_a_label():
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[0, 0, 0] = 255
    got = losses.build("segmentation_cross_entropy", ignore_index=255)(logits, target)
    flat_logits, flat_target = logits.permute(0, 2, 3, 1).reshape(-1, 3), target.reshape(-1)
    keep = flat_target != 255
    torch.testing.assert_close(got, F.cross_entropy(flat_logits[keep], flat_target[keep]))


def vae_outputs(dtype: torch.dtype, logvar: float) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """A known case: 2 samples of 1x2x2 pixels, recon logits 0 (BCE ln 2 per pixel whatever the target),
    latent 3 with mu 1 and the given logvar (KL per sample 3 * -0.5 * (1 + logvar - 1 - exp(logvar)))."""
    recon = torch.zeros(2, 1, 2, 2, dtype=dtype)
    mu, lv = torch.ones(2, 3, dtype=dtype), torch.full((2, 3), logvar, dtype=dtype)
    return (recon, mu, lv), torch.rand(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)).to(dtype)


def negative_elbo(name: str, beta: float):
    return (lambda out, x: VAE.loss(out, x, beta=beta)) if name == "model" else losses.build("vae_elbo", beta=beta)


@pytest.mark.parametrize("name", ["model", "registered"])
@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_vae_negative_elbo_on_a_known_case(name, beta):
    """``VAE.loss`` and the registered ``vae_elbo`` (which calls it): per sample, 4 pixels of ln 2 plus
    ``beta`` times the KL of N(1, 2) from N(0, 1) in 3 dimensions."""
    out, x = vae_outputs(torch.float32, math.log(2.0))
    kl = 3 * -0.5 * (1 + math.log(2.0) - 1 - 2)
    assert float(negative_elbo(name, beta)(out, x)) == pytest.approx(4 * math.log(2) + beta * kl, rel=1e-6)


@pytest.mark.parametrize("name", ["model", "registered"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_vae_negative_elbo_of_low_precision_outputs_is_computed_in_float32(name, dtype):
    """A bf16/fp16 model's outputs: the same value as their float32 copies give, not a bf16-rounded sum
    or an fp16 exp(logvar) overflowing to inf (exp(12) > 65504)."""
    out, x = vae_outputs(dtype, 12.0)
    got = negative_elbo(name, 1.0)(out, x)
    expected = negative_elbo(name, 1.0)(tuple(t.float() for t in out), x.float())
    assert got.dtype == torch.float32 and torch.isfinite(got)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)


def test_pairwise_hashing_prefers_codes_that_agree_within_a_class():
    labels = torch.tensor([0, 0, 1, 1])
    good = torch.tensor([[1.0, 1, 1, 1], [1, 1, 1, 1], [-1, -1, -1, -1], [-1, -1, -1, -1]]) * 0.99
    bad = good[[0, 2, 1, 3]]  # same codes, classes mixed up
    loss = losses.build("pairwise_hashing")
    assert loss(good, labels) < loss(bad, labels)
    assert math.isfinite(loss(good[:1], labels[:1]).item())  # one sample: no pairs, still a number


def test_token_accuracy_counts_only_real_tokens():
    acc = metrics.build("token_accuracy")
    logits = F.one_hot(torch.tensor([[1, 2, 0]]), 3).float()  # predicts 1, 2, 0
    acc.update(logits, torch.tensor([[1, 0, -100]]))
    assert acc.compute() == 0.5 and acc.name == "token_accuracy"


def test_pixel_accuracy_reads_classes_from_dim_1():
    acc = metrics.build("pixel_accuracy")
    target = torch.tensor([[[0, 1], [1, 1]]])
    logits = F.one_hot(torch.tensor([[[0, 1], [0, 1]]]), 2).permute(0, 3, 1, 2).float()  # (1, 2, 2, 2)
    acc.update(logits, target)
    assert acc.compute() == 0.75 and acc.name == "pixel_accuracy"


@pytest.mark.parametrize(
    ("frames", "labels", "want"),
    [([0, 0, 2, 1, 2], [0, 1], 0.0), ([0, 2, 0, 2, 2], [0, 1], 0.5), ([2, 2, 2, 2, 2], [0, 1], 1.0)],
)
def test_char_error_rate_decodes_greedily(frames, labels, want):
    cer = metrics.build("char_error_rate")
    log_probs = F.one_hot(torch.tensor([frames]), 3).float().log()  # blank = 2 (last)
    cer.update(log_probs, (torch.tensor([labels + [-1]]), torch.tensor([len(labels)])))
    assert cer.compute() == pytest.approx(want)


def test_losses_live_in_the_losses_module_and_metrics_registers_none():
    """One home for losses: every built-in loss comes from deepseek.train.losses, none from the metrics module."""
    import deepseek.train.metrics as metrics_module

    for name in ("cross_entropy", "mse", "l1", "token_cross_entropy", "ctc"):
        assert losses.get(name).__module__ == "deepseek.train.losses", name
    assert not [n for n in ("cross_entropy", "mse", "l1") if hasattr(metrics_module, n)]


def test_the_basic_losses_compute_what_torch_does():
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(losses.build("cross_entropy")(logits, target), F.cross_entropy(logits, target))
    smoothed = losses.build("cross_entropy", label_smoothing=0.1)(logits, target)
    torch.testing.assert_close(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1))
    a, b = torch.randn(5), torch.randn(5)
    torch.testing.assert_close(losses.build("mse")(a, b), F.mse_loss(a, b))
    torch.testing.assert_close(losses.build("l1")(a, b), F.l1_loss(a, b))
