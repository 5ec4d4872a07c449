"""Weight and config conversion between published checkpoints and scforge model families.

Pure functions over state dicts and config dicts (torch, safetensors and json only): no
vocabularies, tokenizers or export directories here. :mod:`scforge.interop` adds those and writes
scforge exports.

- :mod:`~scforge.models.convert.hf_bert`: Hugging Face ``BertForMaskedLM`` / ``BertModel``
  (Geneformer) <-> ``transformer_encoder`` with ``norm_placement="post"``.
- :mod:`~scforge.models.convert.scgpt`: scGPT ``TransformerModel`` state dict + ``args.json`` ->
  the ``scgpt`` family.
"""

from __future__ import annotations


class ConversionError(ValueError):
    """A checkpoint cannot be converted; the message names the reason and what to do."""


__all__ = ["ConversionError"]
