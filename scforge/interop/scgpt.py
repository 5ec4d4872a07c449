"""scGPT checkpoint directories (``args.json``, ``vocab.json``, ``best_model.pt``) as scforge
exports of the ``scgpt`` family, tokenized with the scGPT recipe (51 per-cell quantile bins
over the checkpoint's own gene vocabulary, ``<cls>`` first, genes in input order).

``best_model.pt`` is read with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from scforge.interop.hf import ForeignCheckpoint
from scforge.interop.recipes import build_recipe, manifest_of
from scforge.models import ModelConfig, count_parameters, get_model
from scforge.models.convert import scgpt as convert
from scforge.models.convert.weights import load_torch_weights
from scforge.training.export import FORMAT, VERSION

FILES = ("args.json", "vocab.json", "best_model.pt")
POOLINGS = ("cls", "mean")


def is_scgpt_dir(path: str | Path) -> bool:
    """True when ``path`` holds scGPT's three checkpoint files."""
    return all((Path(path) / f).is_file() for f in FILES)


def _read_json(file: Path) -> dict[str, Any]:
    try:
        obj = json.loads(file.read_text())
    except ValueError as exc:
        raise ValueError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{file} holds a {type(obj).__name__}, expected an object")
    return obj


def scgpt_checkpoint(path: str | Path, *, max_length: int = 0, pooling: str = ""
                     ) -> ForeignCheckpoint:
    """A scGPT directory as scforge sees it (nothing written).

    Args:
        path: directory with ``args.json``, ``vocab.json`` and ``best_model.pt``.
        max_length: tokens per cell of the recorded tokenizer (0 = ``max_seq_len`` of
            ``args.json``, else 1,200).
        pooling: ``cls`` / ``mean``; "" = ``cell_emb_style`` of ``args.json`` (default ``cls``).

    Raises:
        FileNotFoundError, ValueError: missing files, or a model the family cannot reproduce.
    """
    path = Path(path)
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} lacks {missing}; a scGPT checkpoint directory holds "
                                f"{list(FILES)}")
    if pooling not in ("", *POOLINGS):
        raise ValueError(f"--pooling {pooling!r}; use one of {list(POOLINGS)}")
    args = _read_json(path / "args.json")
    raw = load_torch_weights(path / "best_model.pt", mmap=True)
    fields = convert.model_fields(args, raw)
    max_length = max_length or int(args.get("max_seq_len") or 1200)
    tokenizer = build_recipe("scgpt", max_length=max_length,
                             token_dictionary=str(path / "vocab.json"),
                             n_bins=int(args.get("n_bins") or 51))
    vocab = tokenizer.vocab
    pad_token = str(args.get("pad_token", "<pad>"))
    if pad_token not in vocab.tokens:
        raise ValueError(f"args.json pad_token {pad_token!r} is not in vocab.json")
    top = max(t for g, t in vocab.tokens.items() if g != "<mask>")
    if top >= fields["vocab_size"]:
        raise ValueError(f"vocab.json has ids up to {top:,} but the model embeds "
                         f"{fields['vocab_size']:,} tokens; vocab.json belongs to another model")
    fields.update(vocab_size=max(fields["vocab_size"], vocab.size),
                  pad_token_id=vocab.tokens[pad_token], mask_token_id=vocab.tokens["<mask>"],
                  cls_token_id=vocab.tokens["<cls>"],
                  max_len=max(fields["max_len"], tokenizer.cfg.max_length))
    if pooling:
        fields["pooling"] = pooling
    cfg = ModelConfig(**fields)
    cfg.validate(require_vocab=True)
    man = manifest_of(tokenizer, "scgpt")
    with torch.device("meta"):
        n_params = count_parameters(get_model(cfg))
    info: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "model": dataclasses.asdict(cfg),
        "parameters": n_params, "vocab": man["vocab"], "vocab_hash": man["vocab_hash"],
        "tokenizer": man["tokenizer"], "step": -1,
        "imported": {"kind": "scgpt", "path": str(path.resolve()), "weights": "best_model.pt",
                     "recipe": "scgpt", "args": args},
    }

    def state() -> dict[str, torch.Tensor]:
        converted, notes = convert.to_scforge(load_torch_weights(path / "best_model.pt"), fields,
                                              vocab_size=cfg.vocab_size)
        info["imported"]["dropped"] = notes["dropped"]
        return converted

    return ForeignCheckpoint("scgpt", path, info, state)


def import_scgpt(path: str | Path, out: str | Path, **kw: Any) -> Path:
    """Writes the scforge export of a scGPT checkpoint directory (see :func:`scgpt_checkpoint`)."""
    from scforge.interop.hf import write_export

    return write_export(scgpt_checkpoint(path, **kw), out)
