"""Typed model configuration, size presets, and a FLOPs estimate for MFU.

The dataclass is the schema: YAML recipes in ``configs/model/`` carry the same keys and are merged
with ``OmegaConf.structured(ModelConfig)`` by the config loader, so a misspelled key fails at load
time. Size fields left at 0 are filled from ``preset`` by :func:`resolve_preset`; explicit sizes
always win, so a recipe can start from a preset and change one dimension.

Preset parameter counts (``transformer_encoder``, ``value_mode="none"``, tied LM head; counted by
``tests/models/test_model_config.py`` on the meta device)::

    preset  layers / d / heads / ffn             reference vocab, max_len      params
    debug   2 / 40 / 5 / 160                     20,275 (Geneformer V2), 2048  ~0.96 M
    small   6 / 256 / 4 / 512 (Geneformer V1)    25,426 (Geneformer V1), 2048  ~10.3 M
    base    12 / 768 / 12 / 3072 (GF V2-104M)    20,275 (Geneformer V2), 4096  ~104 M
    large   24 / 1024 / 16 / 4096 (GF V2-316M)   20,275 (Geneformer V2), 4096  ~328 M

Embeddings dominate the two small presets (debug is ~85% gene embedding), so their counts move
almost linearly with the vocabulary: ``small`` is ~9.0 M with the 20,275-token V2 vocabulary.
``masked_autoencoder`` adds its decoder (2 blocks at encoder width by default: +4% for debug,
+11% small, +14% base); ``autoregressive`` matches ``transformer_encoder`` exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

FAMILIES = ("autoregressive", "masked_autoencoder", "scgpt", "transformer_encoder")
VALUE_MODES = ("none", "binned", "continuous")
NORM_PLACEMENTS = ("pre", "post")
ACTIVATIONS = ("gelu", "gelu_new", "relu")
"""Feed-forward (and MLM-transform) activations: exact GELU, its tanh approximation (Hugging
Face's ``gelu_new``), ReLU (Geneformer's and scGPT's ``hidden_act``)."""
POOLINGS = ("cls", "mean")
AUTO_POOLING = "auto"
"""``pooling`` value resolved per family: ``mean`` for ``autoregressive``, else ``cls``."""
SIZE_FIELDS = ("hidden_size", "num_layers", "num_heads", "intermediate_size")


@dataclass(frozen=True)
class PresetSizes:
    """Transformer sizes a preset fills in (everything else keeps its own default)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int


PRESETS: dict[str, PresetSizes] = {
    # ~1M parameters with a 20k-gene vocabulary; trains on a laptop CPU in seconds. Head dim 8
    # keeps GPU flash/memory-efficient attention kernels usable in GPU smoke tests.
    "debug": PresetSizes(hidden_size=40, num_layers=2, num_heads=5, intermediate_size=160),
    # Geneformer V1 (gf-6L-30M): BERT with d=256, ffn=2d.
    "small": PresetSizes(hidden_size=256, num_layers=6, num_heads=4, intermediate_size=512),
    # Geneformer V2-104M: BERT-base sizes.
    "base": PresetSizes(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072),
    # Geneformer V2-316M: BERT-large sizes.
    "large": PresetSizes(hidden_size=1024, num_layers=24, num_heads=16, intermediate_size=4096),
}
NO_PRESET = "none"


@dataclass
class ModelConfig:
    """Architecture and objective settings shared by every model family.

    Attributes:
        family: registered model family (``scforge.models.list_models()``).
        preset: size preset (``debug``, ``small``, ``base``, ``large``) or ``"none"`` to give every
            size explicitly. Sizes left at 0 are taken from the preset.
        vocab_size: gene-token vocabulary including special tokens; 0 means "take it from the
            tokenizer", and must be set before the model is built.
        hidden_size: model width ``d``.
        num_layers: transformer blocks (the encoder's, for ``masked_autoencoder``).
        num_heads: attention heads; must divide ``hidden_size``.
        intermediate_size: feed-forward width.
        dropout: dropout on embeddings, attention probabilities and residual branches.
        max_len: longest sequence the learned position table covers.
        value_mode: ``"none"`` (rank-value tokens carry no value), ``"binned"`` (values are bin
            indices, embedded by table and predicted by classification) or ``"continuous"``
            (float values, embedded by a small MLP and predicted by regression).
        n_bins: value bins of the binned tokenizer. Tables and classifiers have ``n_bins + 1``
            entries so both 0-based (scGPT, ``0..n_bins-1``) and 1-based bin ids fit.
        position_embedding: add a learned position embedding (rank position for rank-ordered
            tokens). Turn off for sets of genes in arbitrary order.
        pooling: cell embedding from the ``<cls>`` position (``"cls"``) or the mean over non-pad
            tokens (``"mean"``); ``"auto"`` (the default) is ``mean`` for ``autoregressive``
            (under causal attention position 0 sees only itself, so ``cls`` is refused there)
            and ``cls`` for the other families.
        tie_embeddings: share the gene-embedding matrix with the gene-prediction head.
        mlm_weight: weight of the gene-token objective (masked genes; next gene for
            ``autoregressive``).
        value_weight: weight of the value objective (ignored when ``value_mode="none"``).
        contrastive_weight: weight of the NT-Xent objective between two views of each cell;
            0 disables it (and its projection head).
        contrastive_temperature: NT-Xent softmax temperature.
        contrastive_drop_prob: fraction of tokens dropped to make the second view.
        decoder_layers: decoder blocks of ``masked_autoencoder``.
        decoder_hidden_size: decoder width of ``masked_autoencoder``; 0 means ``hidden_size``.
        decoder_num_heads: decoder heads; 0 means ``num_heads``.
        gradient_checkpointing: recompute block activations in backward to save memory.
        layer_norm_eps: LayerNorm epsilon (1e-5 rather than BERT's 1e-12, which is below bf16
            resolution).
        norm_placement: ``"pre"`` (``x + f(ln(x))`` and a final LayerNorm: stable from scratch,
            the default) or ``"post"`` (``ln(x + f(x))``, no final norm: BERT, Geneformer and
            scGPT, so their checkpoints load unchanged).
        activation: feed-forward and MLM-transform activation, one of ``ACTIVATIONS``.
        embedding_norm: LayerNorm on the summed embeddings (BERT has it; off = identity).
        pad_value: value fed at padded positions (``scgpt`` family: scGPT's ``pad_value``).
        mask_value: value fed where ``value_mask`` hides one (``scgpt``: scGPT's ``mask_value``).
        explicit_zero_prob: ``scgpt``: also predict each gene's zero probability (Bernoulli).
        mvc_decoder: ``scgpt``: the masked-value-from-cell-embedding decoder (GEPC).
        init_std: std of the normal weight init (residual output projections are scaled down by
            ``sqrt(2 * num_layers)``).
        pad_token_id: id of ``<pad>`` (Geneformer: 0).
        mask_token_id: id of ``<mask>`` (Geneformer: 1).
        cls_token_id: id of ``<cls>`` (Geneformer V2: 2).
    """

    family: str = "transformer_encoder"
    preset: str = "debug"
    vocab_size: int = 0
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    intermediate_size: int = 0
    dropout: float = 0.02
    max_len: int = 2048
    value_mode: str = "none"
    n_bins: int = 51
    position_embedding: bool = True
    pooling: str = AUTO_POOLING
    tie_embeddings: bool = True
    mlm_weight: float = 1.0
    value_weight: float = 1.0
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1
    contrastive_drop_prob: float = 0.2
    decoder_layers: int = 2
    decoder_hidden_size: int = 0
    decoder_num_heads: int = 0
    gradient_checkpointing: bool = False
    layer_norm_eps: float = 1e-5
    norm_placement: str = "pre"
    activation: str = "gelu"
    embedding_norm: bool = True
    pad_value: float = -2.0
    mask_value: float = -1.0
    explicit_zero_prob: bool = False
    mvc_decoder: bool = False
    init_std: float = 0.02
    pad_token_id: int = 0
    mask_token_id: int = 1
    cls_token_id: int = 2

    def validate(self, *, require_vocab: bool = False) -> None:
        """Checks every field, raising ``ValueError`` that names the key and a fix.

        Args:
            require_vocab: also demand ``vocab_size > 0`` (true when building a model; a config
                loaded before the tokenizer is known may still hold 0).
        """
        _validate(resolve_preset(self), require_vocab=require_vocab)

    @property
    def decoder_width(self) -> int:
        """Decoder width of ``masked_autoencoder`` after defaulting."""
        return self.decoder_hidden_size or self.hidden_size

    @property
    def decoder_heads(self) -> int:
        """Decoder heads of ``masked_autoencoder`` after defaulting."""
        return self.decoder_num_heads or self.num_heads

    @property
    def decoder_intermediate_size(self) -> int:
        """Decoder feed-forward width: the encoder's ffn ratio applied to the decoder width."""
        return max(1, self.intermediate_size * self.decoder_width // max(1, self.hidden_size))


def resolve_pooling(family: str, pooling: str) -> str:
    """``pooling`` with ``"auto"`` resolved for ``family`` (other values pass through)."""
    if pooling != AUTO_POOLING:
        return pooling
    return "mean" if family == "autoregressive" else "cls"


def resolve_preset(cfg: ModelConfig) -> ModelConfig:
    """Returns a copy of ``cfg`` with size fields left at 0 filled from ``cfg.preset`` and
    ``pooling="auto"`` resolved for the family.

    Raises:
        ValueError: the preset is unknown.
    """
    cfg = dataclasses.replace(cfg, pooling=resolve_pooling(cfg.family, cfg.pooling))
    if cfg.preset == NO_PRESET:
        return cfg
    if cfg.preset not in PRESETS:
        raise ValueError(
            f"model.preset={cfg.preset!r} is not a preset; use one of "
            f"{sorted(PRESETS)} or {NO_PRESET!r} with explicit sizes"
        )
    sizes = PRESETS[cfg.preset]
    filled = {k: getattr(sizes, k) for k in SIZE_FIELDS if getattr(cfg, k) == 0}
    return dataclasses.replace(cfg, **filled)


def _divisors(n: int, limit: int = 4) -> list[int]:
    return [k for k in range(2, n + 1) if n % k == 0][:limit]


def _validate(cfg: ModelConfig, *, require_vocab: bool) -> None:
    def bad(key: str, fix: str) -> ValueError:
        return ValueError(f"model.{key}={getattr(cfg, key)!r} {fix}")

    if cfg.family not in FAMILIES:
        raise bad("family", f"is not a model family; use one of {list(FAMILIES)}")
    for key in SIZE_FIELDS:
        if getattr(cfg, key) <= 0:
            raise bad(key, f"must be > 0; set it or choose a preset from {sorted(PRESETS)}")
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(
            f"model.num_heads={cfg.num_heads} does not divide model.hidden_size="
            f"{cfg.hidden_size}; pick a divisor such as {_divisors(cfg.hidden_size)}"
        )
    if cfg.vocab_size < 0 or (require_vocab and cfg.vocab_size == 0):
        raise bad("vocab_size", "must be > 0; set it to the tokenizer's vocabulary size")
    specials = {
        "pad_token_id": cfg.pad_token_id,
        "mask_token_id": cfg.mask_token_id,
        "cls_token_id": cfg.cls_token_id,
    }
    for key, value in specials.items():
        if value < 0 or (cfg.vocab_size and value >= cfg.vocab_size):
            raise bad(key, f"must lie in [0, model.vocab_size={cfg.vocab_size})")
    if len(set(specials.values())) < len(specials):
        raise bad("mask_token_id", f"collides with another special token id ({specials})")
    if not 0.0 <= cfg.dropout < 1.0:
        raise bad("dropout", "must lie in [0, 1)")
    if cfg.max_len <= 0:
        raise bad("max_len", "must be > 0 (the longest tokenized cell, specials included)")
    if cfg.value_mode not in VALUE_MODES:
        raise bad("value_mode", f"is not one of {list(VALUE_MODES)} (rank_value tokens: 'none')")
    if cfg.n_bins < 2:
        raise bad("n_bins", "must be >= 2 (scGPT uses 51)")
    if cfg.pooling not in POOLINGS:
        raise bad("pooling", f"is not one of {[*POOLINGS, AUTO_POOLING]}")
    if cfg.family == "autoregressive" and cfg.pooling == "cls":
        raise bad(
            "pooling",
            "is meaningless under causal attention (position 0 sees only "
            "itself); use pooling='mean' for the autoregressive family",
        )
    for key in ("mlm_weight", "value_weight", "contrastive_weight"):
        if getattr(cfg, key) < 0:
            raise bad(key, "must be >= 0 (0 disables the objective)")
    value_on = cfg.value_mode != "none" and cfg.value_weight > 0
    if cfg.mlm_weight == 0 and not value_on and cfg.contrastive_weight == 0:
        raise bad(
            "mlm_weight",
            "is 0 and no other objective is on; set mlm_weight > 0, or "
            "value_weight > 0 with a value_mode, or contrastive_weight > 0",
        )
    if cfg.contrastive_temperature <= 0:
        raise bad("contrastive_temperature", "must be > 0 (0.05-0.5 is typical)")
    if not 0.0 <= cfg.contrastive_drop_prob < 1.0:
        raise bad("contrastive_drop_prob", "must lie in [0, 1)")
    if cfg.decoder_layers < 0 or (cfg.family == "masked_autoencoder" and cfg.decoder_layers == 0):
        raise bad("decoder_layers", "must be >= 1 for the masked_autoencoder family")
    for key in ("decoder_hidden_size", "decoder_num_heads"):
        if getattr(cfg, key) < 0:
            raise bad(key, "must be >= 0 (0 means 'same as the encoder')")
    if cfg.decoder_width % cfg.decoder_heads:
        raise ValueError(
            f"model.decoder_num_heads={cfg.decoder_heads} does not divide model."
            f"decoder_hidden_size={cfg.decoder_width}; pick a divisor such as "
            f"{_divisors(cfg.decoder_width)}"
        )
    if cfg.layer_norm_eps <= 0:
        raise bad("layer_norm_eps", "must be > 0")
    if cfg.norm_placement not in NORM_PLACEMENTS:
        raise bad("norm_placement", f"is not one of {list(NORM_PLACEMENTS)}")
    if cfg.activation not in ACTIVATIONS:
        raise bad("activation", f"is not one of {list(ACTIVATIONS)}")
    if cfg.init_std <= 0:
        raise bad("init_std", "must be > 0")


def _block_params(d: int, ffn: int) -> int:
    """Weights and biases of one pre-LN block: fused QKV, output projection, MLP, two norms."""
    return (3 * d * d + 3 * d) + (d * d + d) + (2 * d * ffn + ffn + d) + 4 * d


def non_embedding_params(cfg: ModelConfig) -> int:
    """Parameters in the transformer stacks (what the 6N FLOPs rule counts as ``N``).

    Excludes the gene/value/position embeddings and the output heads.
    """
    cfg = resolve_preset(cfg)
    final_norm = 2 * cfg.hidden_size if cfg.norm_placement == "pre" else 0
    n = cfg.num_layers * _block_params(cfg.hidden_size, cfg.intermediate_size) + final_norm
    if cfg.family == "masked_autoencoder":
        dd = cfg.decoder_width
        dec_norm = 2 * dd if final_norm else 0
        n += cfg.decoder_layers * _block_params(dd, cfg.decoder_intermediate_size) + dec_norm
        n += cfg.hidden_size * dd + dd  # encoder -> decoder projection
    return n


def estimate_flops_per_token(
    cfg: ModelConfig,
    seq_len: int,
    *,
    predicted_fraction: float = 0.0,
    visible_fraction: float = 1.0,
) -> float:
    """Training FLOPs (forward + backward) per input token, for MFU.

    Uses the Kaplan/PaLM rule: a matmul with ``N`` weights costs ``2N`` FLOPs per token forward
    and ``4N`` backward, so ``6 * N_nonembedding``; attention scores and the weighted sum add
    ``2 * 2 * d * seq_len`` forward per layer, ``12 * layers * d * seq_len`` with backward (the
    full square: our masked attention does not skip the causal half). Embedding lookups are
    free. The gene head is ``6 * d * vocab`` per *predicted* token, so it is added scaled by
    ``predicted_fraction`` (the MLM mask ratio, ~0.15; 1.0 for ``autoregressive``).

    Args:
        cfg: model config (presets are resolved).
        seq_len: padded sequence length the model runs at.
        predicted_fraction: fraction of tokens whose vocabulary logits are computed.
        visible_fraction: fraction of tokens the ``masked_autoencoder`` encoder sees; the
            decoder always runs over all of them. Ignored for other families.

    Returns:
        FLOPs per token, counting every position of the padded sequence.
    """
    cfg = resolve_preset(cfg)
    if seq_len <= 0:
        raise ValueError(f"seq_len={seq_len} must be > 0")
    if not 0.0 <= predicted_fraction <= 1.0:
        raise ValueError(f"predicted_fraction={predicted_fraction} must lie in [0, 1]")
    if not 0.0 < visible_fraction <= 1.0:
        raise ValueError(f"visible_fraction={visible_fraction} must lie in (0, 1]")
    d, layers = cfg.hidden_size, cfg.num_layers
    enc = layers * _block_params(d, cfg.intermediate_size)
    head = 6.0 * d * cfg.vocab_size * predicted_fraction
    if cfg.family != "masked_autoencoder":
        return 6.0 * enc + 12.0 * layers * d * seq_len + head
    vis_len = seq_len * visible_fraction
    dd = cfg.decoder_width
    dec = cfg.decoder_layers * _block_params(dd, cfg.decoder_intermediate_size) + d * dd
    encoder = visible_fraction * (6.0 * enc + 12.0 * layers * d * vis_len)
    decoder = 6.0 * dec + 12.0 * cfg.decoder_layers * dd * seq_len
    return encoder + decoder + 6.0 * dd * cfg.vocab_size * predicted_fraction
