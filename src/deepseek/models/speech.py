"""Sequence-to-sequence models: a transformer encoder-decoder (Vaswani et al. 2017) and a Conformer
for speech recognition with a CTC head (Gulati et al. 2020).

Conformer: log-mel features ``(N, T, n_mels)`` (or ``(N, 1, n_mels, T)`` as FeatureExtract gives) ->
CTC log-probabilities ``(N, T / 4, vocab_size + 1)`` (index ``vocab_size`` is the blank). Document
003's template works as written: ``{name: Conformer, encoder: {num_layers, d_model, attention_heads},
decoder: {vocab_size, embedding_dim}}``. Positions are absolute sinusoids added after subsampling.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveInt

from deepseek.models.blocks import GradientCheckpointing, MultiHeadAttention
from deepseek.nn.checkpointing import checkpoint_modules
from deepseek.registry import register_model


def sinusoids(length: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """``(length, dim)`` sine/cosine position codes."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


class ConformerEncoderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_layers: PositiveInt = 12
    d_model: PositiveInt = 512
    attention_heads: PositiveInt = 8
    ff_expansion: PositiveInt = 4
    conv_kernel: PositiveInt = 31
    dropout: float = 0.1


class ConformerDecoderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: PositiveInt = 5000
    embedding_dim: PositiveInt = 512


class ConvModule(nn.Module):
    """LN -> pointwise conv (GLU) -> depthwise conv -> BN -> SiLU -> pointwise conv: ``(N, T, D) -> (N, T, D)``."""

    def __init__(self, dim: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.dw = nn.Conv1d(dim, 2 * dim, 1), nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.bn, self.pw2, self.drop = nn.BatchNorm1d(dim), nn.Conv1d(dim, dim, 1), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.glu(self.pw1(self.norm(x).transpose(1, 2)), dim=1)
        return self.drop(self.pw2(F.silu(self.bn(self.dw(y))))).transpose(1, 2)


class ConformerBlock(nn.Module):
    """Half feed-forward, self-attention, convolution, half feed-forward, final LayerNorm (macaron)."""

    def __init__(self, dim: int, heads: int, expansion: int, kernel: int, dropout: float) -> None:
        super().__init__()

        def ffn() -> nn.Sequential:
            return nn.Sequential(
                nn.LayerNorm(dim),
                nn.Linear(dim, expansion * dim),
                nn.SiLU(),
                nn.Dropout(dropout),
                nn.Linear(expansion * dim, dim),
                nn.Dropout(dropout),
            )

        self.ff1, self.ff2 = ffn(), ffn()
        self.attn_norm, self.attn = (
            nn.LayerNorm(dim),
            nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True),
        )
        self.conv, self.norm = ConvModule(dim, kernel, dropout), nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + 0.5 * self.ff1(x)
        h = self.attn_norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        x = x + self.conv(x)
        return self.norm(x + 0.5 * self.ff2(x))


class Conformer(GradientCheckpointing, nn.Module):
    def __init__(self, n_mels: int = 80, num_layers: int = 12, d_model: int = 512, heads: int = 8, ff_expansion: int = 4,
                 conv_kernel: int = 31, dropout: float = 0.1, vocab_size: int = 5000, embedding_dim: int = 512) -> None:  # fmt: skip
        super().__init__()
        self.subsample = nn.Sequential(
            nn.Conv2d(1, d_model, 3, 2), nn.ReLU(), nn.Conv2d(d_model, d_model, 3, 2), nn.ReLU()
        )
        freq = ((n_mels - 1) // 2 - 1) // 2
        self.input_proj, self.drop = nn.Linear(d_model * freq, d_model), nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            [ConformerBlock(d_model, heads, ff_expansion, conv_kernel, dropout) for _ in range(num_layers)]
        )
        self.decoder = nn.Sequential(nn.Linear(d_model, embedding_dim), nn.Linear(embedding_dim, vocab_size + 1))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        if feats.dim() == 4:  # (N, 1, n_mels, T) from FeatureExtract
            feats = feats[:, 0].transpose(1, 2)
        x = self.subsample(feats.unsqueeze(1))  # (N, D, T', F')
        x = self.input_proj(x.permute(0, 2, 1, 3).flatten(2))
        x = self.drop(x + sinusoids(x.shape[1], x.shape[2], x.device))
        return F.log_softmax(self.decoder(self.run_blocks(x)), dim=-1)


class TransformerEncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(batch_first=True)`` (post-norm, ReLU) with the same parameter names, but
    :class:`~deepseek.models.blocks.MultiHeadAttention` (q/k/v split) as ``self_attn``: ``(N, S, D) -> (N, S, D)``."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, heads, dropout)
        self.linear1, self.dropout, self.linear2 = nn.Linear(dim, ff), nn.Dropout(dropout), nn.Linear(ff, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        """``pad (N, S)``: True at padding, which no position attends to."""
        x = self.norm1(x + self.dropout1(self.self_attn(x, key_padding_mask=pad)))
        return self.norm2(x + self.dropout2(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class TransformerDecoderLayer(nn.Module):
    """``nn.TransformerDecoderLayer(batch_first=True)`` with the same parameter names: causal ``self_attn``,
    cross-attention ``multihead_attn`` to the encoder's ``memory (N, S, D)``: ``(N, T, D) -> (N, T, D)``."""

    def __init__(self, dim: int, heads: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.self_attn, self.multihead_attn = MultiHeadAttention(dim, heads, dropout), MultiHeadAttention(dim, heads, dropout)
        self.linear1, self.dropout, self.linear2 = nn.Linear(dim, ff), nn.Dropout(dropout), nn.Linear(ff, dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout1, self.dropout2, self.dropout3 = nn.Dropout(dropout), nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, tgt_pad: torch.Tensor | None = None,
                memory_pad: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        x = self.norm1(x + self.dropout1(self.self_attn(x, key_padding_mask=tgt_pad, is_causal=True)))
        x = self.norm2(x + self.dropout2(self.multihead_attn(x, memory, memory, key_padding_mask=memory_pad)))
        return self.norm3(x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x))))))


class EncoderDecoder(nn.Module):
    """The layers of ``nn.Transformer(batch_first=True)`` under its parameter names (``encoder.layers.N``,
    ``encoder.norm``, ``decoder.layers.N``, ``decoder.norm``) and initialisation (Xavier-uniform weights), so
    files saved from the ``nn.Transformer`` version load (the packed ``in_proj_weight`` is split on load)."""

    def __init__(self, dim: int, heads: int, encoder_layers: int, decoder_layers: int, ff: int, dropout: float) -> None:
        super().__init__()
        self.encoder, self.decoder = nn.Module(), nn.Module()
        self.encoder.layers = nn.ModuleList(
            [TransformerEncoderLayer(dim, heads, ff, dropout) for _ in range(encoder_layers)]
        )
        self.decoder.layers = nn.ModuleList(
            [TransformerDecoderLayer(dim, heads, ff, dropout) for _ in range(decoder_layers)]
        )
        self.encoder.norm, self.decoder.norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
                if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
                    # as over nn.Transformer's packed (3 * dim, dim) in_proj_weight
                    nn.init.uniform_(p, -math.sqrt(6.0 / (4 * dim)), math.sqrt(6.0 / (4 * dim)))

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_pad: torch.Tensor | None = None,
                tgt_pad: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """``src (N, S, D)``, ``tgt (N, T, D)``, pads bool ``(N, S)`` / ``(N, T)`` -> ``(N, T, D)``."""
        memory = src
        for layer in self.encoder.layers:
            memory = layer(memory, src_pad)
        memory = self.encoder.norm(memory)
        x = tgt
        for layer in self.decoder.layers:
            x = layer(x, memory, tgt_pad, src_pad)
        return self.decoder.norm(x)


