"""Sequence and generative models: an LSTM classifier, a TCN for time series (Bai et al. 2018), a
MoE transformer classifier (every block's feed-forward is a ds.nn.MoE), and a VAE (Kingma & Welling)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepseek.models.blocks import EncoderBlock, GradientCheckpointing
from deepseek.nn.moe import MoE
from deepseek.registry import register_model


class LSTMClassifier(nn.Module):
    """Token ids ``(N, L)`` (or features ``(N, L, F)`` when ``vocab_size`` is 0) -> logits ``(N, num_classes)``
    from the (bidirectional) LSTM's last states."""

    def __init__(self, vocab_size: int = 30522, input_dim: int = 128, hidden: int = 128, layers: int = 1,
                 num_classes: int = 10, bidirectional: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.embed = nn.Embedding(vocab_size, input_dim) if vocab_size else nn.Identity()
        self.lstm = nn.LSTM(input_dim, hidden, layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        """With a dict, ``attention_mask (N, L)`` (1 for real tokens, right padding as TruncatePad makes)
        packs the batch, so each row's last state is that of its last real token, not of its padding."""
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        seq = self.embed(x["input_ids"] if isinstance(x, dict) else x)
        if mask is not None:
            lengths = mask.sum(1).clamp_min(1).cpu()
            seq = nn.utils.rnn.pack_padded_sequence(seq, lengths, batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(seq)  # h (layers * directions, N, hidden), in the batch's order
        last = torch.cat([h[-2], h[-1]], dim=-1) if self.lstm.bidirectional else h[-1]
        return self.head(last)


class TemporalBlock(nn.Module):
    """Two causal dilated convolutions with a residual connection: ``(N, C, T) -> (N, width, T)``."""

    def __init__(self, cin: int, width: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv1 = nn.Conv1d(cin, width, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(width, width, kernel, dilation=dilation)
        self.drop = nn.Dropout(dropout)
        self.res = nn.Conv1d(cin, width, 1) if cin != width else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(F.relu(self.conv1(F.pad(x, (self.pad, 0)))))
        y = self.drop(F.relu(self.conv2(F.pad(y, (self.pad, 0)))))
        return F.relu(y + self.res(x))


class TCN(nn.Module):
    """Series ``(N, in_channels, T)`` -> ``(N, num_outputs)`` from the last time step (causal: no look-ahead)."""

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 64,
        levels: int = 4,
        kernel: int = 3,
        num_outputs: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[TemporalBlock(in_channels if i == 0 else width, width, kernel, 2**i, dropout) for i in range(levels)]
        )
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x)[:, :, -1])


class MoEEncoderBlock(EncoderBlock):
    """:class:`EncoderBlock` whose feed-forward is a top-k MoE; ``key_padding_mask (N, L)`` (True at
    padding) masks padding out of the attention keys and out of the experts' routing and capacity."""

    def __init__(self, dim: int, heads: int, num_experts: int, top_k: int) -> None:
        super().__init__(dim, heads, mlp=MoE(dim, num_experts, top_k=top_k))

    def feed_forward(self, h: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        return self.mlp(h, token_mask=None if key_padding_mask is None else ~key_padding_mask)


class MoETransformer(GradientCheckpointing, nn.Module):
    """Token ids ``(N, L)`` (or a dict with ``input_ids`` and ``attention_mask``) -> logits
    ``(N, num_classes)`` from the mean over real tokens; each block's feed-forward is a top-k MoE."""

    def __init__(self, vocab_size: int = 30522, dim: int = 256, depth: int = 4, heads: int = 4, num_experts: int = 8,
                 top_k: int = 2, num_classes: int = 10, max_positions: int = 512) -> None:  # fmt: skip
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab_size, dim), nn.Embedding(max_positions, dim)
        self.blocks = nn.ModuleList([MoEEncoderBlock(dim, heads, num_experts, top_k) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        ids = x["input_ids"] if isinstance(x, dict) else x
        mask = x.get("attention_mask") if isinstance(x, dict) else None
        real = mask.bool() if mask is not None else None
        h = self.tok(ids) + self.pos(torch.arange(ids.shape[1], device=ids.device))
        h = self.norm(self.run_blocks(h, None if real is None else ~real))
        if real is None:
            return self.head(h.mean(1))
        weight = real.unsqueeze(-1).to(h.dtype)  # (N, L, 1): a mean over real tokens only
        return self.head((h * weight).sum(1) / weight.sum(1).clamp_min(1.0))


class VAE(nn.Module):
    """Images ``(N, C, H, W)`` in [0, 1] -> ``(reconstruction logits, mu, logvar)``; :meth:`loss` is the
    negative ELBO (Bernoulli likelihood); :meth:`sample` decodes prior draws."""

    def __init__(self, in_channels: int = 1, image_size: int = 28, hidden: int = 400, latent: int = 20) -> None:
        super().__init__()
        self.shape = (in_channels, image_size, image_size)
        pixels = in_channels * image_size * image_size
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, hidden), nn.ReLU())
        self.mu, self.logvar = nn.Linear(hidden, latent), nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, pixels))
        self.latent = latent

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return self.decoder(z).view(-1, *self.shape), mu, logvar

    @staticmethod
    def loss(
        out: tuple[torch.Tensor, torch.Tensor, torch.Tensor], x: torch.Tensor, beta: float = 1.0
    ) -> torch.Tensor:
        """Negative ELBO per sample, a float32 scalar, for ``out = (recon logits (N, C, H, W), mu (N, Z),
        logvar (N, Z))`` and targets ``x`` in [0, 1] shaped like recon: Bernoulli reconstruction plus
        ``beta`` times the KL from the N(0, I) prior. Computed in float32 whatever the outputs' dtype: an
        fp16 ``exp(logvar)`` overflows from logvar ~11, and a bf16 sum over every pixel keeps 8 bits."""
        recon, mu, logvar = (t.float() for t in out)
        rec = F.binary_cross_entropy_with_logits(recon, x.float(), reduction="sum")
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (rec + beta * kl) / x.shape[0]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.latent, generator=generator).to(self.mu.weight.device)
        return torch.sigmoid(self.decoder(z)).view(n, *self.shape)


