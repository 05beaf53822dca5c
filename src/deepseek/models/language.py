"""Language models: GPT-2 (Radford et al. 2019) with a KV cache, and BERT-base (Devlin et al. 2019).

GPT-2: token ids ``(N, L)`` -> logits ``(N, L, vocab)``; ``generate`` and ``stream`` decode with the
KV cache (greedy at ``temperature=0``); rows of different lengths share one batch through ``forward``'s
per-row ``positions`` and padding ``attention_mask`` (continuous batching, :mod:`deepseek.models.decoding`).
BERT: ids ``(N, L)`` (or a dict with ``input_ids`` and ``attention_mask`` as
:class:`~deepseek.data.transforms.Tokenize` makes) -> ``(N, num_classes)`` for the classification head
or ``(N, L, vocab)`` for the masked-LM head. Counts at the published sizes:
gpt2 124,439,808; bert_base encoder 109,482,240 (+ head).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from deepseek.models.blocks import GradientCheckpointing, MultiHeadAttention, unpack_qkv
from deepseek.nn.checkpointing import run_checkpointed
from deepseek.registry import register_model

Cache = list[tuple[torch.Tensor, torch.Tensor]]


def init_reference_weights(model: nn.Module, std: float = 0.02) -> None:
    """GPT-2 / BERT initialisation (``initializer_range``): Linear, Embedding and attention input
    projections ~ N(0, std), biases 0, LayerNorm weight 1 and bias 0. PyTorch's defaults (N(0, 1)
    embeddings, Kaiming-uniform Linear) would give a tied LM head initial logits with a std of
    about sqrt(dim), i.e. a first loss far above ln(vocab)."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.MultiheadAttention):
            for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
                if getattr(m, name, None) is not None:
                    nn.init.normal_(getattr(m, name), 0.0, std)
            if m.in_proj_bias is not None:
                nn.init.zeros_(m.in_proj_bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def split_packed_qkv(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook of :class:`CausalSelfAttention`: weights saved while it packed q, k and v in
    one ``qkv`` Linear (weight ``(3 * dim, dim)``, bias ``(3 * dim,)``, rows q then k then v) load into the
    separate ``q``, ``k`` and ``v``. A packed tensor whose rows do not split in three is left for
    ``load_state_dict`` to report as unexpected."""
    unpack_qkv(state_dict, prefix, "qkv.{kind}", ("q", "k", "v"))


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention ``(N, L, dim) -> (N, L, dim)`` (and the ``(k, v)`` cache, each
    ``(N, heads, L_past + L, dim // heads)``).

    q, k and v are separate Linears (not one packed ``qkv``) so that a column-wise shard of each holds whole
    heads, and the forward views with ``-1`` heads: under tensor parallelism it runs on a rank's local heads
    (``deepseek.models.parallelize``). Files saved with the packed layout load through :func:`split_packed_qkv`.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.register_load_state_dict_pre_hook(split_packed_qkv)

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None,
                attn_mask: torch.Tensor | None = None):  # fmt: skip
        """``attn_mask``: ``(N, 1, L, L_past + L)`` bool, True where a query may attend (padding and causality
        already folded in, see :func:`padded_attention_mask`); None: plain causal attention."""
        n, length, _ = x.shape
        q, k, v = (p(x).view(n, length, -1, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        if attn_mask is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        elif past is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        elif length == 1:
            out = F.scaled_dot_product_attention(q, k, v)  # one new token sees everything before it
        else:
            offset = k.shape[2] - length
            mask = torch.ones(length, k.shape[2], dtype=torch.bool, device=x.device).tril(offset)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(out.transpose(1, 2).reshape(n, length, -1)), (k, v)


def padded_attention_mask(valid: torch.Tensor, length: int) -> torch.Tensor:
    """``valid`` ``(N, T)`` bool (True: a real token, past and new) -> ``(N, 1, length, T)`` bool for the last
    ``length`` (new) positions: causal, real keys only, and each query always sees itself, so that a padding
    query has one finite score (a row of all -inf would be NaN, and NaN reaches the cache through later layers)."""
    total = valid.shape[1]
    offset = total - length
    causal = torch.ones(length, total, dtype=torch.bool, device=valid.device).tril(offset)
    itself = torch.zeros_like(causal)
    itself[torch.arange(length), torch.arange(offset, total)] = True
    return (causal & valid[:, None, None, :]) | itself


class GPT2Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None = None, use_cache: bool = True,
                attn_mask: torch.Tensor | None = None):  # fmt: skip
        """``(N, L, dim)`` -> ``(N, L, dim)`` and this block's ``(k, v)`` cache, or None with ``use_cache=False``
        (training: returning k and v, views of the projections, makes FSDP2 warn about in-place ops on views)."""
        h = self.ln1(x)  # attn_mask only when given: attention modules swapped in may take (x, past) alone
        a, present = self.attn(h, past) if attn_mask is None else self.attn(h, past, attn_mask)
        x = x + a
        return x + self.mlp(self.ln2(x)), (present if use_cache else None)


class GPT2(GradientCheckpointing, nn.Module):
    """Decoder-only LM with learned positions and an output head tied to the token embedding."""

    def __init__(
        self, vocab_size: int = 50257, max_positions: int = 1024, dim: int = 768, depth: int = 12, heads: int = 12
    ) -> None:
        super().__init__()
        self.max_positions = max_positions
        self.tok, self.pos = nn.Embedding(vocab_size, dim), nn.Embedding(max_positions, dim)
        self.blocks = nn.ModuleList([GPT2Block(dim, heads) for _ in range(depth)])
        self.ln_f = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        self.head.weight = self.tok.weight
        init_reference_weights(self)
        for block in self.blocks:  # GPT-2: residual-stream writers scaled so the stream's variance stays O(1)
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, 0.0, 0.02 / math.sqrt(2 * depth))

    def forward(self, ids: torch.Tensor, past: Cache | None = None, use_cache: bool = False,
                positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                last_only: bool = False) -> Any:  # fmt: skip
        """``ids`` ``(N, L)`` -> logits ``(N, L, vocab)``, and the cache (per block ``(k, v)``, each
        ``(N, heads, L_past + L, dim // heads)``) when ``use_cache`` or ``past`` is given.

        Rows of different lengths in one batch (padded; :class:`deepseek.models.decoding.DecodeBatch`):
        ``positions`` ``(N, L)`` int64, each token's own position (default ``L_past + arange(L)`` for every row),
        and ``attention_mask`` ``(N, L_past + L)`` bool, True for real tokens (padding is never attended to).
        ``last_only``: logits ``(N, 1, vocab)`` of the last position only (a prefill needs no more, and the
        head over every prompt position is most of a prefill's work at a 30k vocabulary).
        """
        start = past[0][0].shape[2] if past else 0
        if positions is None:
            if start + ids.shape[1] > self.max_positions:
                raise ValueError(f"sequence of {start + ids.shape[1]} tokens exceeds max_positions={self.max_positions}")
            positions = torch.arange(start, start + ids.shape[1], device=ids.device)
        elif positions.numel() and int(positions.max()) >= self.max_positions:
            raise ValueError(f"position {int(positions.max())} exceeds max_positions={self.max_positions}")
        x = self.tok(ids) + self.pos(positions)
        if not use_cache and past is None and attention_mask is None and not last_only:
            return self.head(self.ln_f(self.run_blocks_pairs(x)))
        mask = None if attention_mask is None else padded_attention_mask(attention_mask, ids.shape[1])
        presents: Cache = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, past[i] if past else None, attn_mask=mask)
            presents.append(present)
        logits = self.head(self.ln_f(x[:, -1:] if last_only else x))
        return (logits, presents) if use_cache or past is not None else logits

    def run_blocks_pairs(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, L, dim)`` through every block without a cache (each block returns ``(x, present)``)."""
        for block in self.blocks:
            x = (run_checkpointed(block, x, use_cache=False) if self.checkpointing else block(x, use_cache=False))[0]
        return x

    @torch.no_grad()
    def stream(self, ids: torch.Tensor, max_new_tokens: int, temperature: float = 0.0, top_k: int | None = None,
               use_cache: bool = True, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:  # fmt: skip
        """Yield the next token ids ``(N,)`` one at a time (greedy when ``temperature == 0``)."""
        past: Cache | None = None
        context = ids
        for _ in range(max_new_tokens):
            if use_cache:
                logits, past = self(context if past is None else context[:, -1:], past, use_cache=True, last_only=True)
            else:
                logits = self(context)
            nxt = pick_next(logits[:, -1], temperature, top_k, generator)
            context = torch.cat([context, nxt[:, None]], dim=1)
            yield nxt

    def generate(self, ids: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
        """``(N, L) -> (N, L + max_new_tokens)``."""
        new = list(self.stream(ids, max_new_tokens, **kwargs))
        return torch.cat([ids, torch.stack(new, dim=1)], dim=1) if new else ids


def pick_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Logits ``(N, vocab)`` -> the next token ids ``(N,)``: argmax at ``temperature <= 0``, else sampled from
    the softmax at ``temperature`` (over the ``top_k`` most likely tokens when given)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits.float(), -1).cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


def drop_pooler_keys(module: nn.Module, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state-dict pre-hook for a module with no ``pooler`` (the MLM Bert, MiniLM's encoder): drop the
    ``pooler.*`` entries of files saved while it still had an (unused) one, so they load strictly."""
    for key in [k for k in state_dict if k.startswith(prefix + "pooler.")]:
        del state_dict[key]


class BertLayer(nn.Module):
    """Post-norm encoder layer: ``LN(x + MHA(x))`` then ``LN(x + FFN(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.attn = MultiHeadAttention(dim, heads, dropout=dropout)  # q/k/v split: tensor parallel shards heads
        self.ln1, self.ln2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        x = self.ln1(x + self.drop(self.attn(x, key_padding_mask=pad)))
        return self.ln2(x + self.drop(self.ffn(x)))


class Bert(GradientCheckpointing, nn.Module):
    """BERT encoder (word + position + segment embeddings, ``depth`` layers, tanh pooler) with a head."""

    def __init__(self, vocab_size: int = 30522, dim: int = 768, depth: int = 12, heads: int = 12, hidden: int = 3072,
                 max_positions: int = 512, head: Literal["classification", "mlm", "none"] = "classification",
                 num_classes: int = 2, dropout: float = 0.1) -> None:  # fmt: skip
        super().__init__()
        self.word, self.position, self.segment = (
            nn.Embedding(vocab_size, dim),
            nn.Embedding(max_positions, dim),
            nn.Embedding(2, dim),
        )
        self.emb_norm, self.drop = nn.LayerNorm(dim, eps=1e-12), nn.Dropout(dropout)
        self.blocks = nn.ModuleList([BertLayer(dim, heads, hidden, dropout) for _ in range(depth)])
        self.head_kind = head
        if head == "mlm":  # no pooler, as HF's BertForMaskedLM: an unused one gets no gradient and breaks DDP
            self.mlm_transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim, eps=1e-12))
            self.mlm_decoder = nn.Linear(dim, vocab_size)
            self.mlm_decoder.weight = self.word.weight
            self.register_load_state_dict_pre_hook(drop_pooler_keys)  # files saved with the old pooler load
        else:
            self.pooler = nn.Linear(dim, dim)
        if head == "classification":
            self.classifier = nn.Linear(dim, num_classes)
        init_reference_weights(self)

    def encode(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None, segments: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(N, L) -> (N, L, dim)`` hidden states; ``mask`` is 1 for real tokens."""
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = (
            self.word(ids)
            + self.position(pos)
            + self.segment(segments if segments is not None else torch.zeros_like(ids))
        )
        x = self.drop(self.emb_norm(x))
        pad = (mask == 0) if mask is not None else None
        return self.run_blocks(x, pad)

    def forward(self, inputs: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
        ids, mask, seg = (
            (inputs["input_ids"], inputs.get("attention_mask"), inputs.get("token_type_ids"))
            if isinstance(inputs, dict)
            else (inputs, None, None)
        )
        hidden = self.encode(ids, mask, seg)
        if self.head_kind == "mlm":
            return self.mlm_decoder(self.mlm_transform(hidden))
        pooled = torch.tanh(self.pooler(hidden[:, 0]))
        return self.classifier(self.drop(pooled)) if self.head_kind == "classification" else pooled


@register_model("gpt2")
def gpt2(vocab_size: int = 50257, max_positions: int = 1024, dim: int = 768, depth: int = 12, heads: int = 12) -> GPT2:
    """GPT-2 small decoder LM with KV cache, generate() and stream() (124M parameters)."""
    return GPT2(vocab_size, max_positions, dim, depth, heads)


@register_model("bert_base")
def bert_base(head: Literal["classification", "mlm", "none"] = "classification", num_classes: int = 2, vocab_size: int = 30522,
              dim: int = 768, depth: int = 12, heads: int = 12, dropout: float = 0.1) -> Bert:  # fmt: skip
    """BERT-base encoder with a classification or masked-LM head (110M parameters)."""
    return Bert(vocab_size, dim, depth, heads, 4 * dim, 512, head, num_classes, dropout)
