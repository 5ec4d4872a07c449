"""scGPT (``best_model.pt`` + ``args.json``) -> the ``scgpt`` family.

================================================  =================================
scGPT 0.2.4 ``TransformerModel``                  scforge ``scgpt``
================================================  =================================
``encoder.embedding`` / ``encoder.enc_norm``      ``embed.gene`` / ``embed.gene_norm``
``value_encoder.linear1`` / ``linear2`` / ``norm``  ``embed.value_in`` / ``value_out`` / ``value_norm``
``value_encoder.embedding`` / ``enc_norm``        ``embed.value_table`` / ``value_norm``
``transformer_encoder.layers.i.self_attn``:
``in_proj_*`` (or flash-attn's ``Wqkv.*``)        ``encoder.blocks.i.attn.qkv`` (rows q; k; v)
``self_attn.out_proj``                            ``encoder.blocks.i.attn.out``
``linear1`` / ``linear2`` / ``norm1`` / ``norm2``  ``mlp.0`` / ``mlp.2`` / ``norm1`` / ``norm2``
``decoder.fc.{0,2,4}`` / ``decoder.zero_logit``   ``expr_head.{0,2,4}`` / ``zero_head``
``mvc_decoder.{gene2query,W,W_zero_logit}``       ``mvc_head.{gene2query,W,W_zero_logit}``
================================================  =================================

``cls_decoder`` (an untrained classifier of the pretrained model) and the adversarial batch
discriminator are dropped. Batch labels, domain-specific batch norm and the ``scaling`` value
style change the forward in ways the family does not reproduce and are refused.
"""

from __future__ import annotations

from typing import Any

import torch

from scforge.models.convert import ConversionError

DROPPED_PREFIXES = ("cls_decoder.", "grad_reverse_discriminator.", "sim.", "creterion_cce.")
REFUSED_PREFIXES = {
    "batch_encoder.": "batch labels (use_batch_labels)",
    "dsbn.": "domain-specific batch norm (domain_spec_batchnorm)",
    "bn.": "batch norm over the embeddings (domain_spec_batchnorm='batchnorm')",
    "flag_encoder.": "a perturbation-flag encoder (TransformerGenerator, not TransformerModel)",
}
_LAYER = {"self_attn.out_proj": "attn.out", "linear1": "mlp.0", "linear2": "mlp.2",
          "norm1": "norm1", "norm2": "norm2"}


def _arg(args: dict[str, Any], *names: str, default: Any = None) -> Any:
    for n in names:
        if n in args and args[n] is not None:
            return args[n]
    return default