@register_model("lstm_classifier")
def lstm_classifier(
    vocab_size: int = 30522,
    input_dim: int = 128,
    hidden: int = 128,
    layers: int = 1,
    num_classes: int = 10,
    bidirectional: bool = True,
) -> LSTMClassifier:
    """Bidirectional LSTM text (or feature-sequence) classifier."""
    return LSTMClassifier(vocab_size, input_dim, hidden, layers, num_classes, bidirectional)


@register_model("tcn")
def tcn(
    in_channels: int = 1, width: int = 64, levels: int = 4, kernel: int = 3, num_outputs: int = 1, dropout: float = 0.1
) -> TCN:
    """Temporal convolutional network for time series (causal dilated convolutions)."""
    return TCN(in_channels, width, levels, kernel, num_outputs, dropout)


@register_model("moe_transformer")
def moe_transformer(
    vocab_size: int = 30522,
    dim: int = 256,
    depth: int = 4,
    heads: int = 4,
    num_experts: int = 8,
    top_k: int = 2,
    num_classes: int = 10,
) -> MoETransformer:
    """Transformer encoder classifier whose feed-forward layers are top-k mixtures of experts."""
    return MoETransformer(vocab_size, dim, depth, heads, num_experts, top_k, num_classes)


@register_model("vae")
def vae(in_channels: int = 1, image_size: int = 28, hidden: int = 400, latent: int = 20) -> VAE:
    """Variational autoencoder for small images (MLP encoder/decoder, Bernoulli likelihood)."""
    return VAE(in_channels, image_size, hidden, latent)
