"""Configuration schemas of the sharding job (``scforge-shard``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scforge.config.loader import ConfigError


@dataclass
class SourceConfig:
    """Where counts and gene ids come from in each input."""

    layer: str = "X"
    """Matrix holding raw counts: ``X``, ``raw/X`` or ``layers/<name>``."""
    gene_column: str = ""
    """var column holding gene ids; empty = auto (var_names if they look like Ensembl ids, else a
    ``gene_ids``/``ensembl_id``/``feature_id`` column, else treat var_names as symbols)."""
    obs_fields: list[str] = field(default_factory=lambda: ["cell_type", "batch"])
    """obs columns stored with every cell (missing ones are skipped with a warning)."""
    chunk_cells: int = 4096
    """Rows read and tokenized at a time; bounds memory."""
    require_raw_counts: bool = True
    """Refuse non-integer, negative or NaN values."""


@dataclass
class VocabConfig:
    """Gene vocabulary and the dictionaries used to map input genes onto it."""

    kind: str = "geneformer_v2"
    """``geneformer_v2`` | ``geneformer_v1`` (bundled Geneformer dictionaries), ``scgpt``
    (bundled scGPT census vocabulary) or ``json`` (``token_dictionary`` below)."""
    token_dictionary: str = ""
    """Path to a token dictionary JSON (gene -> id); overrides the bundled one."""
    gene_medians: str = ""
    """Path to a gene median JSON (rank_value); overrides the bundled one."""
    id_mapping: str = "auto"
    """Ensembl-ID collapse map (upper-cased id/alias -> canonical id): ``auto`` (the bundled
    Geneformer V2 map for geneformer_v2, none otherwise), ``none``, or a JSON path."""
    symbol_mapping: str = "auto"
    """Symbol -> Ensembl id JSON used when var names are symbols and the vocabulary is keyed by
    Ensembl ids; ``auto`` = bundled Geneformer map."""
    min_overlap: float = 0.05
    """Fail if fewer than this fraction of input genes map onto the vocabulary."""


@dataclass
class RankValueConfig:
    """Geneformer's rank-value encoding."""

    target_sum: float = 10_000.0


@dataclass
class BinnedConfig:
    """scGPT's per-cell quantile binning."""

    n_bins: int = 51
    seed: int = 0
    """Seeds the deterministic tie-break at bin edges."""
    order: str = "input"
    """Gene order in the sequence: ``input`` (column order, as scGPT), ``token``, ``expression``."""


@dataclass
class ContinuousConfig:
    """TranscriptFormer-style float values."""

    transform: str = "log1p"
    """``log1p`` of counts/total*target_sum, or ``raw`` counts."""
    target_sum: float = 10_000.0
    clip: float = 0.0
    """Clip values above this (0 = no clipping; e.g. 30 for raw counts)."""
    order: str = "expression"
    """``expression`` (descending), ``token`` or ``input``."""
    value_dtype: str = "float16"
    """Stored value dtype: ``float16`` or ``float32``."""


@dataclass
class TokenizerConfig:
    """Which tokenizer and its options."""

    strategy: str = "rank_value"
    """``rank_value`` | ``binned_expression`` | ``continuous_projection``."""
    max_length: int = 4096
    """Tokens per cell including special tokens."""
    special_tokens: bool = True
    """Put ``<cls>`` first and ``<eos>`` last (when the vocabulary has them)."""
    rank_value: RankValueConfig = field(default_factory=RankValueConfig)
    binned_expression: BinnedConfig = field(default_factory=BinnedConfig)
    continuous_projection: ContinuousConfig = field(default_factory=ContinuousConfig)


@dataclass
class ShardConfig:
    """Output layout."""

    cells_per_shard: int = 0
    """Cells per shard file; 0 = derive from ``target_shard_mb`` on the first chunk."""
    target_shard_mb: float = 256.0
    block_cells: int = 256
    """Cells packed per tar member (tarfile reads only ~5k members/s)."""
    compression_level: int = 3
    """zstd level of each block."""
    workers: int = 1
    """Processes writing shards in parallel."""


@dataclass
class ShardJobConfig:
    """Everything ``scforge-shard`` needs besides inputs and the output directory."""

    source: SourceConfig = field(default_factory=SourceConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)

    def validate(self) -> None:
        """Checks values the type system cannot (ranges, enumerations)."""
        tok = self.tokenizer
        strategies = ("rank_value", "binned_expression", "continuous_projection")
        if tok.strategy not in strategies:
            raise ConfigError(
                f"tokenizer.strategy={tok.strategy!r} is unknown; choose one of {list(strategies)}"
            )
        if tok.max_length < 3:
            raise ConfigError(f"tokenizer.max_length={tok.max_length} must be >= 3")
        if not 3 <= tok.binned_expression.n_bins <= 256:
            raise ConfigError(
                f"tokenizer.binned_expression.n_bins={tok.binned_expression.n_bins} must be in "
                "[3, 256] (bins are stored as uint8)"
            )
        orders = ("input", "token", "expression")
        for key, val in (
            ("binned_expression", tok.binned_expression.order),
            ("continuous_projection", tok.continuous_projection.order),
        ):
            if val not in orders:
                raise ConfigError(f"tokenizer.{key}.order={val!r}; choose one of {list(orders)}")
        cp = tok.continuous_projection
        if cp.transform not in ("log1p", "raw"):
            raise ConfigError(
                f"tokenizer.continuous_projection.transform={cp.transform!r}; "
                "choose 'log1p' or 'raw'"
            )
        if cp.value_dtype not in ("float16", "float32"):
            raise ConfigError(
                f"tokenizer.continuous_projection.value_dtype={cp.value_dtype!r}; "
                "choose 'float16' or 'float32'"
            )
        if self.shard.block_cells < 1 or self.shard.cells_per_shard < 0:
            raise ConfigError("shard.block_cells must be >= 1 and shard.cells_per_shard >= 0")
        if self.shard.workers < 1:
            raise ConfigError(f"shard.workers={self.shard.workers} must be >= 1")
        if not 1 <= self.shard.compression_level <= 22:
            raise ConfigError(
                f"shard.compression_level={self.shard.compression_level} must be in [1, 22]"
            )
        if self.source.chunk_cells < 1:
            raise ConfigError(f"source.chunk_cells={self.source.chunk_cells} must be >= 1")
        if self.vocab.kind not in ("geneformer_v2", "geneformer_v1", "scgpt", "json"):
            raise ConfigError(
                f"vocab.kind={self.vocab.kind!r}; choose geneformer_v2, "
                "geneformer_v1, scgpt or json"
            )
        if self.vocab.kind == "json" and not self.vocab.token_dictionary:
            raise ConfigError("vocab.kind=json needs vocab.token_dictionary=<path to JSON>")
