"""Where shards live and how their blocks are read: local paths, ``file://``, fsspec URLs, ``pipe:``.

Blocks are read by seeking to the byte range the manifest's ``block_index`` gives, so a reader
never scans a tar: on object stores (``s3://``, ``gs://``, ``https://`` through fsspec) that is
one ranged read per block. ``pipe:CMD`` shards (WebDataset's convention) cannot seek, so the
command's output is read whole into memory once per worker and epoch.

Decoding is allow-listed: only scforge's own block decoder (JSON header + ``np.frombuffer``) ever
sees shard bytes; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import numpy as np

from scforge.data.shard import (
    FORMAT_NAME,
    FORMAT_VERSION,
    ShardFormatError,
    ShardIntegrityError,
    load_manifest,
)
from scforge.data.shard.format import BlockDecoder
from scforge.data.stream.ordering import block_sizes

MANIFEST = "manifest.json"

# sha256-checked shards of this process: (url, sha256) -> None if good, else the error message.
_VERIFIED: dict[tuple[str, str], str | None] = {}


def _scheme(url: str) -> str:
    s = urlsplit(url).scheme
    return "" if len(s) <= 1 else s  # a one-letter "scheme" is a Windows drive


def local_path(url: str) -> Path | None:
    """The local path of a plain path or ``file://`` URL; None for anything else."""
    s = _scheme(url)
    if s == "":
        return Path(url)
    if s == "file":
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r}: file:// URLs must name a local path (file:///abs/path)")
        return Path(unquote(parts.path))
    return None


def open_url(url: str) -> IO[bytes]:
    """A seekable binary file for ``url`` (local, ``file://``, ``pipe:CMD`` or any fsspec URL)."""
    path = local_path(url)
    if path is not None:
        return open(path, "rb")
    if url.startswith("pipe:"):
        res = subprocess.run(url[5:], shell=True, capture_output=True, check=False)
        if res.returncode != 0:
            raise OSError(f"{url}: command exited {res.returncode}: "
                          f"{res.stderr.decode(errors='replace')[-500:]}")
        return io.BytesIO(res.stdout)
    try:
        import fsspec
    except ImportError:
        raise OSError(f"{url}: reading remote shards needs fsspec (pip install fsspec and the "
                      "filesystem's package, e.g. s3fs or gcsfs)") from None
    return fsspec.open(url, "rb").open()


def _parent(url: str) -> str:
    path = local_path(url)
    if path is not None:
        return str(path.parent)
    return url.rstrip("/").rsplit("/", 1)[0]


def _join(base: str, name: str) -> str:
    path = local_path(base)
    return str(path / name) if path is not None else base.rstrip("/") + "/" + name


def read_manifest(url: str) -> dict:
    """Loads and checks a manifest (format name and version) from a path or URL."""
    path = local_path(url)
    if path is not None:
        return load_manifest(path)
    with open_url(url) as fh:
        try:
            man = json.loads(fh.read())
        except ValueError as e:
            raise ShardFormatError(f"{url} is not valid JSON ({e})") from None
    if man.get("format") != FORMAT_NAME or man.get("version") != FORMAT_VERSION:
        raise ShardFormatError(f"{url}: format {man.get('format')!r} version {man.get('version')}"
                               f"; this scforge reads {FORMAT_NAME} version {FORMAT_VERSION}")
    return man


class ShardSet:
    """A manifest plus the location of each selected shard.

    Args:
        source: a shard directory (path or URL), a ``manifest.json`` path/URL, or a list of shard
            URLs (a subset of one manifest's shards, read in the manifest's order).
        manifest: the manifest's path/URL when it is not next to the shards (needed for
            ``pipe:`` URLs).
    """

    def __init__(self, source: str | Path | Sequence[str | Path], *,
                 manifest: str | Path | None = None) -> None:
        urls = [str(source)] if isinstance(source, (str, Path)) else [str(s) for s in source]
        if not urls:
            raise ValueError("no shards given: pass a shard directory or a list of shard URLs")
        single = len(urls) == 1 and not urls[0].endswith(".tar")
        if manifest is not None:
            man_url = str(manifest)
        elif single:
            man_url = urls[0] if urls[0].endswith(".json") else _join(urls[0], MANIFEST)
        elif urls[0].startswith("pipe:"):
            raise ValueError("pipe: shard URLs need manifest=<path or URL of manifest.json>")
        else:
            man_url = _join(_parent(urls[0]), MANIFEST)
        self.manifest = read_manifest(man_url)
        all_entries: list[dict] = self.manifest["shards"]
        offsets = np.zeros(len(all_entries) + 1, dtype=np.int64)
        np.cumsum([e["cells"] for e in all_entries], out=offsets[1:])
        if single:
            chosen = list(range(len(all_entries)))
            base = _parent(man_url)
            self.urls = [_join(base, e["file"]) for e in all_entries]
        else:
            chosen = sorted({self._match(u, all_entries) for u in urls})
            by_index = {self._match(u, all_entries): u for u in urls}
            self.urls = [by_index[i] for i in chosen]
        self.entries = [all_entries[i] for i in chosen]
        self.gid_base = offsets[chosen]
        """Manifest-wide index of each selected shard's first cell: a cell's identity (seeds its
        masks) does not depend on which subset of shards is read."""
        self.block_cells = int(self.manifest["block_cells"])
        self.sizes = block_sizes([e["cells"] for e in self.entries],
                                 [e["blocks"] for e in self.entries], self.block_cells)
        tok = self.manifest["tokenizer"]
        self.max_length = int(tok["max_length"])
        self.value_dtype: str | None = tok.get("value_dtype")
        self.vocab_size = int(self.manifest["vocab"]["size"])
        self.specials: dict[str, int] = dict(self.manifest["vocab"].get("specials", {}))
        for key, name in (("cls_id", "<cls>"), ("eos_id", "<eos>")):
            if int(tok.get(key, -1)) >= 0:
                self.specials.setdefault(name, int(tok[key]))
        self.obs_fields: list[str] = list(self.manifest.get("obs_fields", []))
        self.n_cells = int(sum(e["cells"] for e in self.entries))
        fp = json.dumps([[e["file"], e["cells"], e["sha256"]] for e in self.entries]).encode()
        self.fingerprint = hashlib.sha256(fp).hexdigest()[:16]

    @staticmethod
    def _match(url: str, entries: list[dict]) -> int:
        hits = [i for i, e in enumerate(entries)
                if re.search(rf"(^|[/\s]){re.escape(e['file'])}(\s|$|[?#])", url)]
        if len(hits) != 1:
            raise ValueError(f"shard URL {url!r} matches {len(hits)} manifest entries (expected "
                             f"one of {[e['file'] for e in entries[:3]]}...); pass manifest= the "
                             "manifest those shards belong to")
        return hits[0]


