"""Published checkpoints in and out of scforge: Hugging Face BERT (Geneformer) and scGPT.

Sits above ``data`` (vocabularies, tokenizer recipes), ``models`` (the pure weight conversions
in :mod:`scforge.models.convert`) and ``training.export`` (the export format), and below the CLI.

- :func:`open_foreign`: a Hugging Face BERT or scGPT directory read in place; this is how
  ``load_pretrained`` / ``read_pretrained_info`` (and so ``scforge embed``, ``evaluate``,
  ``finetune``) accept such a directory wherever an export is expected.
- :func:`import_hf`, :func:`import_scgpt`: write it as a normal scforge export.
- :func:`export_hf`: a ``BertForMaskedLM`` directory from a post-LN scforge export.
"""

from __future__ import annotations

import json
from pathlib import Path

from scforge.interop.hf import ForeignCheckpoint, export_hf, hf_checkpoint, import_hf
from scforge.interop.scgpt import import_scgpt, is_scgpt_dir, scgpt_checkpoint


def detect_format(path: str | Path) -> str | None:
    """``scforge``, ``hf_bert``, ``scgpt`` or None (not a model directory scforge reads)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
        except ValueError:
            return None
        if isinstance(cfg, dict) and cfg.get("format") == "scforge-pretrained":
            return "scforge"
        from scforge.models.convert.hf_bert import is_bert_config

        if isinstance(cfg, dict) and is_bert_config(cfg):
            return "hf_bert"
    if is_scgpt_dir(path):
        return "scgpt"
    return None


def open_foreign(path: str | Path) -> ForeignCheckpoint | None:
    """The checkpoint at ``path`` when it is a Hugging Face BERT or scGPT directory, else None.

    Default import settings apply (vocabulary by size, the recipe's token length, mean pooling
    for BERT); ``scforge import`` writes an export when other settings are wanted.
    """
    kind = detect_format(path)
    if kind == "hf_bert":
        return hf_checkpoint(path)
    if kind == "scgpt":
        return scgpt_checkpoint(path)
    return None


__all__ = ["ForeignCheckpoint", "detect_format", "export_hf", "hf_checkpoint", "import_hf",
           "import_scgpt", "open_foreign", "scgpt_checkpoint"]