class Seq2SeqTransformer(GradientCheckpointing, nn.Module):
    """``(source ids (N, S), target-input ids (N, T))`` -> logits ``(N, T, tgt_vocab)`` (causal decoder).

    Positions holding ``pad_id`` (``chatterbot_pairs`` pads both inputs with 0 to ``max_length``) are
    masked out of the encoder's and the cross-attention's keys and out of the decoder's own keys, so
    the logits at real positions do not depend on how much padding follows; ``pad_id=None``: no masking.
    """

    def __init__(self, src_vocab: int = 8000, tgt_vocab: int = 8000, d_model: int = 512, heads: int = 8,
                 encoder_layers: int = 6, decoder_layers: int = 6, ff: int = 2048, dropout: float = 0.1,
                 pad_id: int | None = 0) -> None:  # fmt: skip
        super().__init__()
        self.src_embed, self.tgt_embed = nn.Embedding(src_vocab, d_model), nn.Embedding(tgt_vocab, d_model)
        self.core = EncoderDecoder(d_model, heads, encoder_layers, decoder_layers, ff, dropout)
        self.head, self.scale, self.pad_id = nn.Linear(d_model, tgt_vocab), math.sqrt(d_model), pad_id

    # The core loops over its layers itself, so each layer's forward is swapped for a checkpointed one.
    _LAYERS = (TransformerEncoderLayer, TransformerDecoderLayer)

    def gradient_checkpointing_enable(self) -> None:
        super().gradient_checkpointing_enable()
        checkpoint_modules(self.core, self._LAYERS)

    def gradient_checkpointing_disable(self) -> None:
        super().gradient_checkpointing_disable()
        checkpoint_modules(self.core, self._LAYERS, enable=False)

    def embed(self, table: nn.Embedding, ids: torch.Tensor) -> torch.Tensor:
        return table(ids) * self.scale + sinusoids(ids.shape[1], table.embedding_dim, ids.device)

    def padding(self, ids: torch.Tensor) -> torch.Tensor | None:
        """``(N, L)`` bool, True at ``pad_id``; a row of padding only is left unmasked (an all-masked
        softmax row is NaN), so it attends to its padding instead."""
        if self.pad_id is None:
            return None
        pad = ids == self.pad_id
        return pad & ~pad.all(dim=1, keepdim=True)

    def forward(self, batch: tuple[torch.Tensor, torch.Tensor] | dict[str, torch.Tensor]) -> torch.Tensor:
        src, tgt = (batch["src"], batch["tgt"]) if isinstance(batch, dict) else batch
        src_pad, tgt_pad = self.padding(src), self.padding(tgt)  # the decoder's self-attention is also causal
        out = self.core(self.embed(self.src_embed, src), self.embed(self.tgt_embed, tgt), src_pad, tgt_pad)
        return self.head(out)


@register_model("conformer")
def conformer(
    encoder: ConformerEncoderSpec = ConformerEncoderSpec(),
    decoder: ConformerDecoderSpec = ConformerDecoderSpec(),
    n_mels: int = 80,
) -> Conformer:
    """Conformer ASR encoder with a CTC head; ``encoder`` and ``decoder`` sections as in document 003."""
    enc, dec = _spec(ConformerEncoderSpec, encoder), _spec(ConformerDecoderSpec, decoder)
    return Conformer(
        n_mels,
        enc.num_layers,
        enc.d_model,
        enc.attention_heads,
        enc.ff_expansion,
        enc.conv_kernel,
        enc.dropout,
        dec.vocab_size,
        dec.embedding_dim,
    )


@register_model("transformer", aliases=("transformer_seq2seq",))
def transformer(src_vocab: int = 8000, tgt_vocab: int = 8000, d_model: int = 512, heads: int = 8,
                encoder_layers: int = 6, decoder_layers: int = 6, ff: int = 2048, dropout: float = 0.1,
                pad_id: int | None = 0) -> Seq2SeqTransformer:  # fmt: skip
    """Transformer encoder-decoder for sequence-to-sequence tasks (base: 6+6 layers, d_model 512); inputs
    equal to ``pad_id`` are padding (None: no padding)."""
    return Seq2SeqTransformer(src_vocab, tgt_vocab, d_model, heads, encoder_layers, decoder_layers, ff, dropout, pad_id)


def _spec(cls: type[BaseModel], value: Any) -> Any:
    return value if isinstance(value, cls) else cls.model_validate(value or {})