def verify_file(url: str, fh: IO[bytes], entry: dict) -> None:
    """sha256 and size of an open shard against its manifest entry (reads it whole)."""
    sha, n = hashlib.sha256(), 0
    fh.seek(0)
    readinto = getattr(fh, "readinto", None)
    if readinto is not None:  # one reused buffer: a fresh 4 MiB read costs ~1k page faults
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        while (k := readinto(view)):
            sha.update(view[:k])
            n += k
    else:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            sha.update(chunk)
            n += len(chunk)
    if n != entry["bytes"]:
        raise ShardIntegrityError(f"shard {url} has {n} bytes, manifest says {entry['bytes']} "
                                  "(truncated or replaced); re-shard or restore it")
    if sha.hexdigest() != entry["sha256"]:
        raise ShardIntegrityError(f"shard {url} fails its sha256 check (corrupt); re-shard or "
                                  "restore it")


def check_block(block: dict[str, Any], *, where: str, cells: int, has_values: bool,
                vocab_size: int, obs_fields: Sequence[str], max_token: int | None = None) -> None:
    """Cheap consistency checks of a decoded block, so corruption fails loudly, not as bad data.

    ``max_token``: the largest token id when the decoder already knows it (saves a pass).
    """
    lengths, tokens = block.get("lengths"), block.get("tokens")
    if lengths is None or tokens is None:
        raise ShardFormatError(f"{where}: block lacks lengths/tokens arrays")
    if len(lengths) != cells:
        raise ShardFormatError(f"{where}: block has {len(lengths)} cells, manifest says {cells}")
    if int(lengths.sum(dtype=np.int64)) != tokens.size:
        raise ShardFormatError(f"{where}: lengths sum to {int(lengths.sum())} but the block "
                               f"holds {tokens.size} tokens")
    values = block.get("values")
    if has_values != (values is not None) or (values is not None and values.size != tokens.size):
        raise ShardFormatError(f"{where}: values do not match the tokens (manifest value dtype "
                               f"{'set' if has_values else 'none'})")
    if tokens.size:
        peak = int(tokens.max()) if max_token is None else max_token
        if peak >= vocab_size:
            raise ShardFormatError(f"{where}: token id {peak} >= vocabulary size {vocab_size}")
    for name in ("cell_id", *obs_fields):
        if name in block and len(block[name]) != cells:
            raise ShardFormatError(f"{where}: {name} has {len(block[name])} entries for {cells} "
                                   "cells")