def model_fields(args: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``ModelConfig`` keyword arguments of a scGPT checkpoint (special ids excluded).

    Sizes come from ``args.json`` (``embsize``, ``nheads``/``nhead``, ``d_hid``, ``nlayers``)
    and are checked against the weights; which heads exist comes from the weights.
    """
    for prefix, what in REFUSED_PREFIXES.items():
        if any(k.startswith(prefix) for k in state):
            raise ConversionError(f"this scGPT checkpoint uses {what}, which the scgpt family "
                                  "does not reproduce; import a model pretrained without it")
    style = _arg(args, "input_emb_style", default="continuous")
    if style == "scaling":
        raise ConversionError("input_emb_style='scaling' is not supported; scGPT's published "
                              "models use 'continuous'")
    if style not in ("continuous", "category"):
        raise ConversionError(f"input_emb_style={style!r}; expected continuous or category")
    if _arg(args, "pre_norm", default=False):
        raise ConversionError("pre_norm=true: scGPT's pre-norm flash layer is not a standard "
                              "pre-LN block; only post-norm scGPT models convert")
    emb_style = _arg(args, "cell_emb_style", default="cls")
    pooling = {"cls": "cls", "avg-pool": "mean"}.get(emb_style)
    if pooling is None:
        raise ConversionError(f"cell_emb_style={emb_style!r}; the scgpt family computes 'cls' "
                              "and 'avg-pool' cell embeddings")
    if "encoder.embedding.weight" not in state:
        raise ConversionError("encoder.embedding.weight is missing: not a scGPT TransformerModel "
                              "state dict")
    rows, d = state["encoder.embedding.weight"].shape
    d_args = int(_arg(args, "embsize", "d_model", default=d))
    layers = 1 + max((int(k.split(".")[2]) for k in state
                      if k.startswith("transformer_encoder.layers.")), default=-1)
    if d_args != d or layers != int(_arg(args, "nlayers", default=layers)):
        raise ConversionError(f"args.json (embsize={d_args}, nlayers={_arg(args, 'nlayers')}) "
                              f"does not match the weights (d={d}, {layers} layers)")
    ffn = state["transformer_encoder.layers.0.linear1.weight"].shape[0] if layers else d
    fields: dict[str, Any] = {
        "family": "scgpt", "preset": "none", "vocab_size": int(rows), "hidden_size": int(d),
        "num_layers": layers, "num_heads": int(_arg(args, "nheads", "nhead", default=8)),
        "intermediate_size": int(ffn), "dropout": float(_arg(args, "dropout", default=0.2)),
        "max_len": int(_arg(args, "max_seq_len", default=1536)),
        "value_mode": "continuous" if style == "continuous" else "binned",
        "position_embedding": False, "pooling": pooling, "tie_embeddings": False,
        "mlm_weight": 0.0, "value_weight": 1.0, "layer_norm_eps": 1e-5,
        "norm_placement": "post", "activation": "relu", "embedding_norm": True,
        "pad_value": float(_arg(args, "pad_value", default=-2)),
        "mask_value": float(_arg(args, "mask_value", default=-1)),
        "explicit_zero_prob": "decoder.zero_logit.0.weight" in state,
        "mvc_decoder": "mvc_decoder.gene2query.weight" in state and "mvc_decoder.W.weight"
        in state,
    }
    if style == "category":
        table = state.get("value_encoder.embedding.weight")
        if table is None:
            raise ConversionError("input_emb_style='category' but value_encoder.embedding is "
                                  "missing")
        fields["n_bins"] = int(table.shape[0]) - 1  # the family's table has n_bins + 1 rows
    else:
        fields["n_bins"] = int(_arg(args, "n_bins", default=51))
    if "decoder.fc.0.weight" in state and state["decoder.fc.0.weight"].shape[1] != d:
        raise ConversionError("the expression decoder reads batch embeddings too "
                              "(use_batch_labels); not supported")
    return fields


def to_scforge(state: dict[str, torch.Tensor], fields: dict[str, Any], *,
               vocab_size: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Converts a scGPT state dict to ``scgpt`` family names.

    Args:
        state: ``best_model.pt``'s state dict.
        fields: :func:`model_fields` of it.
        vocab_size: rows of the scforge gene table; extra rows past the checkpoint's (scforge's
            scGPT vocabulary adds ``<mask>``) are zero and never looked up by scGPT's inputs.

    Returns:
        (state, notes) with ``dropped`` keys.
    """
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in state:
            raise ConversionError(f"scGPT weight {key!r} is missing from best_model.pt")
        used.add(key)
        return state[key].detach().to(torch.float32)

    gene = take("encoder.embedding.weight")
    if vocab_size is not None and vocab_size > gene.shape[0]:
        gene = torch.cat([gene, gene.new_zeros(vocab_size - gene.shape[0], gene.shape[1])])
    out = {"embed.gene.weight": gene}
    for p in ("weight", "bias"):
        out[f"embed.gene_norm.{p}"] = take(f"encoder.enc_norm.{p}")
    if fields["value_mode"] == "continuous":
        for theirs, mine in (("linear1", "value_in"), ("linear2", "value_out"),
                             ("norm", "value_norm")):
            for p in ("weight", "bias"):
                out[f"embed.{mine}.{p}"] = take(f"value_encoder.{theirs}.{p}")
    else:
        out["embed.value_table.weight"] = take("value_encoder.embedding.weight")
        for p in ("weight", "bias"):
            out[f"embed.value_norm.{p}"] = take(f"value_encoder.enc_norm.{p}")
    for i in range(fields["num_layers"]):
        theirs, ours = f"transformer_encoder.layers.{i}.", f"encoder.blocks.{i}."
        flash = f"{theirs}self_attn.Wqkv.weight" in state
        out[f"{ours}attn.qkv.weight"] = take(
            f"{theirs}self_attn.{'Wqkv.weight' if flash else 'in_proj_weight'}")
        out[f"{ours}attn.qkv.bias"] = take(
            f"{theirs}self_attn.{'Wqkv.bias' if flash else 'in_proj_bias'}")
        for src, dst in _LAYER.items():
            for p in ("weight", "bias"):
                out[f"{ours}{dst}.{p}"] = take(f"{theirs}{src}.{p}")
    for theirs, mine, on in (("decoder.fc", "expr_head", True),
                             ("decoder.zero_logit", "zero_head", fields["explicit_zero_prob"])):
        if on:
            for j in (0, 2, 4):
                for p in ("weight", "bias"):
                    out[f"{mine}.{j}.{p}"] = take(f"{theirs}.{j}.{p}")
    if fields["mvc_decoder"]:
        for p in ("weight", "bias"):
            out[f"mvc_head.gene2query.{p}"] = take(f"mvc_decoder.gene2query.{p}")
        out["mvc_head.W.weight"] = take("mvc_decoder.W.weight")
        if fields["explicit_zero_prob"]:
            for p in ("weight", "bias"):
                out[f"mvc_head.W_zero_logit.{p}"] = take(f"mvc_decoder.W_zero_logit.{p}")
    dropped = sorted(set(state) - used)
    unknown = [k for k in dropped if not k.startswith((*DROPPED_PREFIXES, "mvc_decoder."))]
    if unknown:
        raise ConversionError(f"best_model.pt has weights the scgpt family has no place for "
                              f"({unknown[:3]}); is it a TransformerModel checkpoint?")
    return out, {"dropped": dropped}
