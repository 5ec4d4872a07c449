"""Configuration schemas of the sharding job (``scforge-shard``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from scforge.config.loader import ConfigError


@dataclass
class SomaConfig:
    """A TileDB-SOMA experiment or the CELLxGENE Census as input (``census://``/``soma://`` URL
    parameters override these; with no positional inputs, a set ``uri`` or ``census_version``
    makes this block the input)."""

    uri: str = ""
    """SOMA experiment URI (local path, ``s3://``...), or with ``census_version`` a Census root
    (a local copy or mirror opened with ``cellxgene_census.open_soma(uri=...)``)."""
    census_version: str = ""
    """Census release (``2025-01-30``, ``stable``, ``latest``): the input is the Census."""
    organism: str = "homo_sapiens"
    """Census experiment (``homo_sapiens``, ``mus_musculus``)."""
    measurement: str = "RNA"
    layer: str = "raw"
    """X layer holding raw counts."""
    obs_value_filter: str = ""
    """TileDB value filter on obs, e.g. ``tissue_general == 'blood' and is_primary_data == True``."""
    obs_columns: list[str] = field(default_factory=list)
    """obs columns stored with every cell besides ``source.obs_fields`` (``soma_joinid`` always)."""


@dataclass
class QCConfig:
    """Cell filters applied inside each unit (0 / 1.0 = off); drops are counted per reason."""

    min_genes: int = 0
    """Drop cells with fewer detected genes (nonzero columns, any gene)."""
    max_genes: int = 0
    min_counts: int = 0
    """Drop cells with fewer total counts."""
    max_counts: int = 0
    max_mito_fraction: float = 1.0
    """Drop cells whose MT- gene counts exceed this fraction of their total (MT- genes found
    through var symbols or the bundled Ensembl -> symbol map)."""
    filter_pass_column: str = "filter_pass"
    """obs column of a previous QC (Geneformer convention: keep rows where it is 1/true); ignored
    when the input lacks it; "" = never use it."""


@dataclass
class HVGConfig:
    """Highly variable genes (Seurat v3 on raw counts, as scanpy's ``flavor='seurat_v3'``),
    computed in a statistics pass over the QC-passing cells; other genes are not tokenized."""

    n_top_genes: int = 0
    """0 = off; e.g. 1200 as in scGPT fine-tuning."""
    batch_key: str = ""
    """obs column (or ``dataset``) for batch-aware selection; "" = one batch."""
    span: float = 0.3
    """LOESS span of the mean-variance fit."""
    genes: str = ""
    """JSON written by ``scforge-shard stats --hvg N`` (or a JSON list of gene ids): use these
    genes instead of recomputing."""


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
    zarr_backend: str = ""
    """Reader of AnnData .zarr inputs: ``tensorstore`` or ``zarr``; "" = the measured default."""
    soma: SomaConfig = field(default_factory=SomaConfig)
    qc: QCConfig = field(default_factory=QCConfig)
    hvg: HVGConfig = field(default_factory=HVGConfig)


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
    hvg: int = 0
    """Shorthand for ``source.hvg.n_top_genes``: keep only this many highly variable genes (bin
    edges then come from those genes only, as scGPT bins after subsetting to HVGs)."""


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
    format: str = "tar"
    """``tar`` (WebDataset shards) or ``zarr`` (a Zarr v3 token store, ``scforge.data.store``)."""


@dataclass
class StoreConfig:
    """The Zarr token store (``shard.format=zarr``, ``scforge.data.store``)."""

    layout: str = "ragged"
    """``ragged`` (flat tokens + per-cell offsets: no padding stored) or ``dense`` (a padded
    [cells, tokenizer.max_length] array: a random batch is one indexed read, already padded)."""


@dataclass
class StatsConfig:
    """``scforge-shard stats``: corpus gene statistics."""

    target_sum: float = 10_000.0
    """Medians are of counts / cell total * target_sum (Geneformer's normalisation)."""
    max_exact_values: int = 100_000_000
    """Nonzero values kept for exact medians (8 bytes each); beyond it a log-histogram sketch
    takes over (relative error <= ``relative_error``)."""
    relative_error: float = 0.005
    """Relative accuracy of the sketch's medians."""


@dataclass
class ShardJobConfig:
    """Everything ``scforge-shard`` needs besides inputs and the output directory."""

    source: SourceConfig = field(default_factory=SourceConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    stats: StatsConfig = field(default_factory=StatsConfig)

    @property
    def hvg_n_top(self) -> int:
        """HVGs to keep (``source.hvg.n_top_genes`` or ``tokenizer.binned_expression.hvg``)."""
        return self.source.hvg.n_top_genes or self.tokenizer.binned_expression.hvg

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
        if self.shard.format not in ("tar", "zarr"):
            raise ConfigError(f"shard.format={self.shard.format!r}; choose 'tar' or 'zarr'")
        if self.store.layout not in ("ragged", "dense"):
            raise ConfigError(f"store.layout={self.store.layout!r}; choose 'ragged' or 'dense'")
        if self.source.zarr_backend not in ("", "tensorstore", "zarr"):
            raise ConfigError(
                f"source.zarr_backend={self.source.zarr_backend!r}; choose tensorstore or zarr"
            )
        self._validate_qc_hvg()

    def _validate_qc_hvg(self) -> None:
        qc = self.source.qc
        for key in ("min_genes", "max_genes", "min_counts", "max_counts"):
            if getattr(qc, key) < 0:
                raise ConfigError(f"source.qc.{key}={getattr(qc, key)} must be >= 0 (0 = off)")
        if not 0.0 < qc.max_mito_fraction <= 1.0:
            raise ConfigError(
                f"source.qc.max_mito_fraction={qc.max_mito_fraction} must be in (0, 1] (1 = off)"
            )
        hvg, alias = self.source.hvg.n_top_genes, self.tokenizer.binned_expression.hvg
        if hvg < 0 or alias < 0:
            raise ConfigError("source.hvg.n_top_genes and tokenizer.binned_expression.hvg >= 0")
        if hvg and alias and hvg != alias:
            raise ConfigError(
                f"source.hvg.n_top_genes={hvg} and tokenizer.binned_expression.hvg={alias} "
                "disagree; set one of them"
            )
        if not 0.0 < self.source.hvg.span <= 1.0:
            raise ConfigError(f"source.hvg.span={self.source.hvg.span} must be in (0, 1]")
        st = self.stats
        if not 0.0 < st.relative_error < 0.5 or st.max_exact_values < 0 or st.target_sum <= 0:
            raise ConfigError(
                "stats.relative_error must be in (0, 0.5), stats.max_exact_values >= 0 and "
                "stats.target_sum > 0"
            )
