"""Published model configurations and reference implementations for the interop tests.

Geneformer sizes are the published ``config.json`` values on the Hugging Face hub
(``ctheodoris/Geneformer``), read through the search tool:

- V1 (``gf-6L-30M-i2048``, renamed ``Geneformer-V1-10M``; commit c45a71b "upload Geneformer 6L-30M
  config"): BERT, 6 layers x 256, 4 heads, ffn 512, ``hidden_act`` relu, ``layer_norm_eps`` 1e-12,
  dropout 0.02 / 0.02, 2,048 positions, ``type_vocab_size`` 2, vocabulary 25,426.
- V2-104M (``Geneformer-V2-104M``; commit 7cf49a3 "add V2 models"): the V2 family's published
  settings (relu, 1e-12, dropout 0.02, 4,096 positions, ``type_vocab_size`` 2, vocabulary 20,275,
  as in ``gf-12L-95M-i4096/config.json``) at BERT-base sizes, 12 x 768, 12 heads, ffn 3,072:
  the 104M parameters of the model card (counted in ``test_v2_104m_parameter_count``). The V2-104M
  file itself was listed but its text was not retrievable; V2-316M's (18 x 1,152, 18 heads,
  ffn 4,608) fits the same pattern.

scGPT: the ``scGPT_human`` ``args.json`` values (embsize 512, nheads 8, d_hid 512, nlayers 12,
n_layers_cls 3, dropout 0.2, pad_value -2, mask_value -1, continuous value style, 51 bins,
max_seq_len 1200) and its 60,697-token ``vocab.json`` (the census vocabulary + ``<pad>``,
``<cls>``, ``<eoc>``).
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import torch

GF_V1 = dict(vocab_size=25_426, hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
             intermediate_size=512, hidden_act="relu", layer_norm_eps=1e-12,
             hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02,
             max_position_embeddings=2048, type_vocab_size=2, pad_token_id=0,
             initializer_range=0.02, position_embedding_type="absolute")
GF_V2_104M = {**GF_V1, "vocab_size": 20_275, "hidden_size": 768, "num_hidden_layers": 12,
              "num_attention_heads": 12, "intermediate_size": 3072,
              "max_position_embeddings": 4096}

SCGPT_HUMAN_ARGS = {"embsize": 512, "nheads": 8, "d_hid": 512, "nlayers": 12, "n_layers_cls": 3,
                    "dropout": 0.2, "pad_token": "<pad>", "pad_value": -2, "mask_value": -1,
                    "input_emb_style": "continuous", "n_bins": 51, "max_seq_len": 1200,
                    "cell_emb_style": "cls"}
SCGPT_WHEEL = "scgpt-0.2.4-py3-none-any.whl"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``: the relative error of ``a`` against the reference ``b``."""
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


def random_bert(cfg: dict[str, Any], *, seed: int = 0, head: bool = True, **over: Any
                ) -> torch.nn.Module:
    """A randomly initialised ``BertForMaskedLM`` (or ``BertModel`` when ``head=False``), eval.

    LayerNorm weights/biases and the decoder bias are randomised too (transformers initialises
    them to 1 and 0), so a converter that dropped or swapped one could not pass.
    """
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    conf = BertConfig(**{**cfg, **over})
    model = (BertForMaskedLM if head else BertModel)(conf)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(("predictions.bias", "decoder.bias")):
                p.add_(torch.randn_like(p) * 0.1)
            if "token_type" in name:
                p.normal_(0, 0.02)
    return model.eval()


def token_batch(vocab_size: int, *, lengths: list[int], cls_id: int = 2, eos_id: int = 3,
                pad_id: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded Geneformer-like rows (``<cls>`` genes ``<eos>``): ids and bool mask."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(4, vocab_size, (len(lengths), width), generator=g)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    for r, n in enumerate(lengths):
        ids[r, 0], ids[r, n - 1] = cls_id, eos_id
    return ids.masked_fill(~mask, pad_id), mask


def scgpt_reference_wheel() -> Path:
    """The scgpt 0.2.4 wheel ``make venv`` downloads (hash-checked) into ``<venv>/reference``."""
    wheel = Path(sys.prefix) / "reference" / SCGPT_WHEEL
    if not wheel.is_file():
        import pytest

        pytest.fail(f"{wheel} is missing: run `make venv` (it downloads the scGPT reference "
                    "wheel listed in requirements/reference.txt)")
    return wheel


@functools.cache
def scgpt_model_module() -> types.ModuleType:
    """scGPT's own ``scgpt/model/model.py`` (0.2.4), imported from the wheel, offline.

    ``import scgpt`` itself fails here (``scgpt/__init__`` imports its trainer, tasks and
    tokenizer: ``ModuleNotFoundError: No module named 'IPython'``, then ``torchtext`` for
    ``scgpt.tokenizer``), so empty parent packages stand in for ``scgpt`` (with the ``logger``
    its modules import) and ``scgpt.model``; ``model.py`` then imports as published, needing only
    torch, numpy and tqdm (flash-attn is optional there: it warns and uses
    ``nn.TransformerEncoder``).
    """
    wheel = scgpt_reference_wheel()
    saved = {k: v for k, v in sys.modules.items() if k == "scgpt" or k.startswith("scgpt.")}
    root = types.ModuleType("scgpt")
    root.__path__ = [f"{wheel}/scgpt"]  # type: ignore[attr-defined]
    import logging

    root.logger = logging.getLogger("scGPT")  # type: ignore[attr-defined]
    sub = types.ModuleType("scgpt.model")
    sub.__path__ = [f"{wheel}/scgpt/model"]  # type: ignore[attr-defined]
    sys.modules.update({"scgpt": root, "scgpt.model": sub})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "flash_attn is not installed"
            return importlib.import_module("scgpt.model.model")
    finally:  # leave no half-imported scgpt behind for other tests
        for k in [k for k in sys.modules if k == "scgpt" or k.startswith("scgpt.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def scgpt_vocab() -> dict[str, int]:
    """scGPT_human's vocab.json: the census vocabulary, then ``<pad>``, ``<cls>``, ``<eoc>``."""
    from scforge.resources import load_json

    base = dict(load_json("scgpt_census_vocab.json.gz"))
    n = max(base.values()) + 1
    return {**base, "<pad>": n, "<cls>": n + 1, "<eoc>": n + 2}


def save_scgpt_dir(out: Path, model: torch.nn.Module, args: dict[str, Any],
                   vocab: dict[str, int]) -> Path:
    """A scGPT checkpoint directory as scGPT publishes it."""
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "best_model.pt")
    (out / "args.json").write_text(json.dumps(args))
    (out / "vocab.json").write_text(json.dumps(vocab))
    return out
