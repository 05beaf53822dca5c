"""Registered losses, so a config picks them by name (``train.loss``).

Each builder returns ``loss_fn(outputs, targets) -> scalar`` for the Trainer's default step
``loss_fn(model(inputs), targets)``: classification cross-entropy, mean squared and absolute error,
and for tasks beyond classification token-level cross-entropy (language modelling, sequence to
sequence), CTC (speech recognition), per-pixel cross-entropy (segmentation), the VAE's negative
ELBO and a pairwise hashing loss (cross-modal retrieval). Padding in targets is ``ignore_index``
(-100, as in ``F.cross_entropy``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Lt

from deepseek.data.tasks.text import IGNORE_INDEX
from deepseek.models.sequence import VAE
from deepseek.registry import register_loss

LossFn = Callable[[Any, Any], torch.Tensor]
Smoothing = Annotated[float, Ge(0), Lt(1)]


# Losses are plain functions, not nn.Module instances: a module call costs ~5 us more per step.
@register_loss("cross_entropy")
def cross_entropy(label_smoothing: Smoothing = 0.0) -> LossFn:
    """Softmax cross-entropy on logits (N, C) and class indices (N,)."""
    return functools.partial(F.cross_entropy, label_smoothing=label_smoothing) if label_smoothing else F.cross_entropy


@register_loss("mse")
def mse() -> LossFn:
    """Mean squared error."""
    return F.mse_loss


@register_loss("l1")
def l1() -> LossFn:
    """Mean absolute error."""
    return F.l1_loss


@register_loss("token_cross_entropy", aliases=("seq2seq", "sequence_cross_entropy"))
def token_cross_entropy(ignore_index: int = IGNORE_INDEX, label_smoothing: Smoothing = 0.0) -> LossFn:
    """Cross-entropy per position: logits (N, L, V), target ids (N, L); ignore_index marks padding."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.flatten(0, -2), targets.flatten(), ignore_index=ignore_index, label_smoothing=label_smoothing
        )

    return loss


@register_loss("next_token", aliases=("causal_lm",))
def next_token(pad_id: int | None = None, ignore_index: int = IGNORE_INDEX) -> LossFn:
    """Causal LM loss when the targets are the input ids (N, L): logits (N, L, V) at t predict id t + 1."""

    def loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        targets = ids[:, 1:]
        if pad_id is not None:  # padding is input ids here, not ignore_index: mask it
            targets = targets.masked_fill(targets == pad_id, ignore_index)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=ignore_index)

    return loss


def ctc_targets(targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(labels (N, S), lengths (N,))`` from that pair, or from labels (N, S) padded with negative values."""
    if isinstance(targets, (tuple, list)):
        labels, lengths = targets
        return labels, lengths.long()
    return targets, (targets >= 0).sum(-1)


@register_loss("ctc")
def ctc(blank: int = -1, zero_infinity: bool = True) -> LossFn:
    """CTC on per-frame log-probabilities (N, T, C) and targets (labels (N, S), lengths (N,)); blank -1: last class."""

    def loss(log_probs: torch.Tensor, targets: Any) -> torch.Tensor:
        labels, lengths = ctc_targets(targets)
        n, frames, classes = log_probs.shape
        # log_softmax is idempotent: log-probabilities (the Conformer's output) pass unchanged, logits work too.
        lp = log_probs.float().log_softmax(-1).transpose(0, 1)  # (T, N, C) as F.ctc_loss wants
        frame_counts = torch.full((n,), frames, dtype=torch.long, device=log_probs.device)
        # Padding past a target's length is never read, but must be a valid index for the kernel.
        return F.ctc_loss(lp, labels.clamp_min(0), frame_counts, lengths, blank=blank % classes,
                          zero_infinity=zero_infinity)  # fmt: skip

    return loss


@register_loss("segmentation_cross_entropy", aliases=("pixel_cross_entropy",))
def segmentation_cross_entropy(ignore_index: int = IGNORE_INDEX, label_smoothing: Smoothing = 0.0) -> LossFn:
    """Per-pixel cross-entropy: logits (N, C, H, W), class ids (N, H, W); ignore_index marks unlabelled pixels."""

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing)

    return loss


@register_loss("vae_elbo", aliases=("negative_elbo",))
def vae_elbo(beta: Annotated[float, Ge(0)] = 1.0) -> LossFn:
    """Negative ELBO per sample for (recon logits, mu (N, Z), logvar (N, Z)) and targets in [0, 1] shaped like recon."""

    def loss(outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return VAE.loss(outputs, x, beta=beta)  # the model's own loss, float32 whatever the outputs' dtype

    return loss


@register_loss("pairwise_hashing", aliases=("dpsh",))
def pairwise_hashing(scale: Annotated[float, Gt(0)] = 0.5, quantization: Annotated[float, Ge(0)] = 0.1) -> LossFn:
    """Supervised hashing (DPSH): codes (N, bits) in (-1, 1), labels (N,); same-label pairs agree, others differ."""

    def loss(codes: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        u = codes.float()
        quant = (u - u.detach().sign()).pow(2).mean()  # pull codes towards binary ones
        n = u.shape[0]
        if n < 2:
            return quantization * quant
        theta = scale * (u @ u.T)  # (N, N) pairwise inner products
        similar = (labels[:, None] == labels[None, :]).float()
        pairs = ~torch.eye(n, dtype=torch.bool, device=u.device)
        # Negative log-likelihood of the pair labels under p(similar) = sigmoid(theta) (Li et al. 2016).
        nll = (F.softplus(theta) - similar * theta)[pairs].mean()
        return nll + quantization * quant

    return loss
