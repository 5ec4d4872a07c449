"""Builds the bundled gene dictionaries and datasets under ``scforge/resources``.

Run once from the repo root (the outputs are committed): ``python tools/build_resources.py``.
Inputs are the JSON conversions of the official Geneformer/scGPT dictionaries in
``../shared/data`` (no pickles). Outputs are gzip-compressed JSON, trimmed to what scforge reads:
medians only for tokens in the dictionary, the ID map only for targets in the V2 dictionary
(exactly the filter Geneformer applies before collapsing).
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / "scforge" / "resources"


def _dump(name: str, obj: object) -> None:
    path = OUT / name
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
    with open(path, "wb") as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
        gz.write(raw)
    print(f"{path.name}: {len(obj)} entries, {path.stat().st_size / 1e6:.2f} MB")


def _load(rel: str) -> dict:
    with open(SHARED / rel) as fh:
        return json.load(fh)


def build_dictionaries() -> None:
    for ver in ("v1", "v2"):
        tok = _load(f"geneformer/{ver}/token_dictionary.json")
        med = _load(f"geneformer/{ver}/gene_median_dictionary.json")
        _dump(f"geneformer_{ver}_token_dictionary.json.gz", tok)
        _dump(f"geneformer_{ver}_gene_medians.json.gz", {g: med[g] for g in tok if g in med})
    tok2 = _load("geneformer/v2/token_dictionary.json")
    mapping = _load("geneformer/v2/ensembl_mapping_dict.json")
    _dump("geneformer_v2_ensembl_mapping.json.gz", {k: v for k, v in mapping.items() if v in tok2})
    _dump("geneformer_v2_gene_name_id.json.gz", _load("geneformer/v2/gene_name_id_dict.json"))
    _dump("scgpt_census_vocab.json.gz", _load("scgpt/default_census_vocab.json"))
    with open(SHARED / "genes" / "gencode_v44_id2name.csv") as fh:
        id2name = {row[0]: row[1] for row in csv.reader(fh) if len(row) >= 2}
    _dump("gencode_v44_id2name.json.gz", id2name)


def build_dataset() -> None:
    """The bundled default dataset: the 2,638 pbmc3k cells (raw counts, cell_type, batch)."""
    src = ad.read_h5ad(SHARED / "pbmc_2batch.h5ad")
    keep = (src.obs["batch"].astype(str).str.startswith("pbmc3k")).to_numpy()
    _write_subset(
        src[keep],
        "pbmc3k.h5ad",
        "10x Genomics PBMC 3k (v1 chemistry), raw UMI counts; cells of "
        "pbmc_2batch.h5ad batch pbmc3k, genes detected in >= 1 cell",
    )


DEMO_BATCH_CELLS = 1000


def build_demo_batch() -> None:
    """A second batch for the demo: 1,000 seeded random pbmc8k cells (10x v2, GRCh38).

    With the bundled pbmc3k (10x v1, hg19) it makes a two-batch set, so ``scforge demo`` reports
    scib-metrics' batch-correction scores as well as bio conservation. Cells labelled ``Other``
    (a pbmc8k-only label) are left out so both batches share one label set.
    """
    src = ad.read_h5ad(SHARED / "pbmc_2batch.h5ad")
    batch = src.obs["batch"].astype(str)
    pool = np.flatnonzero(batch.str.startswith("pbmc8k").to_numpy()
                          & (src.obs["cell_type"].astype(str) != "Other").to_numpy())
    idx = np.sort(np.random.default_rng(0).choice(pool, DEMO_BATCH_CELLS, replace=False))
    _write_subset(
        src[idx],
        "pbmc8k_demo.h5ad",
        "10x Genomics PBMC 8k (v2 chemistry), raw UMI counts; 1,000 random cells "
        "(seed 0, label 'Other' excluded) of pbmc_2batch.h5ad batch pbmc8k, genes detected "
        "in >= 1 of them",
    )


def _write_subset(view: ad.AnnData, name: str, source: str) -> None:
    """Writes cells of pbmc_2batch as a bundled dataset: genes detected in them, float32 CSR
    raw counts, ``cell_type``/``batch`` obs and ``gene_symbols`` var only, gzip level 9."""
    sub = view.copy()
    genes = np.asarray((sp.csr_matrix(sub.X) != 0).sum(axis=0)).ravel() > 0
    sub = sub[:, genes].copy()
    sub.X = sp.csr_matrix(sub.X, dtype=np.float32)
    sub.obs = sub.obs[["cell_type", "batch"]].copy()
    sub.var = sub.var[["gene_symbols"]].copy()
    sub.uns = {"source": source}
    path = OUT / name
    sub.write_h5ad(path, compression="gzip", compression_opts=9)
    print(
        f"{path.name}: {sub.n_obs} cells x {sub.n_vars} genes, {path.stat().st_size / 1e6:.2f} MB"
    )

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    what = sys.argv[1:] or ["dictionaries", "dataset", "demo_batch"]
    if "dictionaries" in what:
        build_dictionaries()
    if "dataset" in what:
        build_dataset()
    if "demo_batch" in what:
        build_demo_batch()
