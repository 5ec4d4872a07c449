"""Fine-tuning through the pretraining trainer: heads, LoRA, decayed LRs, unfreezing, predict."""

from __future__ import annotations

from scforge.finetune.lora import LoRALinear, apply_lora, lora_parameters, merge_lora
from scforge.finetune.model import FinetuneModel, FinetuneTask, load_finetuned, save_finetuned
from scforge.finetune.train import (
    FinetuneConfig,
    FinetuneTrainer,
    LoRAConfig,
    build_trainer,
    finetune,
    finetune_main,
    predict,
    predict_main,
)

__all__ = ["FinetuneConfig", "FinetuneModel", "FinetuneTask", "FinetuneTrainer", "LoRAConfig",
           "LoRALinear", "apply_lora", "build_trainer", "finetune", "finetune_main",
           "load_finetuned", "lora_parameters", "merge_lora", "predict", "predict_main",
           "save_finetuned"]
