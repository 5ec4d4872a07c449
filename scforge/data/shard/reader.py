"""Reading shards back: blocks (for the loader) and decoded cells (for people and tests)."""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from scforge.data.shard.format import BLOCK_SUFFIX, ShardFormatError, decode_block
from scforge.data.shard.manifest import load_manifest


class ShardIntegrityError(ShardFormatError):
    """A shard file does not match its manifest entry (corrupt, truncated or replaced)."""


def check_size(path: Path, entry: dict) -> None:
    """Checks that one shard has its manifest size (a stat: cheap enough for every shard)."""
    size = path.stat().st_size if path.is_file() else -1
    if size != entry["bytes"]:
        raise ShardIntegrityError(
            f"shard {path} has {size} bytes, manifest says {entry['bytes']} "
            "(truncated or replaced); re-shard or restore it"
        )


def verify_shard(path: Path, entry: dict) -> None:
    """Checks size and sha256 of one shard against its manifest entry."""
    check_size(path, entry)
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for buf in iter(lambda: fh.read(1 << 22), b""):
            sha.update(buf)
    if sha.hexdigest() != entry["sha256"]:
        raise ShardIntegrityError(
            f"shard {path} fails its sha256 check (corrupt); re-shard or restore it"
        )


def iter_shard_blocks(path: str | Path) -> Iterator[dict[str, Any]]:
    """Decoded blocks of one shard file, in order. Only ``*.cells.zst`` members are accepted."""
    path = Path(path)
    try:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if not member.name.endswith("." + BLOCK_SUFFIX):
                    raise ShardFormatError(
                        f"{path}: unexpected member {member.name!r} (only "
                        f"*.{BLOCK_SUFFIX} blocks are decoded)"
                    )
                fh = tar.extractfile(member)
                blob = fh.read() if fh is not None else b""
                if len(blob) != member.size:
                    raise ShardFormatError(f"{path}: member {member.name} is truncated")
                try:
                    block = decode_block(blob)
                except ShardFormatError as e:
                    raise ShardFormatError(f"{path}: member {member.name}: {e}") from None
                block["__key__"] = member.name.split(".", 1)[0]
                yield block
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardFormatError(
            f"{path}: not a readable shard tar ({e}); it is truncated or "
            "corrupt: re-shard or restore it"
        ) from None


def read_block(path: str | Path, entry: dict, block: int, fh=None) -> dict[str, Any]:
    """Decodes block ``block`` of a shard by seeking to it (``entry`` is its manifest entry).

    ``fh`` may be an already open binary file (or fsspec file) of the shard, to avoid reopening.
    """
    offset, size = entry["block_index"][block]
    own = fh is None
    if own:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; callers may pass their own
    try:
        fh.seek(offset)
        blob = fh.read(size)
    finally:
        if own:
            fh.close()
    if len(blob) != size:
        raise ShardFormatError(f"{path}: block {block} is truncated ({len(blob)} of {size} bytes)")
    try:
        return decode_block(blob)
    except ShardFormatError as e:
        raise ShardFormatError(f"{path}: block {block}: {e}") from None


def block_cells(block: dict[str, Any], obs_fields: list[str]) -> Iterator[dict[str, Any]]:
    """Splits a decoded block into per-cell dicts."""
    lengths = block["lengths"].astype(np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = block["tokens"]
    values = block.get("values")
    for i in range(len(lengths)):
        a, b = offsets[i], offsets[i + 1]
        cell: dict[str, Any] = {
            "input_ids": tokens[a:b],
            "cell_id": block["cell_id"][i],
            "row": int(block["row"][i]),
        }
        if values is not None:
            cell["values"] = values[a:b]
        for f in obs_fields:
            if f in block:
                cell[f] = block[f][i]
        yield cell


def read_shards(
    path: str | Path, *, verify: bool = False, expected_vocab_hash: str | None = None
) -> Iterator[dict[str, Any]]:
    """Iterates every cell of a shard directory in manifest order.

    Each cell is a dict with ``input_ids`` (uint16/uint32), ``values`` (when the tokenizer has
    them), ``cell_id`` (the input's obs name), ``row`` (row in its input), ``shard`` and the kept
    obs fields.

    Args:
        path: shard directory holding ``manifest.json``.
        verify: check each shard's sha256 before reading it.
        expected_vocab_hash: refuse shards tokenized with another vocabulary.
    """
    root = Path(path)
    man = load_manifest(root)
    if expected_vocab_hash is not None and man["vocab_hash"] != expected_vocab_hash:
        raise ShardFormatError(
            f"{root} was tokenized with vocabulary {man['vocab']['name']} "
            f"(hash {man['vocab_hash'][:12]}), not the expected one "
            f"({expected_vocab_hash[:12]}); re-shard with the model's vocabulary"
        )
    fields = list(man.get("obs_fields", []))
    for entry in man["shards"]:
        shard_path = root / entry["file"]
        if verify:
            verify_shard(shard_path, entry)
        for block in iter_shard_blocks(shard_path):
            for cell in block_cells(block, fields):
                cell["shard"] = entry["file"]
                yield cell
