"""LoRA (Hu et al. 2021): ``y = W x + (alpha / r) * B A dropout(x)`` on chosen ``nn.Linear`` layers.

B starts at zero, so an adapted model first computes exactly what the base did; only A and B train.
Adapters save alone, in the layout the ``peft`` library reads (``adapter_model.safetensors`` with
``base_model.model.<path>.lora_A.weight`` keys, and ``adapter_config.json``), so ``PeftModel.from_pretrained``
loads an adapter trained here, and :func:`load_adapter` loads one trained with peft. Target matching
follows peft: a list names module-path suffixes, a string is a regular expression matched in full.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

PREFIX = "base_model.model."


class LoRALinear(nn.Module):
    """Wraps a frozen ``nn.Linear``; ``(..., in_features) -> (..., out_features)``.

    It also reads like the ``nn.Linear`` it replaces: ``weight`` (``(out_features, in_features)``, the
    adapted ``W + (alpha / r) B A``, differentiable in A and B), ``bias``, ``in_features`` and
    ``out_features``, because ``nn.MultiheadAttention`` (``out_proj``) and ``nn.Transformer``'s layers
    (``linear1``/``linear2``) pass ``weight`` to their fused kernels instead of calling the module. On that
    path the adapter sees no dropout. ``shared_weight=True`` (set by :func:`apply_lora` when the base weight
    is tied, e.g. GPT-2's head to its token embedding) makes :meth:`merge` fold the update into an untied
    copy, so the other user of the weight keeps the base value; :meth:`unmerge` ties it again.
    """

    def __init__(
        self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0, shared_weight: bool = False
    ) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.base, self.rank, self.alpha, self.shared_weight = base, rank, alpha, shared_weight
        self._tied: list[nn.Parameter] = []  # a list, so nn.Module does not register the tied original
        self.scaling = alpha / rank
        dev, dtype = base.weight.device, base.weight.dtype
        self.lora_A = nn.Linear(base.in_features, rank, bias=False, device=dev, dtype=dtype)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False, device=dev, dtype=dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        for p in self.base.parameters():
            p.requires_grad_(False)

    def delta(self) -> torch.Tensor:
        """The weight update ``(alpha / r) * B A``: ``(out_features, in_features)``."""
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight ``(out_features, in_features)``: base plus update unless merged."""
        if self.merged:
            return self.base.weight
        return self.base.weight + self.delta().to(self.base.weight.dtype)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def merge(self) -> None:
        if self.merged:
            return
        with torch.no_grad():
            merged = self.base.weight + self.delta().to(self.base.weight.dtype)
            if self.shared_weight:  # in place would change the other user of the tied tensor too
                self._tied.append(self.base.weight)
                self.base.weight = nn.Parameter(merged, requires_grad=False)
            else:
                self.base.weight.copy_(merged)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        if self._tied:
            self.base.weight = self._tied.pop()
        else:
            with torch.no_grad():
                self.base.weight -= self.delta().to(self.base.weight.dtype)
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, merged={self.merged}"


def _matches(name: str, target_modules: Sequence[str] | str) -> bool:
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == t or name.endswith("." + t) for t in target_modules)


def apply_lora(
    model: nn.Module, target_modules: Sequence[str] | str, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0
) -> nn.Module:
    """Replace matching ``nn.Linear`` layers by :class:`LoRALinear` (in place) and freeze everything
    else; returns ``model``. A target that matches nothing is an error listing the Linear layers."""
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)]
    chosen = [n for n in linears if _matches(n, target_modules)]
    if not chosen:
        raise ValueError(
            f"target_modules {target_modules!r} match no nn.Linear; the model has: {', '.join(linears[:30]) or 'none'}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        tied = uses[id(linear.weight)] > 1
        setattr(parent, child, LoRALinear(linear, rank, alpha, dropout, shared_weight=tied))
    model.lora_config = {"r": rank, "lora_alpha": alpha, "lora_dropout": dropout,
                         "target_modules": target_modules if isinstance(target_modules, str) else list(target_modules)}  # fmt: skip
    return model


def lora_layers(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for _, m in lora_layers(model) for p in (m.lora_A.weight, m.lora_B.weight)]


def merge(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight (inference without the extra matmuls)."""
    for _, m in lora_layers(model):
        m.merge()
    return model


def unmerge(model: nn.Module) -> nn.Module:
    for _, m in lora_layers(model):
        m.unmerge()
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter weights only, under peft's key names."""
    out = {}
    for name, m in lora_layers(model):
        out[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.weight.detach().contiguous().cpu()
        out[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.weight.detach().contiguous().cpu()
    return out


def save_adapter(model: nn.Module, directory: str | Path) -> Path:
    """Write ``adapter_model.safetensors`` and ``adapter_config.json`` (peft's layout) to ``directory``."""
    cfg = getattr(model, "lora_config", None)
    if cfg is None:
        raise ValueError("the model has no LoRA adapters: call apply_lora first")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file(lora_state_dict(model), str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "task_type": None, "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
              "init_lora_weights": True, "inference_mode": True, "modules_to_save": None, "base_model_name_or_path": None, **cfg}  # fmt: skip
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))
    return out


def load_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """Apply the adapter configuration saved in ``directory`` (by us or by peft) and load its weights."""
    src = Path(directory)
    cfg = json.loads((src / "adapter_config.json").read_text())
    if cfg.get("peft_type") != "LORA" or cfg.get("use_rslora") or cfg.get("use_dora"):
        raise ValueError(f"{src}: only plain LoRA adapters are supported, got {cfg.get('peft_type')}")
    apply_lora(model, cfg["target_modules"], cfg["r"], cfg["lora_alpha"], cfg.get("lora_dropout", 0.0))
    state = load_file(str(src / "adapter_model.safetensors"))
    layers = dict(lora_layers(model))
    for key, value in state.items():
        path, _, param = key.removeprefix(PREFIX).rpartition(".lora_")
        target = {"A.weight": "lora_A", "B.weight": "lora_B"}.get(param)
        if path not in layers or target is None:
            raise ValueError(f"{src}: adapter key '{key}' has no matching LoRA layer in the model")
        getattr(layers[path], target).weight.data.copy_(value)
    return model
