"""Random access to a Zarr token store by global cell index (no torch needed).

Per-cell arrays (token offsets or lengths, rows, obs codes, cell-id offsets) are small (8 bytes a
cell) and are loaded whole when a unit is first touched; tokens and values are read per cell.
Ragged layout: with tensorstore every cell of a batch is one asynchronous read issued before any
is awaited; zarr-python reads the same cells with one orthogonal selection per unit. Dense layout:
a unit's cells of a batch are one indexed read of rows (both backends).
``benchmarks/bench_store.py`` compares them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from scforge.data.store.format import StoreFormatError, load_store_manifest

BACKENDS = ("tensorstore", "zarr")


class _Unit:
    """One unit group: per-cell arrays in memory, token arrays opened for reading."""

    def __init__(self, root: Path, entry: dict, backend: str, obs_fields: list[str]) -> None:
        import zarr

        path = root / entry["file"]
        group = zarr.open_group(str(path), mode="r")
        self.n_cells = int(entry["cells"])
        self.dense = "lengths" in group
        if self.dense:
            lengths = np.asarray(group["lengths"][:], dtype=np.int64)
            self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        else:
            self.offsets = np.asarray(group["offsets"][:], dtype=np.int64)
        self.lengths = np.diff(self.offsets)
        self.row = np.asarray(group["row"][:], dtype=np.int64)
        ids = np.asarray(group["cell_id"][:], dtype=np.uint8).tobytes()
        id_off = np.asarray(group["cell_id_offsets"][:], dtype=np.int64)
        self.cell_ids = [ids[id_off[i] : id_off[i + 1]].decode() for i in range(self.n_cells)]
        cats = dict(group.attrs.get("obs_categories", {}))
        self.obs = {}
        for f in obs_fields:
            if f in cats:
                codes = np.asarray(group[f"obs/{f}"][:], dtype=np.int64)
                labels = np.asarray(cats[f], dtype=object)
                self.obs[f] = labels[codes] if len(labels) else np.array([], dtype=object)
        if len(self.offsets) != self.n_cells + 1:
            raise StoreFormatError(
                f"{path}: offsets hold {len(self.offsets) - 1} cells, the "
                f"manifest says {self.n_cells} (corrupt store); re-shard"
            )
        self.has_values = "values" in group
        if backend == "tensorstore":
            self.tokens = _ts_open(path / "tokens")
            self.values = _ts_open(path / "values") if self.has_values else None
        else:
            self.tokens = group["tokens"]
            self.values = group["values"] if self.has_values else None


def _ts_open(path: Path):
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path.resolve())}}
    return ts.open(spec, read=True, open=True).result()


class TokenStore:
    """A finished Zarr token store opened for random access.

    Args:
        path: the output directory of ``scforge-shard --format zarr``.
        backend: ``tensorstore`` (default, faster) or ``zarr`` (zarr-python).
        expected_vocab_hash: refuse a store tokenized with another vocabulary.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        backend: str = "tensorstore",
        expected_vocab_hash: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r}; choose one of {list(BACKENDS)}")
        self.root = Path(path)
        self.manifest = load_store_manifest(self.root)
        if expected_vocab_hash is not None and self.manifest["vocab_hash"] != expected_vocab_hash:
            raise StoreFormatError(
                f"{self.root} was tokenized with vocabulary {self.manifest['vocab']['name']} "
                f"(hash {self.manifest['vocab_hash'][:12]}), not the expected one; re-shard "
                "with the model's vocabulary"
            )
        self.backend = backend
        self.entries = list(self.manifest["shards"])
        self.obs_fields = list(self.manifest.get("obs_fields", []))
        self.cum = np.zeros(len(self.entries) + 1, dtype=np.int64)
        np.cumsum([e["cells"] for e in self.entries], out=self.cum[1:])
        self._units: dict[int, _Unit] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return int(self.cum[-1])

    def _unit(self, u: int) -> _Unit:
        if self._pid != os.getpid():  # forked into a DataLoader worker: reopen handles
            self._units, self._pid = {}, os.getpid()
        if u not in self._units:
            self._units[u] = _Unit(self.root, self.entries[u], self.backend, self.obs_fields)
        return self._units[u]

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        if len(indices) and (indices.min() < -n or indices.max() >= n):
            raise IndexError(f"cell index out of range for a store of {n} cells")
        indices = np.where(indices < 0, indices + n, indices)
        u = np.searchsorted(self.cum, indices, side="right") - 1
        return u, indices - self.cum[u]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.get_batch([i])[0]

    def get_batch(self, indices) -> list[dict[str, Any]]:
        """Cells at ``indices`` (any order), each a dict like ``read_shards`` yields:
        ``input_ids``, ``values`` (when stored), ``cell_id``, ``row``, ``shard`` and obs fields."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        units, local = self._locate(idx)
        out: list[dict[str, Any] | None] = [None] * len(idx)
        for u in np.unique(units):
            pos = np.flatnonzero(units == u)
            unit = self._unit(int(u))
            toks, vals = self._read(unit, local[pos])
            for k, p in enumerate(pos):
                j = int(local[p])
                cell: dict[str, Any] = {
                    "input_ids": toks[k],
                    "cell_id": unit.cell_ids[j],
                    "row": int(unit.row[j]),
                    "shard": self.entries[int(u)]["file"],
                }
                if vals is not None:
                    cell["values"] = vals[k]
                for f, col in unit.obs.items():
                    cell[f] = col[j]
                out[p] = cell
        return out  # type: ignore[return-value]

    def get_padded(self, indices, *, width: int = 0, pad_id: int | None = None) -> dict:
        """Cells at ``indices`` as padded arrays: ``input_ids`` [n, width] (``pad_id``, default
        the store's ``<pad>``), ``values`` [n, width] (0-padded, when stored) and ``lengths``
        [n]. ``width`` 0 = the longest cell of the batch (dense stores: their row width)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        units, local = self._locate(idx)
        layout = self.manifest["layout"]
        pad = int(layout.get("pad_id", 0) if pad_id is None else pad_id)
        lens = np.zeros(len(idx), dtype=np.int64)
        parts = []
        for u in np.unique(units):
            pos = np.flatnonzero(units == u)
            unit = self._unit(int(u))
            lens[pos] = unit.lengths[local[pos]]
            parts.append((pos, unit, local[pos]))
        w = width or (
            int(layout["width"]) if layout["name"] == "dense" else int(lens.max(initial=1))
        )
        if len(lens) and lens.max() > w:
            raise ValueError(f"width={w} is shorter than a cell of {lens.max()} tokens")
        toks = np.full((len(idx), w), pad, dtype=np.uint16) if not parts else None
        vals = None
        for pos, unit, cells in parts:
            t, v = self._read_rows(unit, cells, pad)
            if toks is None:
                toks = np.full((len(idx), w), pad, dtype=t.dtype)
            toks[pos] = _fit(t, w, pad)
            if v is not None:
                if vals is None:
                    vals = np.zeros((len(idx), w), dtype=v.dtype)
                vals[pos] = _fit(v, w, 0)
        if layout["name"] == "dense" and pad != int(layout.get("pad_id", 0)):
            toks[np.arange(w)[None, :] >= lens[:, None]] = pad  # rows hold the store's pad
        out = {"input_ids": toks, "lengths": lens}
        if vals is not None:
            out["values"] = vals
        return out

    def _read_rows(self, unit: _Unit, cells: np.ndarray, pad: int = 0):
        """Padded [len(cells), row width] tokens and values (0-padded) of a unit's cells; ragged
        rows are padded with ``pad``, dense rows hold the store's pad id."""
        if unit.dense:
            if self.backend == "tensorstore":  # both reads in flight before either is awaited
                idx = np.asarray(cells, dtype=np.int64)
                futs = [a[idx].read() for a in (unit.tokens, unit.values) if a is not None]
                rows = [np.asarray(f.result()) for f in futs]
                return rows[0], (rows[1] if len(rows) > 1 else None)
            return _dense_zarr(unit.tokens, cells), (
                _dense_zarr(unit.values, cells) if unit.values is not None else None
            )
        toks, vals = self._read(unit, cells)
        w = int(unit.lengths[cells].max(initial=1))
        from scforge.data.store.writer import pad_rows

        lens = unit.lengths[cells]
        flat_t = np.concatenate(toks) if toks else np.zeros(0, np.uint16)
        t = pad_rows(lens, flat_t, w, pad)
        v = pad_rows(lens, np.concatenate(vals), w, 0) if vals is not None else None
        return t, v

    def _read(self, unit: _Unit, cells: np.ndarray):
        if unit.dense:
            t, v = self._read_rows(unit, cells)
            lens = unit.lengths[cells]
            return [r[:n] for r, n in zip(t, lens, strict=True)], (
                [r[:n] for r, n in zip(v, lens, strict=True)] if v is not None else None
            )
        a = unit.offsets[cells]
        b = unit.offsets[cells + 1]
        if self.backend == "tensorstore":
            return _read_ts([unit.tokens, unit.values], a, b)
        return _read_zarr(unit.tokens, a, b), (
            _read_zarr(unit.values, a, b) if unit.values is not None else None
        )


def _read_ts(arrays: list, a: np.ndarray, b: np.ndarray):
    """Slices ``[a[i], b[i])`` of each array (None skipped): every read is issued in one
    tensorstore batch (coalesced per shard) before any is awaited."""
    import tensorstore as ts

    out: list = []
    with ts.Batch() as batch:
        futs = [
            None
            if arr is None
            else [
                arr[int(x) : int(y)].read(batch=batch) if y > x else None
                for x, y in zip(a, b, strict=True)
            ]
            for arr in arrays
        ]
    for arr, fs in zip(arrays, futs, strict=True):
        if fs is None:
            out.append(None)
            continue
        empty = np.zeros(0, dtype=arr.dtype.numpy_dtype)
        out.append([np.asarray(f.result()) if f is not None else empty for f in fs])
    return tuple(out)


def _read_zarr(arr, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    lens = b - a
    idx = np.concatenate([np.arange(x, y) for x, y in zip(a, b, strict=True)]) if len(a) else []
    flat = (
        arr.get_orthogonal_selection(np.asarray(idx, dtype=np.int64))
        if len(idx)
        else np.zeros(0, arr.dtype)
    )
    ends = np.cumsum(lens)
    return np.split(np.asarray(flat), ends[:-1])


def _fit(rows: np.ndarray, width: int, fill) -> np.ndarray:
    """[n, w] rows cut or padded to ``width`` columns."""
    if rows.shape[1] >= width:
        return rows[:, :width]
    out = np.full((rows.shape[0], width), fill, dtype=rows.dtype)
    out[:, : rows.shape[1]] = rows
    return out


def _dense_zarr(arr, cells: np.ndarray) -> np.ndarray:
    cells = np.asarray(cells, dtype=np.int64)
    order = np.argsort(cells, kind="stable")
    uniq, inverse = np.unique(cells[order], return_inverse=True)
    rows = np.asarray(arr.get_orthogonal_selection((uniq, slice(None))))
    out = np.empty_like(rows, shape=(len(cells), rows.shape[1]))
    out[order] = rows[inverse]
    return out


def read_store(path: str | Path, **kw) -> Any:
    """Iterates every cell of a token store in order (the store analogue of ``read_shards``)."""
    store = TokenStore(path, **kw)
    step = 1024
    for a in range(0, len(store), step):
        yield from store.get_batch(range(a, min(a + step, len(store))))
