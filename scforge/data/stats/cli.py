"""``scforge-shard stats``: computes corpus statistics and writes them atomically."""

from __future__ import annotations

from pathlib import Path

from scforge.config.schema import ShardJobConfig
from scforge.data.shard.manifest import atomic_write_json
from scforge.data.shard.prepare import ShardError, config_inputs, soma_spec
from scforge.data.sources import open_source
from scforge.data.stats.corpus import compute_corpus_stats


def default_stats_path(out: str) -> Path:
    p = Path(out)
    return p.with_name(p.name.removesuffix(".json") + ".stats.json")


def run_stats(
    inputs: list[str],
    cfg: ShardJobConfig,
    *,
    out: str,
    stats_out: str = "",
    hvg: int = 0,
    vocab_out: str = "",
    min_cells: int = 1,
    progress: bool = True,
) -> str:
    """Computes statistics of ``inputs`` and writes the median dictionary (``out``), the full
    statistics (``stats_out``) and optionally a token dictionary; returns a summary line.

    Nothing is written unless every pass succeeds.
    """
    from tqdm import tqdm

    inputs = list(inputs) or config_inputs(cfg)
    if not inputs:
        raise ShardError("no inputs given; name input files or set source.soma.uri")
    if min_cells < 1:
        raise ShardError(f"--min-cells {min_cells} must be >= 1")
    sources = [
        open_source(
            p,
            layer=cfg.source.layer,
            gene_column=cfg.source.gene_column,
            soma=soma_spec(cfg),
            zarr_backend=cfg.source.zarr_backend,
        )
        for p in inputs
    ]
    n_top = hvg or cfg.hvg_n_top
    total = sum(s.n_cells for s in sources) * (2 if n_top else 1)
    with tqdm(
        total=total,
        unit="cell",
        unit_scale=True,
        disable=not progress,
        desc="statistics",
        dynamic_ncols=True,
    ) as bar:
        st = compute_corpus_stats(sources, cfg, medians=True, hvg_n_top=n_top, progress=bar.update)
    medians = st.median_dict()
    out_path = Path(out)
    stats_path = Path(stats_out) if stats_out else default_stats_path(out)
    for p in (out_path, stats_path, Path(vocab_out) if vocab_out else None):
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, medians)
    atomic_write_json(stats_path, st.to_json())
    line = (
        f"medians of {len(medians):,} genes over {st.n_cells_used:,} cells "
        f"({st.n_cells_read - st.n_cells_used:,} dropped by QC; "
        f"{st.median_method.get('method', '')}) -> {out_path}; statistics -> {stats_path}"
    )
    if n_top:
        line += f"; {len(st.hvg_genes())} HVGs"
    if vocab_out:
        from scforge.data.vocab import GeneVocab

        keep = [g for g, n in zip(st.genes, st.n_cells_nonzero, strict=True) if n >= min_cells]
        vocab = GeneVocab.from_corpus(keep, name=Path(vocab_out).name)
        atomic_write_json(Path(vocab_out), vocab.tokens)
        line += f"; vocabulary of {len(keep):,} genes (>= {min_cells} cells) -> {vocab_out}"
    return line
