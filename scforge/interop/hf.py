"""Hugging Face BERT directories (Geneformer) in and out of scforge exports.

- :func:`hf_checkpoint` reads a ``BertForMaskedLM`` / ``BertModel`` directory in place: the
  scforge ``config.json`` it corresponds to (model config, vocabulary, tokenizer recipe) and its
  weights under ``transformer_encoder`` names. ``load_pretrained(DIR)`` and every command that
  takes an export accept such a directory directly through it.
- :func:`import_hf` writes that as a normal export (``model.safetensors`` + ``config.json``).
- :func:`export_hf` writes a ``BertForMaskedLM`` directory from a post-LN scforge export:
  ``config.json``, ``model.safetensors``, ``token_dictionary.json`` (JSON, never a pickle) and
  ``scforge.json`` (the tokenizer description, so importing it back restores the same recipe).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch

from scforge.interop.recipes import (
    RECIPES,
    build_recipe,
    check_not_pickle,
    geneformer_recipe,
    manifest_of,
)
from scforge.interop.recipes import write_token_dictionary as _write_dictionary
from scforge.models import ModelConfig, count_parameters, get_model
from scforge.models.convert import hf_bert
from scforge.training.export import FORMAT, VERSION

SCFORGE_SIDECAR = "scforge.json"
"""Written next to an exported BERT: the tokens it expects, read back on import."""
TOKEN_DICTIONARY = "token_dictionary.json"
POOLINGS = ("mean", "cls")


@dataclasses.dataclass
class ForeignCheckpoint:
    """A published checkpoint read in place: scforge ``info`` and a loader for its weights."""

    kind: str
    path: Path
    info: dict[str, Any]
    _state: Any

    def state(self) -> dict[str, torch.Tensor]:
        """The full scforge state dict (missing heads filled with a seeded initialisation)."""
        return self._state()


def _specials(vocab_tokens: dict[str, int], fields: dict[str, Any]) -> dict[str, Any]:
    pad = vocab_tokens.get("<pad>", fields.get("pad_token_id", 0))
    mask = vocab_tokens.get("<mask>", 1 if pad != 1 else 2)
    cls = vocab_tokens.get("<cls>")
    if cls is None:  # V1 has no <cls>: any id distinct from pad/mask (used by no computation)
        cls = next(i for i in range(3) if i not in (pad, mask))
    return {"pad_token_id": int(pad), "mask_token_id": int(mask), "cls_token_id": int(cls)}


def _recorded_tokens(path: Path) -> dict[str, Any] | None:
    """The tokenizer recorded by :func:`export_hf`, if this directory was written by it."""
    file = path / SCFORGE_SIDECAR
    return json.loads(file.read_text()) if file.is_file() else None


def hf_checkpoint(path: str | Path, *, vocab: str = "auto", token_dictionary: str = "",
                  gene_medians: str = "", max_length: int = 0, pooling: str = "",
                  weights: bool = True) -> ForeignCheckpoint:
    """A Hugging Face BERT directory as scforge sees it (nothing is written).

    Args:
        path: directory with ``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``.
        vocab: ``auto`` (by vocabulary size: 20,275 -> Geneformer V2, 25,426 -> V1; or the
            ``token_dictionary.json`` / ``scforge.json`` written by :func:`export_hf`),
            ``geneformer_v1`` or ``geneformer_v2``.
        token_dictionary: the model's token dictionary (JSON), when it is not a bundled one.
        gene_medians: gene medians (JSON) for a custom dictionary.
        max_length: tokens per cell of the recorded tokenizer (0 = the recipe's, 4,096 / 2,048,
            or the model's ``max_position_embeddings`` when smaller).
        pooling: cell embedding of ``scforge embed``: ``mean`` over real tokens (what
            Geneformer's EmbExtractor computes) or ``cls``; "" = the one recorded by
            :func:`export_hf`, else ``mean``.
        weights: check that a weight file exists (False: config only).

    Raises:
        ValueError, FileNotFoundError: the directory is not a convertible BERT, or the vocabulary
        cannot be determined; messages say what to pass.
    """
    path = Path(path)
    for file, what in ((token_dictionary, "token dictionary"), (gene_medians, "gene medians")):
        if file:
            check_not_pickle(file, what)
    hf_cfg = hf_bert.read_config(path)
    if not hf_bert.is_bert_config(hf_cfg):
        raise ValueError(f"{path / 'config.json'} is not a BERT config (model_type="
                         f"{hf_cfg.get('model_type')!r}); scforge imports BertForMaskedLM / "
                         "BertModel directories (Geneformer)")
    if pooling not in ("", *POOLINGS):
        raise ValueError(f"--pooling {pooling!r}; use one of {list(POOLINGS)}")
    fields = hf_bert.model_fields(hf_cfg)
    recorded = _recorded_tokens(path)
    if not token_dictionary and (path / TOKEN_DICTIONARY).is_file() and vocab == "auto":
        token_dictionary = str(path / TOKEN_DICTIONARY)
    if recorded is not None and vocab == "auto":  # written by export_hf: the exact tokenizer
        from scforge.eval.tokenize import checkpoint_tokenizer

        recipe = str(recorded.get("recipe") or recorded["vocab"].get("name", ""))
        if max_length:
            recorded = {**recorded, "tokenizer": {**recorded["tokenizer"],
                                                  "max_length": max_length}}
        tokenizer = checkpoint_tokenizer(recorded, token_dictionary=token_dictionary
                                         if recorded["vocab"].get("name") not in RECIPES else "",
                                         gene_medians=gene_medians)
        if not pooling and recorded.get("pooling") in POOLINGS:
            pooling = str(recorded["pooling"])
    else:
        recipe = geneformer_recipe(fields["vocab_size"], vocab if not token_dictionary else (
            vocab if vocab != "auto" else _recipe_of_dictionary(token_dictionary)))
        # a model with fewer positions than the recipe's length reads that many tokens
        length = max_length or min(RECIPES[recipe].max_length, fields["max_len"])
        tokenizer = build_recipe(recipe, max_length=length,
                                 token_dictionary=token_dictionary, gene_medians=gene_medians)
    if tokenizer.vocab.size > fields["vocab_size"]:
        raise ValueError(f"the {tokenizer.vocab.name!r} dictionary has {tokenizer.vocab.size:,} "
                         f"ids but the model embeds {fields['vocab_size']:,}; pass the model's "
                         "own dictionary (--token-dictionary) or --vocab")
    if tokenizer.cfg.max_length > fields["max_len"]:
        raise ValueError(f"--max-length {tokenizer.cfg.max_length} exceeds the model's "
                         f"max_position_embeddings={fields['max_len']}; pass --max-length "
                         f"{fields['max_len']} or less")
    fields.update(_specials(tokenizer.vocab.tokens, fields))
    fields["pooling"] = pooling or "mean"
    cfg = ModelConfig(**fields)
    cfg.validate(require_vocab=True)
    weight_name = next((n for n in hf_bert.WEIGHT_FILES if (path / n).is_file()), None)
    if weights and weight_name is None:
        hf_bert.load_state(path)  # raises the right error (missing / TensorFlow-only)
    man = manifest_of(tokenizer, recipe)
    with torch.device("meta"):
        n_params = count_parameters(get_model(cfg))
    info: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "model": dataclasses.asdict(cfg),
        "parameters": n_params, "vocab": man["vocab"], "vocab_hash": man["vocab_hash"],
        "tokenizer": man["tokenizer"], "step": -1,
        "imported": {"kind": "hf_bert", "path": str(path.resolve()), "weights": weight_name,
                     "architectures": hf_cfg.get("architectures") or [], "recipe": recipe,
                     "hidden_act": hf_cfg.get("hidden_act"),
                     "attention_probs_dropout_prob": hf_cfg.get("attention_probs_dropout_prob"),
                     "hidden_dropout_prob": hf_cfg.get("hidden_dropout_prob")},
    }

    def state() -> dict[str, torch.Tensor]:
        raw, _ = hf_bert.load_state(path)
        converted, notes = hf_bert.to_scforge(raw, hf_cfg)
        info["imported"].update(has_mlm_head=notes["has_head"], dropped=notes["dropped"])
        return complete_state(cfg, converted)

    return ForeignCheckpoint("hf_bert", path, info, state)


def _recipe_of_dictionary(token_dictionary: str) -> str:
    """The Geneformer recipe a given dictionary belongs with: V2 when it has ``<cls>``."""
    from scforge.resources import load_json

    tokens = load_json(token_dictionary)
    return "geneformer_v2" if "<cls>" in tokens else "geneformer_v1"


def complete_state(cfg: ModelConfig, converted: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """``converted`` plus any module the checkpoint lacks (a BertModel's MLM head), initialised
    with a fixed seed so the same directory always gives the same model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fresh = get_model(cfg)
    from scforge.training.export import _aliases

    tied = _aliases(fresh)  # e.g. gene_head.decoder.weight -> embed.gene.weight
    full = {k: v for k, v in fresh.state_dict().items() if k not in tied or k in converted}
    missing = [k for k in full if k not in converted and not k.startswith("gene_head.")]
    if missing:
        raise ValueError(f"converted weights lack {missing[:3]}; the checkpoint does not match "
                         "its config.json")
    return {**full, **converted}


def import_hf(path: str | Path, out: str | Path, **kw: Any) -> Path:
    """Writes the scforge export of a Hugging Face BERT directory (see :func:`hf_checkpoint`).

    Returns:
        The export directory, readable by ``load_pretrained`` / ``scforge embed`` etc.
    """
    ckpt = hf_checkpoint(path, **kw)
    return write_export(ckpt, out)


def write_export(ckpt: ForeignCheckpoint, out: str | Path) -> Path:
    """An scforge export (``model.safetensors`` + ``config.json``) of a foreign checkpoint."""
    from scforge.training.export import export_pretrained

    out = Path(out)
    if out.resolve() == ckpt.path.resolve():
        raise ValueError(f"--out {out} is the checkpoint's own directory; write the export "
                         "elsewhere")
    state = ckpt.state()
    info = ckpt.info
    manifest = {k: info[k] for k in ("vocab", "vocab_hash", "tokenizer")}
    extra = {"step": -1, "imported": info["imported"]}
    return export_pretrained(out, ModelConfig(**info["model"]), state, manifest=manifest,
                             extra=extra)


def export_hf(export: str | Path, out: str | Path, *, token_dictionary: str = "") -> Path:
    """Writes a ``BertForMaskedLM`` directory equivalent to a post-LN scforge export.

    Args:
        export: scforge export directory (or anything ``load_pretrained`` reads).
        out: directory to write (created).
        token_dictionary: the custom vocabulary JSON of a ``vocab.kind=json`` export.

    Raises:
        ValueError: the model has no BERT equivalent (a pre-LN encoder, value embeddings, ...);
        the message says why.
    """
    from safetensors.torch import save_file

    from scforge.eval.tokenize import checkpoint_tokenizer
    from scforge.training.export import load_pretrained, read_pretrained_info

    info = read_pretrained_info(export)
    cfg = ModelConfig(**info["model"])
    hf_bert.exportable(cfg)  # before any weight is read
    model = load_pretrained(export)
    tokenizer = checkpoint_tokenizer(info, token_dictionary=token_dictionary)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = hf_bert.to_hf(model.state_dict(), model.config)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(hf_bert.hf_config(model.config), indent=2) + "\n")
    _write_dictionary(tokenizer.vocab, out)
    recipe = str((info.get("imported") or {}).get("recipe") or info["vocab"].get("name", ""))
    sidecar = {"format": "scforge-hf-sidecar", "version": 1, "recipe": recipe,
               "vocab": info["vocab"], "vocab_hash": info["vocab_hash"],
               "tokenizer": info["tokenizer"], "pooling": model.config.pooling,
               "exported_from": str(Path(export).resolve()), "step": info.get("step", -1)}
    (out / SCFORGE_SIDECAR).write_text(json.dumps(sidecar, indent=1) + "\n")
    return out
