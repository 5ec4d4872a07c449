"""Fine-tuning: classification/regression heads, LoRA, decayed learning rates, prediction."""

from __future__ import annotations

from scforge.finetune.lora import LoRALinear, apply_lora, lora_parameters, merge_lora
from scforge.finetune.model import FinetuneModel, load_finetuned, save_finetuned
from scforge.finetune.train import (
    FinetuneConfig,
    LoRAConfig,
    finetune,
    finetune_main,
    predict,
    predict_main,
)

__all__ = ["FinetuneConfig", "FinetuneModel", "LoRAConfig", "LoRALinear", "apply_lora",
           "finetune", "finetune_main", "load_finetuned", "lora_parameters", "merge_lora",
           "predict", "predict_main", "save_finetuned"]
