"""A pretrained encoder plus a task head; the trainer-facing objective; saving and loading.

:class:`FinetuneModel` maps a :class:`~scforge.contracts.Batch` to logits [B, C] or values [B].
:class:`FinetuneTask` wraps it for :class:`~scforge.training.trainer.Trainer`: its
``forward(batch)`` reads the labels from ``batch.obs[label_key]`` (class index mapping fixed
before training) and returns a :class:`~scforge.contracts.ModelOutput` (loss and ``acc`` or
``rmse``); its ``param_groups(weight_decay)`` gives the optimizer the layer groups with their
learning-rate factors and unfreeze steps (see :mod:`scforge.training.optim`).

A saved fine-tuned model (format ``scforge-finetuned`` v2) is a directory holding the pretraining
export of the fine-tuned encoder (``model.safetensors`` + ``config.json``, LoRA merged: ``scforge
embed`` and ``load_pretrained`` read it as any checkpoint) plus ``head.safetensors`` and
``finetune.json`` (task, classes or target scaling, head shape, pooling, the original checkpoint's
``config.json`` and the training history). v1 directories (one ``model.safetensors`` holding
encoder and head) still load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_model, save_model
from torch import nn

from scforge.contracts import Batch, ModelOutput
from scforge.models.layers import pool

POOLINGS = ("model", "cls", "mean", "cls_mean")
FORMAT = "scforge-finetuned"
VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS = "model.safetensors"
HEAD = "head.safetensors"
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


class FinetuneTask(nn.Module):
    """The module the trainer trains: ``net`` plus its supervised loss and optimizer groups.

    Args:
        net: the encoder + head.
        task: ``classification`` or ``regression``.
        label_key: the ``batch.obs`` field holding each cell's label (strings, as in shards).
        classes: class names in index order (classification).
        target_scale: (mean, std) regression targets are standardised with; the loss is the MSE
            of standardised targets, the logged ``rmse`` is in the label's own units.
        groups: ``weight_decay -> optimizer groups`` (see :func:`layer_groups`).
    """

    def __init__(self, net: FinetuneModel, *, task: str, label_key: str,
                 classes: list[str] | None, target_scale: tuple[float, float],
                 groups: Callable[[float], list[dict[str, Any]]]) -> None:
        super().__init__()
        if task == "classification" and not classes:
            raise ValueError("a classification task needs its class names")
        self.net = net
        self.task = task
        self.label_key = label_key
        self.index = {c: i for i, c in enumerate(classes or [])}
        self.mean, self.std = float(target_scale[0]), float(target_scale[1])
        self._groups = groups

    @property
    def config(self) -> Any:
        return self.net.config

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The optimizer groups (``lr_scale``, ``start_step``, ``name``; trainable only)."""
        return self._groups(weight_decay)

    def targets(self, batch: Batch) -> torch.Tensor:
        """Class indices (long [B]) or standardised values (float [B]) of the batch's cells."""
        labels = batch.obs.get(self.label_key)
        if labels is None:
            raise ValueError(f"the batch carries no obs field {self.label_key!r}; the shards "
                             "must be written with it (source.obs_fields)")
        if self.task == "regression":
            y = torch.tensor([float(v) for v in labels], dtype=torch.float32)
            return (y - self.mean) / self.std
        try:
            return torch.tensor([self.index[str(v)] for v in labels], dtype=torch.long)
        except KeyError as e:
            raise ValueError(f"label {e.args[0]!r} is not one of the {len(self.index)} classes "
                             "fixed before training") from None

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.net(batch)
        target = self.targets(batch).to(out.device)
        if self.task == "classification":
            loss = F.cross_entropy(out.float(), target)
            acc = float((out.detach().argmax(-1) == target).float().mean())
            return ModelOutput(loss=loss, metrics={"acc": acc}, logits=out.detach())
        loss = F.mse_loss(out.float(), target)
        return ModelOutput(loss=loss, metrics={"rmse": math.sqrt(float(loss.detach())) * self.std},
                           logits=out.detach())


def save_finetuned(model: FinetuneModel, out: str | Path, meta: dict[str, Any], *,
                   manifest: dict[str, Any] | None = None,
                   extra: dict[str, Any] | None = None) -> Path:
    """Writes a fine-tuned model (LoRA must already be merged): the encoder as a pretraining
    export, the head, and ``finetune.json`` (``meta`` must hold ``pretrained``, the original
    export's ``config.json``)."""
    from scforge.training.export import export_pretrained

    out = Path(out)
    model = model.cpu()
    info = meta["pretrained"]
    man = manifest or {k: info.get(k) for k in ("vocab", "vocab_hash", "tokenizer")}
    export_pretrained(out, model.encoder.config, model.encoder.state_dict(), manifest=man,
                      extra={"finetuned": True, **(extra or {})})
    save_model(model.head, str(out / HEAD), metadata={"format": FORMAT, "version": str(VERSION)})
    (out / CONFIG).write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta},
                                         indent=1, default=str) + "\n")
    return out


def finetuned_dir(path: str | Path) -> Path:
    """The model directory: ``path`` itself, or the ``export/`` of a fine-tuning run directory.

    Raises:
        FileNotFoundError: neither holds a ``finetune.json``.
    """
    path = Path(path)
    for cand in (path / "export", path):  # a run directory's export wins over stale files
        if (cand / CONFIG).is_file():
            return cand
    raise FileNotFoundError(f"{path / CONFIG} does not exist; pass a directory written by "
                            "finetune (its run directory or <run>/export)")


def load_finetuned(path: str | Path, *, device: str | torch.device = "cpu"
                   ) -> tuple[FinetuneModel, dict[str, Any]]:
    """Rebuilds a fine-tuned model (eval mode) and returns it with its ``finetune.json``.

    Args:
        path: the model directory or the fine-tuning run directory (its ``export/`` is used).
        device: where to put the weights.
    """
    from scforge.models import ModelConfig, get_model
    from scforge.training.export import load_pretrained

    path = finetuned_dir(path)
    file = path / CONFIG
    meta = json.loads(file.read_text())
    version = meta.get("version")
    if meta.get("format") != FORMAT or version not in READABLE_VERSIONS:
        raise ValueError(f"{file}: format {meta.get('format')!r} v{version}; this scforge "
                         f"reads {FORMAT!r} v{'/v'.join(map(str, READABLE_VERSIONS))}")
    if version == 1:  # one safetensors file holding encoder.* and head.*
        encoder = get_model(ModelConfig(**meta["pretrained"]["model"]))
    else:
        encoder = load_pretrained(path, device="cpu")
    model = FinetuneModel(encoder, int(meta["n_outputs"]), hidden=int(meta["head_hidden"]),
                          dropout=0.0, pooling=str(meta.get("pooling", "model")))
    if version == 1:
        load_model(model, str(path / WEIGHTS), strict=True, device="cpu")
    else:
        load_model(model.head, str(path / HEAD), strict=True, device="cpu")
    return model.to(device).eval(), meta
