"""A pretrained encoder plus a task head; layer groups for decayed learning rates and unfreezing.

Saved fine-tuned models are self-contained: ``model.safetensors`` (encoder with any LoRA merged,
plus head) and ``finetune.json`` (the pretrained export's ``config.json``, which rebuilds the
encoder and its tokenizer, the head, the class names or target scaling).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from scforge.contracts import Batch
from scforge.models.layers import pool

POOLINGS = ("model", "cls", "mean", "cls_mean")
FORMAT = "scforge-finetuned"
VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "finetune.json"


class FinetuneModel(nn.Module):
    """``head(encoder.encode(batch))``: logits [B, C] (classification) or values [B] (regression).

    Args:
        encoder: a pretrained :class:`~scforge.models.SingleCellModel`.
        n_outputs: classes (classification) or 1 (regression).
        hidden: width of a hidden layer in the head (0 = a linear head).
        dropout: dropout on the cell embedding.
        pooling: cell embedding the head reads: ``model`` (the encoder's own ``encode``),
            ``cls`` (position 0), ``mean`` (mean of real tokens) or ``cls_mean`` (both,
            concatenated: the head sees the pretrained summary and every gene's state).
    """

    def __init__(self, encoder: nn.Module, n_outputs: int, *, hidden: int = 0,
                 dropout: float = 0.1, pooling: str = "model") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; choose one of {list(POOLINGS)}")
        self.encoder = encoder
        self.pooling = pooling
        d = int(encoder.config.hidden_size) * (2 if pooling == "cls_mean" else 1)
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden > 0:
            layers += [nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout)]
            d = hidden
        layers.append(nn.Linear(d, n_outputs))
        self.head = nn.Sequential(*layers)
        self.n_outputs = n_outputs

    @property
    def config(self) -> Any:
        return self.encoder.config

    def embed(self, batch: Batch) -> torch.Tensor:
        """The pooled cell embedding [B, D] (or [B, 2D] for ``cls_mean``) fed to the head."""
        if self.pooling == "model":
            return self.encoder.encode(batch)
        hidden, keys = self.encoder.encode_tokens(batch)
        if self.pooling == "cls_mean":
            return torch.cat([pool(hidden, keys, "cls"), pool(hidden, keys, "mean")], dim=-1)
        return pool(hidden, keys, self.pooling)

    def forward(self, batch: Batch) -> torch.Tensor:
        out = self.head(self.embed(batch))
        return out.squeeze(-1) if self.n_outputs == 1 else out


def encoder_units(encoder: nn.Module) -> list[list[nn.Module]]:
    """The encoder's layer groups, top first: ``[final norm + last block], ..., [first block],
    [embedding]``; the modules ``encode`` actually uses (decoders and MLM heads are left out)."""
    stack = getattr(encoder, "encoder", None) or getattr(encoder, "decoder", None)
    embed = getattr(encoder, "embed", None)
    if stack is None or embed is None or not hasattr(stack, "blocks"):
        raise ValueError(f"{type(encoder).__name__} has no embed + TransformerStack to fine-tune")
    blocks = list(stack.blocks)
    units: list[list[nn.Module]] = [[stack.norm, blocks[-1]]]
    units += [[b] for b in reversed(blocks[:-1])]
    units.append([embed])
    return units


def unit_params(unit: list[nn.Module]) -> list[nn.Parameter]:
    return [p for m in unit for p in m.parameters()]


def save_finetuned(model: FinetuneModel, out: str | Path, meta: dict[str, Any]) -> Path:
    """Writes the fine-tuned model (LoRA must already be merged) and its ``finetune.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_model(model.cpu(), str(out / WEIGHTS), metadata={"format": FORMAT,
                                                          "version": str(VERSION)})
    (out / CONFIG).write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta},
                                         indent=1, default=str) + "\n")
    return out


def load_finetuned(path: str | Path, *, device: str | torch.device = "cpu"
                   ) -> tuple[FinetuneModel, dict[str, Any]]:
    """Rebuilds a fine-tuned model (eval mode) and returns it with its ``finetune.json``."""
    from scforge.models import ModelConfig, get_model

    file = Path(path) / CONFIG
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; pass a directory written by finetune")
    meta = json.loads(file.read_text())
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(f"{file}: format {meta.get('format')!r} v{meta.get('version')}; "
                         f"this scforge reads {FORMAT!r} v{VERSION}")
    encoder = get_model(ModelConfig(**meta["pretrained"]["model"]))
    model = FinetuneModel(encoder, int(meta["n_outputs"]), hidden=int(meta["head_hidden"]),
                          dropout=0.0, pooling=str(meta.get("pooling", "model")))
    load_model(model, str(Path(path) / WEIGHTS), strict=True, device=str(device))
    return model.to(device).eval(), meta
