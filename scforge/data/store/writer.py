"""Writes units of a sharding job into the Zarr token store (see ``format.py`` for the layout).

A unit is built in a temporary directory and renamed into place, then its completion marker is
written: a crash leaves either nothing or a whole unit, and a rerun skips finished units, as with
tar shards. Arrays are appended in whole shards (the sharding codec rewrites a shard on every
partial write), so memory stays bounded by one shard per array.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np

from scforge.data.shard.manifest import atomic_write_json
from scforge.data.shard.prepare import CellPacker, Prepared, UnitTally, iter_unit
from scforge.data.store.format import (
    BYTE_CHUNK,
    BYTE_SHARD,
    CELL_CHUNK,
    CELL_SHARD,
    DENSE_ROW_CHUNK,
    DENSE_ROW_SHARD,
    STORE_FORMAT,
    STORE_VERSION,
    TOKEN_CHUNK,
    TOKEN_SHARD,
)


def init_store(out: Path) -> None:
    """Makes ``out`` the root group of a Zarr v3 hierarchy naming the format (idempotent)."""
    meta = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {"scforge": {"format": STORE_FORMAT, "version": STORE_VERSION}},
    }
    path = out / "zarr.json"
    if not path.is_file():
        atomic_write_json(path, meta)


def read_store_sidecar(out: Path, name: str) -> dict | None:
    """The entry of a finished unit, or None if it is missing or incomplete."""
    side, group = out / f"{name}.json", out / name
    if not side.is_file() or not (group / "zarr.json").is_file():
        return None
    try:
        entry = json.loads(side.read_text())
    except ValueError:
        return None
    return entry if entry.get("bytes") == _dir_bytes(group) else None


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


class _Appender:
    """Appends along axis 0 of a zarr array in whole shards; hashes everything it writes.

    ``width`` > 0 makes a 2-D array of rows of that width (the dense layout)."""

    def __init__(
        self,
        group,
        name: str,
        dtype,
        chunk: int,
        shard: int,
        level: int,
        sha,
        *,
        width: int = 0,
        fill: int = 0,
    ) -> None:
        from zarr.codecs import ZstdCodec

        tail = (width,) if width else ()
        self.arr = group.create_array(
            name,
            shape=(0, *tail),
            dtype=dtype,
            chunks=(chunk, *tail),
            shards=(shard, *tail),
            compressors=ZstdCodec(level=level),
            fill_value=fill,
        )
        self.shard = shard
        self.dtype = np.dtype(dtype)
        self.sha = sha
        self.name = name
        self._buf: list[np.ndarray] = []
        self._n = 0

    def add(self, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, dtype=self.dtype)
        self.sha.update(self.name.encode() + values.tobytes())
        self._buf.append(values)
        self._n += len(values)
        if self._n >= self.shard:
            data = np.concatenate(self._buf)
            full = (len(data) // self.shard) * self.shard
            self.arr.append(data[:full])
            self._buf, self._n = [data[full:]], len(data) - full

    def close(self) -> None:
        if self._n:
            self.arr.append(np.concatenate(self._buf))
        self._buf, self._n = [], 0


def dense_width_pad(prep: Prepared) -> tuple[int, int]:
    """Row width and pad token of the dense layout."""
    return prep.cfg.tokenizer.max_length, max(prep.vocab.special("<pad>"), 0)


def pad_rows(lens: np.ndarray, flat: np.ndarray, width: int, fill) -> np.ndarray:
    """Flat per-cell arrays (cell i has ``lens[i]`` elements) as padded [n_cells, width] rows."""
    lens = np.asarray(lens, dtype=np.int64)
    if len(lens) and lens.max() > width:
        raise ValueError(f"a cell holds {lens.max()} tokens, more than the row width {width}")
    out = np.full((len(lens), width), fill, dtype=flat.dtype)
    starts = np.cumsum(lens) - lens
    row = np.repeat(np.arange(len(lens)), lens)
    out[row, np.arange(len(flat)) - np.repeat(starts, lens)] = flat
    return out


class _UnitArrays:
    """The arrays of one unit group, fed run by run."""

    def __init__(self, group, prep: Prepared, has_values: bool, value_dtype, sha) -> None:
        level = prep.cfg.shard.compression_level
        tok_dtype = prep.vocab.token_dtype
        self.dense = prep.cfg.store.layout == "dense"

        def mk(name, dtype, chunk, shard, **kw):
            return _Appender(group, name, dtype, chunk, shard, level, sha, **kw)

        if self.dense:
            self.width, self.pad_id = dense_width_pad(prep)
            rows = (DENSE_ROW_CHUNK, DENSE_ROW_SHARD)
            self.tokens = mk("tokens", tok_dtype, *rows, width=self.width, fill=self.pad_id)
            self.values = mk("values", value_dtype, *rows, width=self.width) if has_values else None
            self.lengths = mk("lengths", np.uint32, CELL_CHUNK, CELL_SHARD)
            self.offsets = None
        else:
            self.tokens = mk("tokens", tok_dtype, TOKEN_CHUNK, TOKEN_SHARD)
            self.values = (
                mk("values", value_dtype, TOKEN_CHUNK, TOKEN_SHARD) if has_values else None
            )
            self.offsets = mk("offsets", np.int64, CELL_CHUNK, CELL_SHARD)
            self.lengths = None
        self.row = mk("row", np.int64, CELL_CHUNK, CELL_SHARD)
        self.cell_id = mk("cell_id", np.uint8, BYTE_CHUNK, BYTE_SHARD)
        self.cell_id_offsets = mk("cell_id_offsets", np.int64, CELL_CHUNK, CELL_SHARD)
        self.obs = {f: mk(f"obs/{f}", np.int32, CELL_CHUNK, CELL_SHARD) for f in prep.obs_fields}
        self.categories: dict[str, dict[str, int]] = {f: {} for f in prep.obs_fields}
        self.n_tokens = self.n_bytes = 0
        if self.offsets is not None:
            self.offsets.add(np.zeros(1, np.int64))
        self.cell_id_offsets.add(np.zeros(1, np.int64))

    def add(self, rows, lens, toks, vals, names, obs) -> None:
        if self.dense:
            self.tokens.add(pad_rows(lens, toks, self.width, self.pad_id))
            if self.values is not None:
                self.values.add(pad_rows(lens, vals, self.width, 0))
            self.lengths.add(lens)
        else:
            self.tokens.add(toks)
            if self.values is not None:
                self.values.add(vals)
            self.offsets.add(self.n_tokens + np.cumsum(lens, dtype=np.int64))
        self.n_tokens += int(lens.sum())
        self.row.add(rows)
        encoded = [s.encode() for s in names[rows].tolist()]
        blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
        self.cell_id.add(blob)
        self.cell_id_offsets.add(
            self.n_bytes + np.cumsum([len(b) for b in encoded], dtype=np.int64)
        )
        self.n_bytes += len(blob)
        for f, app in self.obs.items():
            cats = self.categories[f]
            col = obs.get(f)
            vals_f = col[rows].tolist() if col is not None else [""] * len(rows)
            app.add(np.array([cats.setdefault(str(v), len(cats)) for v in vals_f], np.int32))

    def close(self) -> None:
        for app in (
            self.tokens,
            self.values,
            self.offsets,
            self.lengths,
            self.row,
            self.cell_id,
            self.cell_id_offsets,
            *self.obs.values(),
        ):
            if app is not None:
                app.close()


def write_store_unit(prep: Prepared, unit, out: Path, progress=None) -> dict:
    """Writes one unit group atomically (temp directory, rename) and its completion marker."""
    import zarr

    tmp = out / f".{unit.name}.tmp-{os.getpid()}"
    final = out / unit.name
    shutil.rmtree(tmp, ignore_errors=True)
    sha = hashlib.sha256()
    tally = UnitTally()
    tok = prep.tokenizer
    try:
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        arrays = _UnitArrays(group, prep, tok.has_values, tok.value_dtype, sha)
        names, obs = prep.obs(unit.input_index)
        packer = CellPacker(prep.cfg.shard.block_cells)
        for piece in iter_unit(prep, unit):
            tally.add(piece)
            for run in packer.add(piece):
                arrays.add(*run, names, obs)
            if progress is not None:
                progress(len(piece.rows) + piece.dropped.get("total", 0))
        for run in packer.rest():
            arrays.add(*run, names, obs)
        arrays.close()
        cats = {f: sorted(c, key=c.get) for f, c in arrays.categories.items()}
        group.attrs.update(
            {"obs_categories": cats, "n_cells": tally.cells, "n_tokens": arrays.n_tokens}
        )
        sha.update(json.dumps(cats, sort_keys=True).encode())
        shutil.rmtree(final, ignore_errors=True)  # a unit dir without a marker is incomplete
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = {
        "file": unit.name,
        "tokens": arrays.n_tokens,
        "bytes": _dir_bytes(final),
        "sha256": sha.hexdigest(),
        **tally.entry(unit),
    }
    atomic_write_json(out / f"{unit.name}.json", entry)
    return entry
