"""The Zarr token store format: a Zarr v3 hierarchy of token arrays, one group per unit.

Two layouts (``store.layout``). ``ragged`` (default) of an output directory written with
``shard.format=zarr``::

    zarr.json                    root group; attributes name the format and version
    manifest.json, job.json      the same manifest as tar shards (format name below)
    shard-000000/                one group per unit (a row range of one input)
        tokens   [n_tokens]      uint16/uint32, flat; cell i is tokens[offsets[i]:offsets[i+1]]
        values   [n_tokens]      uint8 bins or float16/32 (when the tokenizer has values)
        offsets  [n_cells + 1]   int64
        row      [n_cells]       int64 row of the cell in its input
        cell_id  [n_bytes]       uint8 UTF-8 of every cell id, cell_id_offsets [n_cells + 1]
        obs/<field> [n_cells]    int32 codes into the group attribute obs_categories[field]
    shard-000000.json            completion marker (the unit's manifest entry)

``dense`` replaces ``tokens``/``values``/``offsets`` by padded 2-D arrays, one row per cell::

    tokens   [n_cells, width]    width = tokenizer.max_length; padded with the <pad> id (else 0)
    values   [n_cells, width]    padded with 0
    lengths  [n_cells]           uint32 tokens of each cell

(one inner chunk per cell row, so a random cell is one chunk, and a batch is one indexed read
straight into a padded [batch, width] array; zstd makes the padding nearly free on disk).

Every array uses the sharding codec: inner chunks small enough that reading one cell touches a
few KB (random access), shards large enough that a unit is a handful of files. Only numeric
arrays are used (no variable-length string codec), so tensorstore's ``zarr3`` driver reads all
of it. Strings live in JSON attributes or as UTF-8 bytes. No pickle anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

STORE_FORMAT = "scforge-zarr-store"
STORE_VERSION = 1
LAYOUTS = ("ragged", "dense")

TOKEN_CHUNK = 4096
"""Elements per inner chunk of tokens/values (a cell of ~2k tokens touches 1-2 chunks)."""
TOKEN_SHARD = 1 << 20
CELL_CHUNK = 1024
"""Elements per inner chunk of per-cell arrays (offsets, row, obs codes)."""
CELL_SHARD = 1 << 16
BYTE_CHUNK = 1 << 15
BYTE_SHARD = 1 << 22
DENSE_ROW_CHUNK = 1
"""Cell rows per inner chunk of the dense layout (random access reads exactly one cell)."""
DENSE_ROW_SHARD = 2048
"""Cell rows per shard of the dense layout (writer memory: one shard of tokens and values)."""


class StoreFormatError(ValueError):
    """Not a token store, or a store of an unsupported version (the message says what to do)."""


def describe_layout(name: str = "ragged", *, width: int = 0, pad_id: int = 0) -> dict:
    """The layout block stored in the manifest."""
    common = ["row", "cell_id", "cell_id_offsets", "obs/*"]
    out = {"name": name, "cell_chunk": CELL_CHUNK, "cell_shard": CELL_SHARD, "pad_id": int(pad_id)}
    if name == "dense":
        out.update(
            arrays=["tokens", "values", "lengths", *common],
            width=int(width),
            row_chunk=DENSE_ROW_CHUNK,
            row_shard=DENSE_ROW_SHARD,
        )
    else:
        out.update(
            arrays=["tokens", "values", "offsets", *common],
            token_chunk=TOKEN_CHUNK,
            token_shard=TOKEN_SHARD,
        )
    return out


def load_store_manifest(path: str | Path) -> dict:
    """Reads and checks the manifest of a token store directory."""
    p = Path(path)
    man_path = p / "manifest.json" if p.is_dir() else p
    if not man_path.is_file():
        raise StoreFormatError(
            f"{man_path} not found: not a finished scforge token store (an interrupted job? "
            "rerun scforge-shard --format zarr with the same arguments)"
        )
    try:
        man = json.loads(man_path.read_text())
    except ValueError as e:
        raise StoreFormatError(f"{man_path} is not valid JSON ({e})") from None
    if man.get("format") != STORE_FORMAT:
        raise StoreFormatError(
            f"{man_path} describes format {man.get('format')!r}, not a Zarr token store "
            f"({STORE_FORMAT!r}); read tar shards with scforge.data.read_shards"
        )
    if man.get("version") != STORE_VERSION:
        raise StoreFormatError(
            f"{man_path} has store version {man.get('version')}; this scforge reads version "
            f"{STORE_VERSION}: re-shard, or use a matching scforge"
        )
    layout = man.get("layout", {}).get("name")
    if layout not in LAYOUTS:
        raise StoreFormatError(
            f"{man_path} has store layout {layout!r}; this scforge reads {list(LAYOUTS)}"
        )
    return man