class _Buffers:
    """Recycled uint8 buffers for decoded block arrays (fresh memory faults on first touch)."""

    def __init__(self) -> None:
        self.free: list[np.ndarray] = []

    def get(self, nbytes: int) -> np.ndarray:
        for k, buf in enumerate(self.free):
            if len(buf) >= nbytes:
                del self.free[k]
                return buf
        return np.empty(max(nbytes + nbytes // 4, 64), dtype=np.uint8)

    def put(self, buf: np.ndarray) -> None:
        if len(self.free) < 8:
            self.free.append(buf)


def _intern(column: list[str]) -> list[str]:
    """Equal strings as one object: obs columns repeat a few values, and pickling (the
    DataLoader queue) writes a repeated object once."""
    try:
        return list(map(sys.intern, column))  # also one object across blocks
    except TypeError:  # a non-string (JSON null) in the column
        seen: dict[str, str] = {}
        return [seen.setdefault(v, v) if isinstance(v, str) else v for v in column]


class BlockReader:
    """Reads and checks blocks for one worker, applying the verify and on_error policies.

    Keeps a few shard files open and the last decoded blocks cached (windows share blocks at
    their edges). Not shared across processes: each worker builds its own.
    """

    _OPEN_FILES = 4
    _CACHED_BLOCKS = 2

    def __init__(self, shards: ShardSet, *, verify: str, on_error: str,
                 verified: frozenset[str] = frozenset()) -> None:
        self.shards = shards
        self.verify = verify
        self.on_error = on_error
        self.verified = verified
        """sha256 of shards the main process already knows good (verify="first" skips them)."""
        self.bad: set[int] = set()
        self.new_skips: list[str] = []
        self.new_verified: list[str] = []
        self._files: OrderedDict[int, IO[bytes]] = OrderedDict()
        self._blocks: OrderedDict[tuple[int, int], dict[str, Any]] = OrderedDict()
        self._buffers = _Buffers()
        self._decoder = BlockDecoder()

    def _file(self, i: int) -> IO[bytes]:
        fh = self._files.get(i)
        if fh is not None:
            self._files.move_to_end(i)
            return fh
        url, entry = self.shards.urls[i], self.shards.entries[i]
        fh = open_url(url)
        try:
            key = (url, entry["sha256"])
            known = entry["sha256"] in self.verified or _VERIFIED.get(key, "") is None
            if self.verify == "always" or (self.verify == "first" and not known):
                try:
                    verify_file(url, fh, entry)
                    _VERIFIED[key] = None
                    self.new_verified.append(entry["sha256"])
                except ShardIntegrityError as e:
                    _VERIFIED[key] = str(e)
                    raise
        except BaseException:
            fh.close()
            raise
        self._files[i] = fh
        while len(self._files) > self._OPEN_FILES:
            self._files.popitem(last=False)[1].close()
        return fh

    def read(self, i: int, b: int) -> dict[str, Any] | None:
        """Block ``b`` of shard ``i``, or None when the shard is unreadable and skipped.

        The block's arrays live in buffers this reader recycles: they stay valid until two
        more blocks have been read (copy what must live longer).
        """
        if i in self.bad:
            return None
        cached = self._blocks.get((i, b))
        if cached is not None:
            return cached
        url = self.shards.urls[i]
        try:
            block = self._decode(i, b)
        except (ShardFormatError, OSError, ValueError, KeyError, TypeError) as e:
            msg = str(e) if url in str(e) else f"shard {url}: {e}"
            if self.on_error == "raise":
                raise ShardFormatError(msg) from None
            self.bad.add(i)
            self.new_skips.append(url)
            fh = self._files.pop(i, None)
            if fh is not None:
                fh.close()
            return None
        self._blocks[(i, b)] = block
        while len(self._blocks) > self._CACHED_BLOCKS:
            for buf in self._blocks.popitem(last=False)[1].get("_buffers", ()):
                self._buffers.put(buf)
        return block

    def _decode(self, i: int, b: int) -> dict[str, Any]:
        url, entry = self.shards.urls[i], self.shards.entries[i]
        offset, size = entry["block_index"][b]
        fh = self._file(i)
        fh.seek(offset)
        blob = fh.read(size)
        where = f"{url}: block {b}"
        if len(blob) != size:
            raise ShardFormatError(f"{where} is truncated ({len(blob)} of {size} bytes)")
        try:
            raw = self._decoder.open(blob)
        except ShardFormatError as e:
            raise ShardFormatError(f"{where}: {e}") from None
        block: dict[str, Any] = {"lengths": raw.array("lengths")[0]} if "lengths" in raw.specs \
            else {}
        peak, owned = None, []
        for name in ("tokens", "values"):
            if name in raw.specs:
                dt, count = raw.specs[name][0], raw.count(name)
                out = None
                if dt.itemsize > 1:
                    buf = self._buffers.get(count * dt.itemsize)
                    owned.append(buf)
                    out = buf[: count * dt.itemsize].view(dt)
                block[name], p = raw.array(name, out)
                if name == "tokens":
                    peak = p if dt.itemsize > 1 and dt.kind == "u" else None
        block["_buffers"] = owned
        for name, col in raw.strings.items():
            block[name] = col if name == "cell_id" else _intern(col)
        check_block(block, where=where, cells=int(self.shards.sizes[i][b]),
                    has_values=self.shards.value_dtype is not None,
                    vocab_size=self.shards.vocab_size, obs_fields=self.shards.obs_fields,
                    max_token=peak)
        return block

    def take_skips(self) -> list[str]:
        """Shards first skipped since the last call (reported once, with the next batch)."""
        out, self.new_skips = self.new_skips, []
        return out

    def take_verified(self) -> list[str]:
        """sha256 of shards verified since the last call (the main process remembers them, so
        verify="first" means once per training process, not once per short-lived worker)."""
        out, self.new_verified = self.new_verified, []
        return out

    def close(self) -> None:
        for fh in self._files.values():
            fh.close()
        self._files.clear()
        self._blocks.clear()
