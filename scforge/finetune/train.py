"""``scforge finetune`` / ``scforge predict``: supervised heads on a pretrained encoder.

A plain PyTorch loop (one process, CPU or one GPU): fine-tuning sets are small (thousands of
labelled cells), so the DeepSpeed trainer's sharding and resumable streams buy nothing here.
Features: classification or regression head; LoRA adapters on the attention projections;
layer-wise decayed learning rates (top block ``encoder_lr``, each lower group times
``layer_decay``); gradual unfreezing (head only in the first epoch, one more group from the top
each ``unfreeze_every`` epochs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scforge.eval.embed import resolve_device
from scforge.eval.tokenize import (
    TokenizedCells,
    checkpoint_tokenizer,
    pad_batch,
    seq_len_of,
    tokenize_adata,
)
from scforge.finetune.lora import (
    BACKENDS,
    apply_lora,
    lora_parameters,
    merge_lora,
    resolve_backend,
)
from scforge.finetune.model import (
    POOLINGS,
    FinetuneModel,
    encoder_units,
    load_finetuned,
    save_finetuned,
    unit_params,
)


@dataclass
class LoRAConfig:
    enabled: bool = False
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["qkv", "out"])
    """Attribute names of the nn.Linear layers to adapt (attention: ``qkv``, ``out``)."""
    backend: str = "auto"
    """``peft`` (Hugging Face PEFT), ``builtin`` (scforge's LoRALinear) or ``auto`` (peft when
    installed). Saved models have the adapters merged either way."""


@dataclass
class FinetuneConfig:
    """Schema of ``configs/finetune/*.yaml``."""

    checkpoint: str = ""
    data: str = ""
    out_dir: str = "runs/finetune"
    task: str = "classification"
    """``classification`` or ``regression``."""
    label_key: str = "cell_type"
    train_filter: dict[str, list[str]] = field(default_factory=dict)
    """Keep only cells whose obs column takes one of these values (e.g. one batch)."""
    max_cells: int = 0
    val_fraction: float = 0.1
    epochs: int = 4
    batch_size: int = 32
    max_len: int = 0
    """Truncation length; 0 = what the checkpoint was trained with."""
    head_hidden: int = 0
    head_dropout: float = 0.1
    pooling: str = "model"
    """Cell embedding the head reads: ``model`` (the encoder's pooling), ``cls``, ``mean`` or
    ``cls_mean`` (both concatenated)."""
    lr: float = 3e-3
    """Head learning rate."""
    encoder_lr: float = 1e-3
    """Learning rate of the top encoder group; lower groups get ``encoder_lr * layer_decay^k``."""
    layer_decay: float = 0.9
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    unfreeze_every: int = 0
    """Gradual unfreezing: one more group from the top every this many epochs (0 = all at once).
    With few epochs it starves the gene embedding, which matters most for small encoders."""
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    seed: int = 0
    device: str = "auto"
    layer: str = "X"
    progress: bool = True

    def validate(self) -> None:
        from scforge.config.loader import ConfigError

        if self.task not in ("classification", "regression"):
            raise ConfigError(f"task={self.task!r}; choose classification or regression")
        if not 0 < self.layer_decay <= 1:
            raise ConfigError(f"layer_decay={self.layer_decay} must be in (0, 1]")
        if self.lora.backend not in BACKENDS:
            raise ConfigError(f"lora.backend={self.lora.backend!r}; choose one of "
                              f"{list(BACKENDS)}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"pooling={self.pooling!r}; choose one of {list(POOLINGS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be >= 1")


def filter_cells(adata: Any, keep: dict[str, list[str]]) -> Any:
    mask = np.ones(adata.n_obs, dtype=bool)
    for col, vals in keep.items():
        if col not in adata.obs:
            raise ValueError(f"train_filter: obs has no column {col!r}")
        mask &= adata.obs[col].astype(str).isin([str(v) for v in vals]).to_numpy()
    if not mask.any():
        raise ValueError(f"train_filter={keep} keeps no cell")
    return adata[mask].copy()


def param_groups(model: FinetuneModel, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimizer groups: the head at ``lr``, encoder groups at decayed ``encoder_lr``.

    Weight decay applies to matrices only (not biases, norms, or adapters' zero-init B is fine).
    """
    groups: list[dict[str, Any]] = []

    def add(params: list[torch.nn.Parameter], lr: float, name: str) -> None:
        mats = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        if mats:
            groups.append({"params": mats, "lr": lr, "weight_decay": cfg.weight_decay,
                           "name": name})
        if rest:
            groups.append({"params": rest, "lr": lr, "weight_decay": 0.0, "name": name})

    add(list(model.head.parameters()), cfg.lr, "head")
    for depth, unit in enumerate(encoder_units(model.encoder)):
        add(unit_params(unit), cfg.encoder_lr * cfg.layer_decay ** depth, f"encoder{depth}")
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups


def set_trainable(model: FinetuneModel, n_units: int, *, lora: bool) -> int:
    """Head plus the top ``n_units`` encoder groups trainable (only adapters there under LoRA);
    returns the trainable parameter count."""
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(True)
    for unit in encoder_units(model.encoder)[:n_units]:
        params = [p for m in unit for p in lora_parameters(m)] if lora else unit_params(unit)
        for p in params:
            p.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _targets(values: Any, task: str, classes: list[str] | None = None
             ) -> tuple[np.ndarray, list[str] | None]:
    if task == "regression":
        return np.asarray(values, dtype=np.float32), None
    labels = np.asarray(values).astype(str)
    classes = classes or sorted(set(labels))
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index.get(v, -1) for v in labels], dtype=np.int64), classes


def _batches(cells: TokenizedCells, order: np.ndarray, size: int, **pad: Any):
    for a in range(0, len(order), size):
        idx = order[a:a + size]
        vals = None if cells.values is None else [cells.values[i] for i in idx]
        yield idx, pad_batch([cells.tokens[i] for i in idx], vals, **pad)


@torch.no_grad()
def predict_cells(model: FinetuneModel, cells: TokenizedCells, *, batch_size: int,
                  device: torch.device, **pad: Any) -> np.ndarray:
    """Raw outputs [N, C] (logits) or [N] (regression) in cell order."""
    model.eval()
    outs = [model(b.to(device)).float().cpu().numpy()
            for _, b in _batches(cells, np.arange(len(cells)), batch_size, **pad)]
    return np.concatenate(outs)


def finetune(cfg: FinetuneConfig, adata: Any | None = None) -> dict[str, Any]:
    """Fine-tunes ``cfg.checkpoint`` on labelled cells; saves to ``cfg.out_dir``.

    Args:
        cfg: the config.
        adata: labelled AnnData (default: read ``cfg.data``).

    Returns:
        A summary: per-epoch loss and validation metric, trainable counts, the output path.
    """
    import anndata as ad

    from scforge.training.export import load_pretrained, read_pretrained_info

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = resolve_device(cfg.device)
    info = read_pretrained_info(cfg.checkpoint)
    adata = ad.read_h5ad(cfg.data) if adata is None else adata
    adata = filter_cells(adata, cfg.train_filter) if cfg.train_filter else adata
    if cfg.max_cells and adata.n_obs > cfg.max_cells:
        adata = adata[np.sort(rng.choice(adata.n_obs, cfg.max_cells, replace=False))].copy()
    tokenizer = checkpoint_tokenizer(info)
    cells = tokenize_adata(adata, tokenizer, layer=cfg.layer)
    y, classes = _targets(adata.obs[cfg.label_key].to_numpy(), cfg.task)
    scale = (float(y.mean()), float(y.std() or 1.0)) if cfg.task == "regression" else (0.0, 1.0)
    y_fit = (y - scale[0]) / scale[1] if cfg.task == "regression" else y
    perm = rng.permutation(len(cells))
    n_val = int(round(cfg.val_fraction * len(cells)))
    val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]

    encoder = load_pretrained(cfg.checkpoint, device="cpu")
    model = FinetuneModel(encoder, len(classes) if classes else 1, hidden=cfg.head_hidden,
                          dropout=cfg.head_dropout, pooling=cfg.pooling)
    backend = resolve_backend(cfg.lora.backend) if cfg.lora.enabled else ""
    adapted = (apply_lora(encoder, targets=list(cfg.lora.targets), rank=cfg.lora.rank,
                          alpha=cfg.lora.alpha, dropout=cfg.lora.dropout, backend=backend)
               if cfg.lora.enabled else [])
    model.to(dev)
    opt = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.98))
    pad = {"max_len": cfg.max_len or seq_len_of(info, encoder.config.max_len),
           "pad_id": int(encoder.config.pad_token_id), "eos_id": tokenizer.eos_id}
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total, warm = cfg.epochs * steps_per_epoch, max(1, int(cfg.warmup_fraction * cfg.epochs
                                                            * steps_per_epoch))
    n_units = len(encoder_units(encoder))
    history, step, t0 = [], 0, time.perf_counter()
    for epoch in range(cfg.epochs):
        unfrozen = (n_units if cfg.unfreeze_every <= 0
                    else min(n_units, epoch // cfg.unfreeze_every))
        trainable = set_trainable(model, unfrozen, lora=cfg.lora.enabled)
        model.train()
        losses = []
        for idx, batch in _batches(cells, rng.permutation(train_idx), cfg.batch_size, **pad):
            lr_scale = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / total))
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * lr_scale
            out = model(batch.to(dev))
            target = torch.from_numpy(y_fit[idx]).to(dev)
            loss = (F.cross_entropy(out, target) if cfg.task == "classification"
                    else F.mse_loss(out, target))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad],
                                           1.0)
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
        rec = {"epoch": epoch, "loss": float(np.mean(losses)), "unfrozen_groups": unfrozen,
               "trainable": trainable}
        if n_val:
            pred = predict_cells(model, cells.subset(val_idx), batch_size=64, device=dev, **pad)
            rec["val"] = (float((pred.argmax(1) == y[val_idx]).mean())
                          if cfg.task == "classification"
                          else float(np.sqrt(np.mean((pred * scale[1] + scale[0]
                                                      - y[val_idx]) ** 2))))
        history.append(rec)
        if cfg.progress:
            print(f"[finetune] {json.dumps(rec)}")
    merge_lora(model)
    meta = {"pretrained": info, "task": cfg.task, "label_key": cfg.label_key,
            "classes": classes, "target_scale": list(scale), "n_outputs": model.n_outputs,
            "head_hidden": cfg.head_hidden, "pooling": cfg.pooling, "max_len": pad["max_len"],
            "lora": adapted, "lora_backend": backend,
            "config": dataclasses.asdict(cfg), "history": history}
    out = save_finetuned(model, cfg.out_dir, meta)
    return {"out": str(out), "history": history, "lora": adapted,
            "seconds": round(time.perf_counter() - t0, 1)}


def predict(finetuned_dir: str | Path, data: str | Path | Any, out: str | Path | None = None, *,
            key: str = "scforge_pred", batch_size: int = 64, device: str | None = "auto",
            layer: str = "X") -> Any:
    """Applies a fine-tuned model to new cells, writing ``obs[key]`` (class or value) and, for
    classifiers, ``obs[key + '_prob']`` (the winning class's probability)."""
    import anndata as ad

    dev = resolve_device(device)
    model, meta = load_finetuned(finetuned_dir, device=dev)
    adata = ad.read_h5ad(data) if isinstance(data, str | Path) else data.copy()
    tokenizer = checkpoint_tokenizer(meta["pretrained"])
    cells = tokenize_adata(adata, tokenizer, layer=layer)
    raw = predict_cells(model, cells, batch_size=batch_size, device=dev,
                        max_len=int(meta["max_len"]), pad_id=int(model.config.pad_token_id),
                        eos_id=tokenizer.eos_id)
    if meta["task"] == "classification":
        prob = torch.softmax(torch.from_numpy(raw), dim=1).numpy()
        adata.obs[key] = np.asarray(meta["classes"], dtype=object)[prob.argmax(1)]
        adata.obs[f"{key}_prob"] = prob.max(1)
    else:
        mean, std = meta["target_scale"]
        adata.obs[key] = raw * std + mean
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        adata.write_h5ad(out)
    return adata


def finetune_main(argv: list[str] | None = None) -> int:
    """``scforge finetune --config configs/finetune/<x>.yaml [key=value ...]``."""
    from scforge.config.loader import ConfigError, load_config

    ap = argparse.ArgumentParser(prog="scforge finetune",
                                 description="Fine-tune a pretrained encoder with a task head.")
    ap.add_argument("--config", action="append", default=[])
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args(argv)
    try:
        res = finetune(load_config(FinetuneConfig, args.config, args.overrides))
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"scforge finetune: error: {e}")
        return 2
    print(json.dumps(res, indent=1))
    return 0


def predict_main(argv: list[str] | None = None) -> int:
    """``scforge predict --model DIR --data X.h5ad --out Y.h5ad [--key scforge_pred]``."""
    ap = argparse.ArgumentParser(prog="scforge predict",
                                 description="Apply a fine-tuned model; predictions -> obs.")
    ap.add_argument("--model", required=True, help="fine-tuned model directory")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--key", default="scforge_pred")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    try:
        predict(args.model, args.data, args.out, key=args.key, batch_size=args.batch_size,
                device=args.device)
    except (ValueError, FileNotFoundError) as e:
        print(f"scforge predict: error: {e}")
        return 2
    print(f"wrote {args.out}: obs[{args.key!r}]")
    return 0
