"""TileDB-SOMA experiments and the CELLxGENE Census, read by obs axis queries in bounded batches.

One code path serves three spellings of an input:

* ``census://<version>?organism=homo_sapiens&obs=<value filter>`` opens the Census with
  ``cellxgene_census.open_soma`` (``&uri=<path or s3 URI>`` opens a copy or mirror instead);
* ``soma://<experiment URI>?obs=<value filter>`` opens any SOMA experiment;
* a local directory that is a SOMA experiment (value filter etc. from ``source.soma``).

The query's cells are its obs ``soma_joinid`` values in ascending order, so row ranges (the
sharder's units) are stable; each chunk reads ``X[layer]`` at those joinids only. ``soma_joinid``
is stored with every cell so a sample traces back to its Census row.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, quote

import numpy as np
import pandas as pd
import scipy.sparse as sp

from scforge.data.sources.base import (
    CSRChunk,
    SourceError,
    as_str_array,
    check_range,
    csr_chunk,
    frame_of,
    pick_gene_ids,
)

SCHEMES = ("census://", "soma://")
_CELL_ID_COLUMNS = ("obs_id", "cell_id", "barcode", "obs_names")
_INSTALL = "reading SOMA / Census inputs needs the census extra: pip install 'scforge[census]'"


@dataclass(frozen=True)
class SomaSpec:
    """Where and what to query (parsed from a URL or a ``source.soma`` config block)."""

    uri: str = ""
    census_version: str = ""
    organism: str = "homo_sapiens"
    measurement: str = "RNA"
    layer: str = "raw"
    obs_value_filter: str = ""
    obs_columns: tuple[str, ...] = field(default_factory=tuple)

    @property
    def is_census(self) -> bool:
        return bool(self.census_version)

    def url(self) -> str:
        """The canonical ``census://`` / ``soma://`` spelling of this spec."""
        params = []
        if self.is_census:
            head = f"census://{self.census_version}"
            params.append(("organism", self.organism))
            if self.uri:
                params.append(("uri", self.uri))
        else:
            head = f"soma://{self.uri}"
        if self.measurement != "RNA":
            params.append(("measurement", self.measurement))
        if self.layer != "raw":
            params.append(("layer", self.layer))
        if self.obs_value_filter:
            params.append(("obs", self.obs_value_filter))
        if self.obs_columns:
            params.append(("obs_columns", ",".join(self.obs_columns)))
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        return head + (f"?{query}" if query else "")


def is_soma_url(path: str) -> bool:
    return str(path).startswith(SCHEMES)


def looks_like_soma_dir(path: str | os.PathLike) -> bool:
    """Cheap check (no tiledbsoma import): a TileDB group directory."""
    p = Path(path)
    return p.is_dir() and ((p / "__tiledb_group.tdb").exists() or (p / "__group").is_dir())


