"""``ds.peft``: parameter-efficient fine-tuning (LoRA) on any ``nn.Module`` with ``nn.Linear`` layers."""

from deepseek.peft.lora import (
    LoRALinear,
    apply_lora,
    load_adapter,
    lora_parameters,
    lora_state_dict,
    merge,
    save_adapter,
    unmerge,
)

__all__ = [
    "LoRALinear",
    "apply_lora",
    "load_adapter",
    "lora_parameters",
    "lora_state_dict",
    "merge",
    "save_adapter",
    "unmerge",
]
