"""The on-disk shard format: versioned, allow-listed, no pickle.

A shard is a WebDataset-compatible POSIX tar. Each member ``<key>.cells.zst`` packs a block of up
to ``block_cells`` cells (tarfile reads only ~5k members/s, so one cell per member would cap a
loader at a few thousand cells/s). A block is one zstd frame of::

    b"SCFB" | uint32 header length | header JSON | arrays (each 8-byte aligned)

The header lists the arrays (name, dtype, length, offset, byte-shuffled) and carries the
string fields (``cell_id`` and the kept obs fields) as JSON lists. Arrays: ``lengths`` (uint32, tokens per cell), ``tokens``
(uint16/uint32), optional ``values`` (uint8 bins or float16/float32), ``row`` (int64 row in the
source input). Decoding is ``json.loads`` + ``np.frombuffer``: nothing executable.

Multi-byte arrays are stored byte-shuffled (all first bytes, then all second bytes, ...): token
ids are near-random in their low byte but nearly constant in their high byte, and separating the
two makes zstd ~10x faster and the blocks ~5% smaller on real rank-value tokens.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import zstandard

FORMAT_NAME = "scforge-shards"
FORMAT_VERSION = 1
BLOCK_SUFFIX = "cells.zst"
MAGIC = b"SCFB"
ALLOWED_DTYPES = {"uint8", "uint16", "uint32", "int32", "int64", "float16", "float32"}


class ShardFormatError(ValueError):
    """A block or manifest is corrupt or of an unsupported format/version."""


def encode_block(
    arrays: dict[str, np.ndarray], strings: dict[str, list[str]], *, level: int = 3
) -> bytes:
    """Serialises arrays + string columns into one compressed block (deterministic bytes)."""
    specs = []
    parts = []
    pos = 0
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise ShardFormatError(
                f"array {name!r} has dtype {arr.dtype}; allowed: {ALLOWED_DTYPES}"
            )
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False).reshape(-1)
        shuffled = le.dtype.itemsize > 1
        raw = (
            le.view(np.uint8).reshape(-1, le.dtype.itemsize).T.tobytes()
            if shuffled
            else le.tobytes()
        )
        pad = (-len(raw)) % 8
        specs.append([name, arr.dtype.name, int(arr.size), pos, int(shuffled)])
        parts.append(raw + b"\0" * pad)
        pos += len(raw) + pad
    header = json.dumps(
        {"v": FORMAT_VERSION, "arrays": specs, "strings": strings},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    hpad = (-(len(header) + 8)) % 8
    body = MAGIC + struct.pack("<I", len(header) + hpad) + header + b" " * hpad + b"".join(parts)
    return zstandard.ZstdCompressor(
        level=level, write_content_size=True, write_checksum=True
    ).compress(body)


def decode_block(blob: bytes) -> dict[str, Any]:
    """Inverse of :func:`encode_block`: ``{name: ndarray, ..., name: list[str], ...}``."""
    try:
        body = zstandard.ZstdDecompressor().decompress(blob)
    except zstandard.ZstdError as e:
        raise ShardFormatError(f"block does not decompress ({e})") from None
    if body[:4] != MAGIC or len(body) < 8:
        raise ShardFormatError("block has no scforge magic header")
    (hlen,) = struct.unpack("<I", body[4:8])
    try:
        header = json.loads(body[8 : 8 + hlen])
    except ValueError as e:
        raise ShardFormatError(f"block header is not JSON ({e})") from None
    if header.get("v") != FORMAT_VERSION:
        raise ShardFormatError(
            f"block format version {header.get('v')}; this scforge reads version {FORMAT_VERSION}"
        )
    base = 8 + hlen
    out: dict[str, Any] = {}
    for name, dtype, count, pos, shuffled in header["arrays"]:
        if dtype not in ALLOWED_DTYPES:
            raise ShardFormatError(f"array {name!r} has disallowed dtype {dtype!r}")
        dt = np.dtype(dtype).newbyteorder("<")
        end = base + pos + count * dt.itemsize
        if end > len(body):
            raise ShardFormatError(f"array {name!r} runs past the end of the block (truncated)")
        if shuffled:
            planes = np.frombuffer(
                body, dtype=np.uint8, count=count * dt.itemsize, offset=base + pos
            )
            # Filling byte columns of a preallocated array is ~5x faster than a transposed copy.
            arr = np.empty((count, dt.itemsize), dtype=np.uint8)
            byte_planes = planes.reshape(dt.itemsize, count)
            for k in range(dt.itemsize):
                arr[:, k] = byte_planes[k]
            out[name] = arr.view(dt).reshape(-1)
        else:
            out[name] = np.frombuffer(body, dtype=dt, count=count, offset=base + pos)
    out.update(header["strings"])
    return out
