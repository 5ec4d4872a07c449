"""Hugging Face BERT (Geneformer) <-> the ``transformer_encoder`` family, both ways.

The two compute the same function once the encoder is post-LN (``norm_placement="post"``) with
BERT's activation and epsilon:

============================================  ==========================================
Hugging Face ``BertForMaskedLM``              scforge ``transformer_encoder``
============================================  ==========================================
``bert.embeddings.word_embeddings``           ``embed.gene``
``position_embeddings`` + ``token_type[0]``   ``embed.position`` (the type-0 row folded in)
``bert.embeddings.LayerNorm``                 ``embed.norm``
``layer.i.attention.self.{query,key,value}``  ``encoder.blocks.i.attn.qkv`` (rows q; k; v)
``layer.i.attention.output.dense``            ``encoder.blocks.i.attn.out``
``layer.i.attention.output.LayerNorm``        ``encoder.blocks.i.norm1``
``layer.i.intermediate.dense``                ``encoder.blocks.i.mlp.0``
``layer.i.output.dense``                      ``encoder.blocks.i.mlp.2``
``layer.i.output.LayerNorm``                  ``encoder.blocks.i.norm2``
``cls.predictions.transform.dense``           ``gene_head.dense``
``cls.predictions.transform.LayerNorm``       ``gene_head.norm``
``cls.predictions.decoder`` (+ its bias)      ``gene_head.decoder`` (tied to ``embed.gene``)
============================================  ==========================================

Every Geneformer input uses token type 0 (no ``token_type_ids`` are passed), so the type-0 row
is a constant added at every position: folding it into the position table is exact. Exporting
writes zero type rows, so a ``BertForMaskedLM`` computes the same function again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from scforge.models.config import ModelConfig
from scforge.models.convert import ConversionError
from scforge.models.convert.weights import load_sharded, load_weights

HF_ACTIVATIONS = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new",
                  "gelu_pytorch_tanh": "gelu_new"}
"""BERT ``hidden_act`` -> ``ModelConfig.activation`` (the exact functions, not look-alikes)."""
TO_HF_ACTIVATION = {"gelu": "gelu", "relu": "relu", "gelu_new": "gelu_new"}
ARCHITECTURES = ("BertForMaskedLM", "BertModel")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
OTHER_FRAMEWORKS = ("tf_model.h5", "flax_model.msgpack", "model.ckpt.index")
IGNORED_PREFIXES = ("pooler.", "cls.seq_relationship.")
"""Weights of a BertModel / BertForPreTraining that no scforge module uses (dropped, listed)."""

_LAYER = {
    "attention.output.dense": "attn.out",
    "attention.output.LayerNorm": "norm1",
    "intermediate.dense": "mlp.0",
    "output.dense": "mlp.2",
    "output.LayerNorm": "norm2",
}
_HEAD = {
    "cls.predictions.transform.dense": "gene_head.dense",
    "cls.predictions.transform.LayerNorm": "gene_head.norm",
}


# ----------------------------------------------------------------------------- reading a dir
def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face model directory."""
    file = Path(path) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist; pass a Hugging Face model directory "
                                "(config.json + model.safetensors or pytorch_model.bin)")
    try:
        cfg = json.loads(file.read_text())
    except ValueError as exc:
        raise ConversionError(f"{file} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConversionError(f"{file} holds a {type(cfg).__name__}, not a model config")
    return cfg


def is_bert_config(cfg: dict[str, Any]) -> bool:
    """True for a Hugging Face BERT config (``model_type: bert`` or a ``Bert*`` architecture)."""
    archs = cfg.get("architectures") or []
    return cfg.get("model_type") == "bert" or any(str(a).startswith("Bert") for a in archs)


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a Hugging Face directory and the file they came from.

    Order of preference: ``model.safetensors`` (or its sharded index), then
    ``pytorch_model.bin`` (or its index) through ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no weight file; ConversionError: only TensorFlow/Flax weights, or a
        file that does not load safely.
    """
    path = Path(path)
    for name in WEIGHT_FILES:
        file = path / name
        if file.is_file():
            state = load_sharded(file) if name.endswith(".index.json") else load_weights(file)
            return state, name
    others = [n for n in OTHER_FRAMEWORKS if (path / n).is_file()]
    if others:
        raise ConversionError(f"{path} holds only {others[0]} (TensorFlow/Flax weights); "
                              "scforge reads model.safetensors or pytorch_model.bin: convert "
                              "with transformers (from_pretrained(..., from_tf=True) then "
                              "save_pretrained)")
    raise FileNotFoundError(f"{path} has no model.safetensors or pytorch_model.bin; download the "
                            "weights next to config.json")


# ----------------------------------------------------------------------------- HF -> scforge
def _check_supported(cfg: dict[str, Any]) -> None:
    def refuse(what: str) -> ConversionError:
        return ConversionError(f"this BERT checkpoint uses {what}, which transformer_encoder "
                               "does not reproduce; only absolute-position encoder BERTs "
                               "(Geneformer's) convert")

    archs = [str(a) for a in cfg.get("architectures") or []]
    if archs and not any(a in ARCHITECTURES for a in archs):
        raise ConversionError(f"architectures {archs}: scforge imports {list(ARCHITECTURES)} "
                              "directories (a fine-tuned classifier: export its encoder with "
                              "save_pretrained of model.bert, or BertForMaskedLM)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise refuse(f"position_embedding_type={cfg['position_embedding_type']!r}")
    if cfg.get("is_decoder") or cfg.get("add_cross_attention"):
        raise refuse("decoder / cross-attention layers")
    act = cfg.get("hidden_act", "gelu")
    if act not in HF_ACTIVATIONS:
        raise refuse(f"hidden_act={act!r} (supported: {sorted(HF_ACTIVATIONS)})")
    hidden, heads = int(cfg.get("hidden_size", 768)), int(cfg.get("num_attention_heads", 12))
    if hidden % heads:
        raise ConversionError(f"hidden_size={hidden} is not divisible by "
                              f"num_attention_heads={heads}")


def model_fields(cfg: dict[str, Any]) -> dict[str, Any]:
    """``ModelConfig`` keyword arguments describing the BERT of ``cfg`` (post-LN encoder).

    Special-token ids are not set here (they come from the vocabulary); ``pooling`` neither.
    """
    _check_supported(cfg)
    hidden_drop = float(cfg.get("hidden_dropout_prob", 0.1))
    return {
        "family": "transformer_encoder",
        "preset": "none",
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": int(cfg.get("hidden_size", 768)),
        "num_layers": int(cfg.get("num_hidden_layers", 12)),
        "num_heads": int(cfg.get("num_attention_heads", 12)),
        "intermediate_size": int(cfg.get("intermediate_size", 3072)),
        "dropout": hidden_drop,
        "max_len": int(cfg.get("max_position_embeddings", 512)),
        "value_mode": "none",
        "position_embedding": True,
        "tie_embeddings": bool(cfg.get("tie_word_embeddings", True)),
        "layer_norm_eps": float(cfg.get("layer_norm_eps", 1e-12)),
        "norm_placement": "post",
        "activation": HF_ACTIVATIONS[cfg.get("hidden_act", "gelu")],
        "embedding_norm": True,
        "init_std": float(cfg.get("initializer_range", 0.02)),
        "pad_token_id": int(cfg.get("pad_token_id") or 0),
    }


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """BertForMaskedLM keys start with ``bert.``; a BertModel's do not: make both alike."""
    if any(k.startswith("bert.") for k in state):
        return {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in state.items()}
    return dict(state)


def to_scforge(state: dict[str, torch.Tensor], cfg: dict[str, Any]
               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Converts a BERT state dict to ``transformer_encoder`` names.

    Args:
        state: the Hugging Face weights (``BertForMaskedLM`` or ``BertModel``).
        cfg: its ``config.json``.

    Returns:
        (state, notes): the scforge state dict (without ``gene_head.*`` when the checkpoint has
        no MLM head), and notes: ``has_head``, ``tied`` (decoder shares the gene embedding),
        ``dropped`` (keys no scforge module uses).

    Raises:
        ConversionError: a weight is missing or has an unexpected shape.
    """
    fields = model_fields(cfg)
    src = _strip_prefix(state)
    d, layers = fields["hidden_size"], fields["num_layers"]
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in src:
            raise ConversionError(f"BERT weight {key!r} is missing from the checkpoint; is it a "
                                  f"{'/'.join(ARCHITECTURES)} with {layers} layers?")
        used.add(key)
        return src[key].detach().to(torch.float32)

    out: dict[str, torch.Tensor] = {"embed.gene.weight": take("embeddings.word_embeddings.weight")}
    pos = take("embeddings.position_embeddings.weight").clone()
    if "embeddings.token_type_embeddings.weight" in src:
        pos += take("embeddings.token_type_embeddings.weight")[0]
    out["embed.position.weight"] = pos
    for p in ("weight", "bias"):
        out[f"embed.norm.{p}"] = take(f"embeddings.LayerNorm.{p}")
    for i in range(layers):
        hf, ours = f"encoder.layer.{i}.", f"encoder.blocks.{i}."
        for p in ("weight", "bias"):
            out[f"{ours}attn.qkv.{p}"] = torch.cat(
                [take(f"{hf}attention.self.{n}.{p}") for n in ("query", "key", "value")])
            for theirs, mine in _LAYER.items():
                out[f"{ours}{mine}.{p}"] = take(f"{hf}{theirs}.{p}")
    extra_layers = sorted({k.split(".")[2] for k in src if k.startswith("encoder.layer.")
                           and int(k.split(".")[2]) >= layers})
    if extra_layers:
        raise ConversionError(f"the checkpoint has encoder layers {extra_layers} beyond "
                              f"num_hidden_layers={layers}; its config.json does not match it")
    has_head = "cls.predictions.transform.dense.weight" in src
    tied = fields["tie_embeddings"]
    if has_head:
        for theirs, mine in _HEAD.items():
            for p in ("weight", "bias"):
                out[f"{mine}.{p}"] = take(f"{theirs}.{p}")
        # the bias the forward adds is the decoder's (transformers 4 ties it to
        # cls.predictions.bias; 5 keeps them apart when the decoder weight is untied)
        bias_key = next((k for k in ("cls.predictions.decoder.bias", "cls.predictions.bias")
                         if k in src), "cls.predictions.bias")
        out["gene_head.decoder.bias"] = take(bias_key)
        used.update(k for k in ("cls.predictions.bias", "cls.predictions.decoder.bias")
                    if k in src)
        dec = src.get("cls.predictions.decoder.weight")
        if dec is not None:
            used.add("cls.predictions.decoder.weight")
            # an old save may store the tied copy: tied only if it really is the embedding
            tied = tied and bool(torch.equal(dec.float(), out["embed.gene.weight"]))
            if not tied:
                out["gene_head.decoder.weight"] = dec.detach().to(torch.float32)
        elif not tied:
            raise ConversionError("tie_word_embeddings is false but the checkpoint has no "
                                  "cls.predictions.decoder.weight")
    buffers = {k for k in src if k.endswith("position_ids")}
    dropped = sorted(set(src) - used - buffers)
    unknown = [k for k in dropped if not k.startswith(IGNORED_PREFIXES)]
    if unknown:
        raise ConversionError(f"the checkpoint has weights no BERT encoder/MLM head has "
                              f"({unknown[:3]}); it is not a plain {'/'.join(ARCHITECTURES)}")
    want_vocab, want_pos = fields["vocab_size"], fields["max_len"]
    if tuple(out["embed.gene.weight"].shape) != (want_vocab, d):
        raise ConversionError(f"word_embeddings is {tuple(out['embed.gene.weight'].shape)} but "
                              f"config.json says vocab_size={want_vocab}, hidden_size={d}")
    if tuple(pos.shape) != (want_pos, d):
        raise ConversionError(f"position_embeddings is {tuple(pos.shape)} but config.json says "
                              f"max_position_embeddings={want_pos}")
    return out, {"has_head": has_head, "tied": tied, "dropped": dropped}


# ----------------------------------------------------------------------------- scforge -> HF
def exportable(cfg: ModelConfig) -> None:
    """Raises ConversionError naming why ``cfg`` has no ``BertForMaskedLM`` equivalent."""
    if cfg.family != "transformer_encoder":
        raise ConversionError(f"model.family={cfg.family!r}: only transformer_encoder models "
                              "have a BertForMaskedLM equivalent")
    if cfg.norm_placement != "post":
        raise ConversionError("model.norm_placement='pre': BERT normalises after each residual "
                              "sum (post-LN), so a pre-LN encoder (ln before each block, plus a "
                              "final norm) has no BertForMaskedLM equivalent; train with "
                              "model.norm_placement=post to export to Hugging Face")
    if cfg.value_mode != "none":
        raise ConversionError(f"model.value_mode={cfg.value_mode!r}: BERT has no value "
                              "embedding or value head; only rank-value (value_mode=none) "
                              "encoders export")
    if not cfg.embedding_norm:
        raise ConversionError("model.embedding_norm=false: BERT always normalises its "
                              "embeddings")
    if cfg.activation not in TO_HF_ACTIVATION:
        raise ConversionError(f"model.activation={cfg.activation!r} has no BERT hidden_act")


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """The ``config.json`` of the ``BertForMaskedLM`` equivalent to ``cfg``."""
    exportable(cfg)
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.intermediate_size,
        "hidden_act": TO_HF_ACTIVATION[cfg.activation],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": 2,
        "initializer_range": cfg.init_std,
        "layer_norm_eps": cfg.layer_norm_eps,
        "pad_token_id": cfg.pad_token_id,
        "position_embedding_type": "absolute",
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": False,
        "torch_dtype": "float32",
    }


def to_hf(state: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A ``BertForMaskedLM`` state dict computing what the scforge ``state`` computes.

    Keys follow what ``save_pretrained`` writes: a tied decoder weight is left out (transformers
    re-ties it), the decoder bias is ``cls.predictions.bias``. The contrastive projection head,
    a training aid, has no BERT counterpart and is not written.
    """
    exportable(cfg)
    d = cfg.hidden_size
    src = {k: v.detach().to(torch.float32).contiguous() for k, v in state.items()}
    pos = src.get("embed.position.weight")
    out = {
        "bert.embeddings.word_embeddings.weight": src["embed.gene.weight"],
        "bert.embeddings.position_embeddings.weight": (
            pos if pos is not None else torch.zeros(cfg.max_len, d)),
        "bert.embeddings.token_type_embeddings.weight": torch.zeros(2, d),
        "bert.embeddings.LayerNorm.weight": src["embed.norm.weight"],
        "bert.embeddings.LayerNorm.bias": src["embed.norm.bias"],
    }
    for i in range(cfg.num_layers):
        hf, ours = f"bert.encoder.layer.{i}.", f"encoder.blocks.{i}."
        for p in ("weight", "bias"):
            q, k, v = src[f"{ours}attn.qkv.{p}"].chunk(3, dim=0)
            for name, t in (("query", q), ("key", k), ("value", v)):
                out[f"{hf}attention.self.{name}.{p}"] = t.contiguous()
            for theirs, mine in _LAYER.items():
                out[f"{hf}{theirs}.{p}"] = src[f"{ours}{mine}.{p}"]
    for theirs, mine in _HEAD.items():
        for p in ("weight", "bias"):
            out[f"{theirs}.{p}"] = src[f"{mine}.{p}"]
    out["cls.predictions.bias"] = src["gene_head.decoder.bias"]
    if not cfg.tie_embeddings:  # transformers 5 then keeps a separate decoder bias too
        out["cls.predictions.decoder.weight"] = src["gene_head.decoder.weight"]
        out["cls.predictions.decoder.bias"] = src["gene_head.decoder.bias"].clone()
    return out