def parse_soma_url(url: str, defaults: SomaSpec | None = None) -> SomaSpec:
    """Parses ``census://`` / ``soma://`` URLs; parameters override ``defaults``."""
    base = defaults or SomaSpec()
    scheme, rest = url.split("://", 1)
    target, _, query = rest.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    known = {"organism", "measurement", "layer", "obs", "obs_columns", "uri"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise SourceError(
            f"{url!r}: unknown parameter(s) {unknown}; use {sorted(known)} (URL-encode the obs "
            "filter, e.g. obs=tissue_general%20%3D%3D%20%27blood%27)"
        )
    cols = params.get("obs_columns")
    spec = replace(
        base,
        organism=params.get("organism", base.organism),
        measurement=params.get("measurement", base.measurement),
        layer=params.get("layer", base.layer),
        obs_value_filter=params.get("obs", base.obs_value_filter),
        obs_columns=tuple(c for c in cols.split(",") if c) if cols else base.obs_columns,
    )
    if scheme == "census":
        if not target:
            raise SourceError(f"{url!r}: name a Census version, e.g. census://2025-01-30?...")
        return replace(spec, census_version=target, uri=params.get("uri", base.uri))
    if not target:
        raise SourceError(f"{url!r}: name an experiment, e.g. soma:///data/my_experiment")
    return replace(spec, census_version="", uri=target)


def _organism_key(name: str) -> str:
    return name.strip().lower().replace(" ", "_")


class SomaSource:
    """Cells of a SOMA experiment matching an obs value filter, read in row chunks.

    Args:
        spec: what to open and query.
        gene_column: var column with gene ids ("" = auto: ``feature_id`` / Ensembl-looking ids).
        path: the user's spelling of the input (kept in manifests); defaults to ``spec.url()``.
    """

    def __init__(self, spec: SomaSpec, *, gene_column: str = "", path: str = "") -> None:
        try:
            import tiledbsoma as soma
        except ImportError:
            raise SourceError(_INSTALL) from None
        self._soma = soma
        self.spec = spec
        self.path = path or spec.url()
        self._root = None
        self._exp = self._open_experiment()
        try:
            self._init_query()
            self._init_var(gene_column)
        except BaseException:
            self.close()
            raise
        self.extra_obs_fields = ["soma_joinid", *spec.obs_columns]
        if spec.is_census:
            self.dataset = f"census-{spec.census_version}-{_organism_key(spec.organism)}"
        else:
            self.dataset = Path(spec.uri.rstrip("/")).name or "soma"

    # ----------------------------------------------------------------- opening
    def _open_experiment(self):
        soma = self._soma
        spec = self.spec
        if spec.is_census:
            try:
                import cellxgene_census
            except ImportError:
                raise SourceError(_INSTALL) from None
            try:
                if spec.uri:
                    self._root = cellxgene_census.open_soma(uri=spec.uri)
                else:
                    self._root = cellxgene_census.open_soma(census_version=spec.census_version)
            except (soma.SOMAError, ValueError, OSError) as e:
                where = spec.uri or f"version {spec.census_version!r}"
                raise SourceError(
                    f"{self.path}: cannot open the Census ({where}): {str(e).splitlines()[0]}; "
                    "check the version (cellxgene_census.get_census_version_directory()) or the "
                    "uri= path"
                ) from None
            try:
                data = self._root["census_data"]
            except KeyError:
                raise SourceError(
                    f"{self.path}: {spec.uri or spec.census_version} is not a Census (no "
                    "census_data collection); use soma://<experiment> for a plain experiment"
                ) from None
            org = _organism_key(spec.organism)
            if org not in data:
                raise SourceError(
                    f"{self.path}: the Census has no organism {spec.organism!r}; choose one of "
                    f"{sorted(data.keys())} (organism=...)"
                )
            exp = data[org]
        else:
            try:
                exp = soma.Experiment.open(spec.uri)
            except soma.DoesNotExistError:
                raise SourceError(
                    f"SOMA experiment {spec.uri!r} does not exist; check the path or URI (build "
                    "one with tiledbsoma.io.from_anndata(uri, adata, measurement_name='RNA'))"
                ) from None
            except (soma.SOMAError, TypeError) as e:
                raise SourceError(
                    f"{spec.uri!r} is not a SOMA experiment ({str(e).splitlines()[0]}); point "
                    "soma:// at an Experiment, or census://<version>?uri=... at a Census root"
                ) from None
        if spec.measurement not in exp.ms:
            raise SourceError(
                f"{self.path}: no measurement {spec.measurement!r}; choose one of "
                f"{sorted(exp.ms.keys())} (measurement=... / source.soma.measurement)"
            )
        ms = exp.ms[spec.measurement]
        if spec.layer not in ms.X:
            raise SourceError(
                f"{self.path}: measurement {spec.measurement!r} has no X layer {spec.layer!r}; "
                f"choose one of {sorted(ms.X.keys())} (layer=... / source.soma.layer)"
            )
        return exp

    def _init_query(self) -> None:
        soma = self._soma
        flt = self.spec.obs_value_filter or None
        try:
            tbl = self._exp.obs.read(column_names=["soma_joinid"], value_filter=flt).concat()
        except soma.SOMAError as e:
            raise SourceError(
                f"{self.path}: obs filter {flt!r} is invalid ({str(e).splitlines()[0]}); obs "
                f"columns are {self._exp.obs.schema.names}"
            ) from None
        self._jids = np.sort(tbl["soma_joinid"].to_numpy().astype(np.int64))
        if len(self._jids) == 0:
            raise SourceError(
                f"{self.path}: obs filter {flt!r} matches no cells in {self._describe_where()} "
                f"({self._exp.obs.count:,} cells); check the column names and values (obs "
                f"columns: {self._exp.obs.schema.names[:12]})"
            )
        self.n_cells = len(self._jids)
        self._X = self._exp.ms[self.spec.measurement].X[self.spec.layer]

    def _describe_where(self) -> str:
        if self.spec.is_census:
            return f"Census {self.spec.census_version} {self.spec.organism}"
        return f"experiment {self.spec.uri}"

    def _init_var(self, gene_column: str) -> None:
        var = self._exp.ms[self.spec.measurement].var.read().concat().to_pandas()
        var = var.sort_values("soma_joinid")
        self._var_jids = var["soma_joinid"].to_numpy().astype(np.int64)
        self._var_dense = bool(np.array_equal(self._var_jids, np.arange(len(var))))
        self.n_genes = len(var)
        names_col = next((c for c in ("var_id", "feature_id") if c in var.columns), None)
        names = var[names_col] if names_col else var["soma_joinid"]
        cols = [c for c in var.columns if c not in ("soma_joinid", names_col)]
        self._gene_ids, self._symbols, self._id_source = pick_gene_ids(
            self.path,
            list(as_str_array(names.to_numpy())),
            cols,
            lambda c: list(as_str_array(var[c].to_numpy())),
            gene_column,
            self.n_genes,
        )

    # ----------------------------------------------------------------- Source API
    @property
    def soma_joinids(self) -> np.ndarray:
        """obs ``soma_joinid`` of each row (ascending)."""
        return self._jids

    def gene_ids(self) -> list[str]:
        return self._gene_ids

    def gene_symbols(self) -> list[str] | None:
        return self._symbols

    def _obs_frame(self, names: list[str]) -> pd.DataFrame:
        have = set(self._exp.obs.schema.names)
        cols = ["soma_joinid", *[n for n in names if n in have and n != "soma_joinid"]]
        tbl = self._exp.obs.read(
            column_names=cols, value_filter=self.spec.obs_value_filter or None
        ).concat()
        df = tbl.to_pandas()
        jd = df["soma_joinid"].to_numpy()
        order = np.argsort(jd, kind="stable")
        return df.iloc[order[np.searchsorted(jd[order], self._jids)]].reset_index(drop=True)

    def obs_names(self) -> np.ndarray:
        have = set(self._exp.obs.schema.names)
        col = next((c for c in _CELL_ID_COLUMNS if c in have), None)
        if col is None:
            return self._jids.astype(str).astype(object)
        return as_str_array(self._obs_frame([col])[col].to_numpy())

    def obs_columns(self, names: list[str]) -> pd.DataFrame:
        """The requested obs columns that exist (as strings), in row order; ``soma_joinid`` is
        always available."""
        df = self._obs_frame(names)
        return frame_of({n: df[n].to_numpy() for n in names if n in df.columns})

    def read_rows(self, start: int, stop: int) -> CSRChunk:
        """Rows ``[start, stop)``: one coordinate read of ``X[layer]`` at their joinids."""
        check_range(self, start, stop)
        jids = self._jids[start:stop]
        if len(jids) == 0:
            return csr_chunk(start, sp.csr_matrix((0, self.n_genes), dtype=np.float32))
        try:
            tbl = self._X.read(coords=(jids,)).tables().concat()
        except self._soma.SOMAError as e:
            raise SourceError(
                f"{self.path}: reading rows {start}-{stop} failed ({str(e).splitlines()[0]})"
            ) from None
        rows = np.searchsorted(jids, tbl["soma_dim_0"].to_numpy())
        cols = tbl["soma_dim_1"].to_numpy()
        if not self._var_dense:
            cols = np.searchsorted(self._var_jids, cols)
        data = tbl["soma_data"].to_numpy()
        m = sp.coo_matrix((data, (rows, cols.astype(np.int64))), shape=(len(jids), self.n_genes))
        return csr_chunk(start, m)

    def describe(self) -> dict:
        s = self.spec
        out = {
            "path": self.path,
            "format": "census" if s.is_census else "soma",
            "uri": os.path.abspath(s.uri) if s.uri and os.path.exists(s.uri) else s.uri,
            "measurement": s.measurement,
            "layer": s.layer,
            "obs_value_filter": s.obs_value_filter,
            "n_cells": self.n_cells,
            "n_genes": self.n_genes,
            "gene_ids_from": self._id_source,
        }
        if s.is_census:
            out.update(census_version=s.census_version, organism=_organism_key(s.organism))
        return out

    def close(self) -> None:
        for h in (getattr(self, "_exp", None), self._root):
            if h is not None:
                h.close()
