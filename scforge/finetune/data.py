"""Labelled cells -> train/validation shards tokenized exactly like the pretrained checkpoint.

Fine-tuning trains through the pretraining :class:`~scforge.training.trainer.Trainer`, which
reads scforge shards; so the labelled AnnData (after ``train_filter`` / ``max_cells``) is split
into seeded train and validation cells and each part is sharded with the checkpoint's own
vocabulary and tokenizer settings (rebuilt from its ``config.json``), the label column passed
through as an obs field. The written manifests are then checked against the checkpoint (vocabulary
hash and full tokenizer description) and refused on any difference.

Layout under ``<out_dir>/data/``: ``train/`` and ``val/`` (shard directories) and
``labels.json`` (classes or target scaling, cell counts, and a fingerprint of the inputs). A rerun
with the same inputs reuses the shards, so ``resume=auto`` continues on exactly the same data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scforge.eval.tokenize import CheckpointMismatchError, check_same_tokenizer

LABELS = "labels.json"
LABEL_FORMAT = "scforge-finetune-data"
LABEL_VERSION = 1


@dataclass
class LabelledData:
    """What :func:`prepare_shards` wrote (or found): shard directories and the label space."""

    train: Path
    val: Path | None
    classes: list[str] | None
    """Class names in index order (classification), None for regression."""
    target_scale: tuple[float, float]
    """(mean, std) regression targets are standardised with; (0, 1) for classification."""
    n_train: int
    n_val: int


def filter_cells(adata: Any, keep: dict[str, list[str]]) -> Any:
    """The cells whose obs columns take one of the listed values (``train_filter``)."""
    mask = np.ones(adata.n_obs, dtype=bool)
    for col, vals in keep.items():
        if col not in adata.obs:
            raise ValueError(f"train_filter: obs has no column {col!r}")
        mask &= adata.obs[col].astype(str).isin([str(v) for v in vals]).to_numpy()
    if not mask.any():
        raise ValueError(f"train_filter={keep} keeps no cell")
    return adata[mask].copy()


def label_space(values: Any, task: str) -> tuple[list[str] | None, tuple[float, float]]:
    """Sorted class names (classification) or (mean, std) of the targets (regression).

    Raises:
        ValueError: non-numeric or missing regression targets, or fewer than two classes.
    """
    if task == "regression":
        try:
            y = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("task=regression needs a numeric label_key column") from None
        if not np.isfinite(y).all():
            raise ValueError("the regression label column holds NaN or infinite values; drop "
                             "those cells first")
        return None, (float(y.mean()), float(y.std() or 1.0))
    classes = sorted(set(np.asarray(values).astype(str)))
    if len(classes) < 2:
        raise ValueError(f"the label column has {len(classes)} class(es) {classes}; a "
                         "classifier needs at least two")
    return classes, (0.0, 1.0)


def shard_config(info: dict[str, Any], *, label_key: str, layer: str, cells_per_shard: int
                 ) -> Any:
    """The :class:`~scforge.config.ShardJobConfig` reproducing the checkpoint's tokenization.

    Raises:
        CheckpointMismatchError: the export records no vocabulary/tokenizer, or a custom JSON
            vocabulary (whose file the export does not carry).
    """
    from scforge.config.schema import (
        QCConfig,
        ShardConfig,
        ShardJobConfig,
        SourceConfig,
        TokenizerConfig,
        VocabConfig,
    )

    vocab_d, tok_d = info.get("vocab") or {}, info.get("tokenizer") or {}
    if not vocab_d or not tok_d:
        raise CheckpointMismatchError(
            "the checkpoint records no vocabulary/tokenizer (exported without the shards' "
            "manifest); re-export it with export_pretrained(..., manifest=...)")
    name = str(vocab_d.get("name", ""))
    if name not in ("geneformer_v2", "geneformer_v1", "scgpt"):
        raise CheckpointMismatchError(
            f"the checkpoint's vocabulary {name!r} is a custom JSON; fine-tuning supports the "
            "bundled vocabularies (geneformer_v2, geneformer_v1, scgpt)")
    tcfg = TokenizerConfig(strategy=str(tok_d["strategy"]), max_length=int(tok_d["max_length"]),
                           special_tokens=bool(tok_d["special_tokens"]))
    sub = getattr(tcfg, tcfg.strategy)
    setattr(tcfg, tcfg.strategy, dataclasses.replace(sub, **tok_d.get("options", {})))
    cfg = ShardJobConfig(
        source=SourceConfig(layer=layer, obs_fields=[label_key],
                            qc=QCConfig(filter_pass_column="")),  # every labelled cell is kept
        vocab=VocabConfig(kind=name, id_mapping="auto" if vocab_d.get("id_mapping") else "none"),
        tokenizer=tcfg,
        shard=ShardConfig(cells_per_shard=cells_per_shard, workers=1))
    cfg.validate()
    return cfg


def _fingerprint(adata: Any, label_key: str, info: dict[str, Any], extra: dict[str, Any]) -> str:
    import scipy.sparse as sp

    h = hashlib.sha256()
    h.update(json.dumps([info.get("vocab_hash"), info.get("tokenizer"), extra],
                        sort_keys=True, default=str).encode())
    h.update("\n".join(map(str, adata.obs_names)).encode())
    h.update("\n".join(adata.obs[label_key].astype(str)).encode())
    x = adata.X
    if sp.issparse(x):
        x = sp.csr_matrix(x)
        for arr in (x.indptr, x.indices, x.data):
            h.update(np.ascontiguousarray(arr).tobytes())
    else:
        h.update(np.ascontiguousarray(np.asarray(x)).tobytes())
    return h.hexdigest()[:32]


def _plain(adata: Any, label_key: str) -> Any:
    """A minimal AnnData to shard: counts in X, var as is, the label as strings."""
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame({label_key: adata.obs[label_key].astype(str).to_numpy()},
                       index=[str(n) for n in adata.obs_names])
    return ad.AnnData(X=adata.X, obs=obs, var=adata.var.copy())


def _matrix_view(adata: Any, layer: str) -> Any:
    """``adata`` with ``layer`` moved into X (``X``, ``raw/X`` or ``layers/<name>``)."""
    import anndata as ad

    if layer == "X":
        return adata
    if layer == "raw/X":
        if adata.raw is None:
            raise ValueError("layer=raw/X but the AnnData has no .raw")
        return ad.AnnData(X=adata.raw.X, obs=adata.obs, var=adata.raw.var)
    if layer.startswith("layers/"):
        name = layer.split("/", 1)[1]
        if name not in adata.layers:
            raise ValueError(f"layer={layer!r}: no such layer; layers: {list(adata.layers)}")
        return ad.AnnData(X=adata.layers[name], obs=adata.obs, var=adata.var)
    raise ValueError(f"layer={layer!r}; use X, raw/X or layers/<name>")


def _write_part(adata: Any, info: dict[str, Any], out: Path, *, label_key: str,
                cells_per_shard: int) -> Path:
    from scforge.data.shard import ShardJob, load_manifest

    out.parent.mkdir(parents=True, exist_ok=True)
    h5ad = out.with_suffix(".h5ad")
    _plain(adata, label_key).write_h5ad(h5ad)
    cfg = shard_config(info, label_key=label_key, layer="X", cells_per_shard=cells_per_shard)
    ShardJob([str(h5ad)], out, cfg, progress=False).run()
    h5ad.unlink()
    man = load_manifest(out)
    if man.get("vocab_hash") != info.get("vocab_hash"):
        raise CheckpointMismatchError(
            f"the labelled cells were tokenized with vocabulary hash {man.get('vocab_hash')}, "
            f"the checkpoint with {info.get('vocab_hash')}")
    check_same_tokenizer(man.get("tokenizer", {}), info.get("tokenizer", {}),
                         where="the fine-tuning shards' tokenizer")
    return out


def prepare_shards(adata: Any, info: dict[str, Any], root: Path, *, task: str, label_key: str,
                   layer: str = "X", val_fraction: float, seed: int,
                   cells_per_shard: int = 4096,
                   before_rebuild: Callable[[], None] | None = None) -> LabelledData:
    """Splits labelled cells (seeded), shards both parts like the checkpoint, records labels.

    Args:
        adata: the labelled cells (already filtered and subsampled).
        info: the pretrained export's ``config.json``.
        root: ``<out_dir>/data``; reused when its fingerprint matches, else rebuilt.
        task: ``classification`` or ``regression``.
        label_key: obs column of the labels (passed through into the shards).
        layer: matrix holding raw counts.
        val_fraction: share of cells held out for validation (0 = none).
        seed: seeds the split.
        cells_per_shard: cells per shard file.
        before_rebuild: called before shards of other inputs under ``root`` are deleted (it may
            raise to refuse, e.g. when checkpoints of the old data would be resumed).

    Raises:
        ValueError: a missing label column, bad labels, too few cells, or a tokenization that
            does not reproduce the checkpoint's (:class:`CheckpointMismatchError`).
    """
    if label_key not in adata.obs:
        raise ValueError(f"label_key={label_key!r} is not an obs column; columns: "
                         f"{sorted(map(str, adata.obs.columns))[:20]}")
    adata = _matrix_view(adata, layer)
    classes, scale = label_space(adata.obs[label_key].to_numpy(), task)
    n_val = int(round(val_fraction * adata.n_obs))
    if adata.n_obs - n_val < 1:
        raise ValueError(f"{adata.n_obs} labelled cells with val_fraction={val_fraction} leave "
                         "none to train on")
    fp = _fingerprint(adata, label_key, info, {"task": task, "val_fraction": val_fraction,
                                                "seed": seed, "cells_per_shard": cells_per_shard})
    meta_file = root / LABELS
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("fingerprint") == fp and (root / "train" / "manifest.json").is_file():
            return _labelled(root, meta)
    if root.exists():
        if before_rebuild is not None:
            before_rebuild()
        shutil.rmtree(root)  # other cells or settings: these shards would be wrong
    perm = np.random.default_rng(seed).permutation(adata.n_obs)
    val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    kw = {"label_key": label_key, "cells_per_shard": cells_per_shard}
    _write_part(adata[train_idx], info, root / "train", **kw)
    if n_val:
        _write_part(adata[val_idx], info, root / "val", **kw)
    meta = {"format": LABEL_FORMAT, "version": LABEL_VERSION, "fingerprint": fp, "task": task,
            "label_key": label_key, "classes": classes, "target_scale": list(scale),
            "n_train": int(len(train_idx)), "n_val": int(n_val), "seed": seed}
    meta_file.write_text(json.dumps(meta, indent=1) + "\n")
    return _labelled(root, meta)


def _labelled(root: Path, meta: dict[str, Any]) -> LabelledData:
    return LabelledData(train=root / "train", val=root / "val" if meta["n_val"] else None,
                        classes=meta["classes"], target_scale=tuple(meta["target_scale"]),
                        n_train=int(meta["n_train"]), n_val=int(meta["n_val"]))


def read_labelled(root: Path) -> LabelledData:
    """What rank 0's :func:`prepare_shards` wrote (other ranks read it after a barrier)."""
    return _labelled(root, json.loads((root / LABELS).read_text()))
