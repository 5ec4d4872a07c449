"""The sharding job: inputs -> tokenized, compressed, versioned WebDataset shards.

Work is cut into units (one shard = a contiguous row range of one input), so the output is a pure
function of (inputs, config): any number of processes or cluster partitions, and any crash and
rerun, produce byte-identical shards. Within a unit, reading the next chunk overlaps tokenizing
and compressing the current one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from scforge.config.schema import ShardJobConfig
from scforge.data.shard.format import BLOCK_SUFFIX, FORMAT_NAME, FORMAT_VERSION, encode_block
from scforge.data.shard.manifest import (
    JOB_FILE,
    MANIFEST,
    atomic_write_json,
    read_sidecar,
    sidecar_path,
)
from scforge.data.sources import Source, SourceError, open_source
from scforge.data.tokenizers import Tokenizer, get_tokenizer
from scforge.data.vocab import GeneVocab, MappingReport, build_vocab
from scforge.kernels import GeneMap, check_raw_counts

log = logging.getLogger(__name__)

# Seconds to sleep after each chunk: lets crash-and-resume tests kill a job mid-shard.
_CHUNK_DELAY = float(os.environ.get("SCFORGE_SHARD_CHUNK_DELAY", "0") or 0)


class ShardError(ValueError):
    """The job cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Unit:
    """One shard: rows ``[start, stop)`` of input ``input_index``."""

    index: int
    input_index: int
    start: int
    stop: int
    corpus_offset: int
    """Corpus-wide index of the input's row 0 (keys deterministic tie-breaks)."""

    @property
    def file(self) -> str:
        return f"shard-{self.index:06d}.tar"


def plan_units(sizes: list[int], cells_per_shard: int) -> list[Unit]:
    """Cuts inputs of ``sizes`` cells into shards of ``cells_per_shard`` (never across inputs)."""
    units, idx, offset = [], 0, 0
    for i, n in enumerate(sizes):
        for a in range(0, n, cells_per_shard):
            units.append(Unit(idx, i, a, min(a + cells_per_shard, n), offset))
            idx += 1
        offset += n
    return units


class _Prepared:
    """Sources, gene maps and tokenizer of a job (rebuilt in each worker process)."""

    def __init__(self, inputs: list[str], cfg: ShardJobConfig) -> None:
        self.cfg = cfg
        self.vocab: GeneVocab = build_vocab(
            cfg.vocab.kind,
            token_dictionary=cfg.vocab.token_dictionary,
            gene_medians=cfg.vocab.gene_medians,
            id_mapping=cfg.vocab.id_mapping,
        )
        self.tokenizer: Tokenizer = get_tokenizer(cfg.tokenizer.strategy)(cfg.tokenizer, self.vocab)
        self.sources: list[Source] = []
        self.maps: list[GeneMap] = []
        self.reports: list[MappingReport] = []
        for path in inputs:
            src = open_source(path, layer=cfg.source.layer, gene_column=cfg.source.gene_column)
            try:
                gmap, rep = self.vocab.map_genes(
                    src.gene_ids(),
                    var_symbols=src.gene_symbols(),
                    symbol_mapping=cfg.vocab.symbol_mapping,
                    min_overlap=cfg.vocab.min_overlap,
                )
            except ValueError as e:
                raise ShardError(f"{path}: {e}") from None
            self.sources.append(src)
            self.maps.append(gmap)
            self.reports.append(rep)
        self._obs_cache: dict[int, tuple[np.ndarray, dict[str, np.ndarray]]] = {}

    def obs(self, i: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        if i not in self._obs_cache:
            src = self.sources[i]
            df = src.obs_columns(list(self.cfg.source.obs_fields))
            self._obs_cache[i] = (src.obs_names(), {c: df[c].to_numpy() for c in df.columns})
        return self._obs_cache[i]


def _check_counts(prep: _Prepared, unit_input: int, chunk) -> None:
    if not prep.cfg.source.require_raw_counts:
        return
    bad = check_raw_counts(chunk.data)
    if bad is None:
        return
    pos, problem = bad
    row = chunk.start + int(np.searchsorted(chunk.indptr, pos, side="right") - 1)
    src = prep.sources[unit_input]
    raise ShardError(
        f"{src.path}: {prep.cfg.source.layer} holds {problem} values (e.g. {chunk.data[pos]!r} in "
        f"row {row}) but raw counts are required; point source.layer at the raw-count matrix "
        "(e.g. source.layer=layers/counts or raw/X), or set source.require_raw_counts=false for "
        "continuous_projection of already-normalised data"
    )


def _chunk_rows(cfg: ShardJobConfig) -> int:
    """Chunk size rounded up to whole blocks, so blocks never depend on the chunk size."""
    b = cfg.shard.block_cells
    return max(b, -(-cfg.source.chunk_cells // b) * b)


def _encode_blocks(prep: _Prepared, unit: Unit, chunk, tok) -> list[tuple[str, bytes, int]]:
    """Splits a tokenized chunk into compressed blocks: (member name, bytes, n_tokens)."""
    names, obs = prep.obs(unit.input_index)
    cfg = prep.cfg
    out = []
    lengths_all = np.diff(tok.offsets)
    for a in range(0, tok.n_cells, cfg.shard.block_cells):
        b = min(a + cfg.shard.block_cells, tok.n_cells)
        t0, t1 = int(tok.offsets[a]), int(tok.offsets[b])
        rows = np.arange(chunk.start + a, chunk.start + b, dtype=np.int64)
        arrays = {"lengths": lengths_all[a:b].astype(np.uint32), "tokens": tok.tokens[t0:t1]}
        if tok.values is not None:
            arrays["values"] = tok.values[t0:t1]
        arrays["row"] = rows
        strings = {"cell_id": names[chunk.start + a : chunk.start + b].tolist()}
        for k, col in obs.items():
            strings[k] = col[chunk.start + a : chunk.start + b].tolist()
        member = f"{unit.index:06d}-{(chunk.start - unit.start + a) // cfg.shard.block_cells:06d}"
        out.append(
            (
                f"{member}.{BLOCK_SUFFIX}",
                encode_block(arrays, strings, level=cfg.shard.compression_level),
                t1 - t0,
            )
        )
    return out


class _HashingWriter(io.RawIOBase):
    def __init__(self, fh) -> None:
        self.fh, self.sha, self.n = fh, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.fh.write(b)


def write_unit(prep: _Prepared, unit: Unit, out: Path, progress=None) -> dict:
    """Writes one shard atomically (temp name, fsync, rename) and its sidecar; returns the entry."""
    src = prep.sources[unit.input_index]
    gmap = prep.maps[unit.input_index]
    step = _chunk_rows(prep.cfg)
    starts = list(range(unit.start, unit.stop, step))
    tmp = out / f".{unit.file}.tmp-{os.getpid()}"
    n_tokens = total_counts = mapped_counts = 0.0
    n_blocks = 0
    index: list[list[int]] = []
    try:
        with open(tmp, "wb") as raw, ThreadPoolExecutor(2) as pool:
            hw = _HashingWriter(raw)
            with tarfile.open(fileobj=hw, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                nxt = pool.submit(src.read_rows, starts[0], min(starts[0] + step, unit.stop))
                pending = None
                for i in range(len(starts)):
                    chunk = nxt.result()
                    if i + 1 < len(starts):
                        b = starts[i + 1]
                        nxt = pool.submit(src.read_rows, b, min(b + step, unit.stop))
                    _check_counts(prep, unit.input_index, chunk)
                    rows = unit.corpus_offset + np.arange(chunk.start, chunk.start + chunk.n_rows)
                    tok = prep.tokenizer.tokenize(chunk, gmap, rows)
                    total_counts += float(chunk.data.sum(dtype=np.float64))
                    mapped_counts += float(
                        chunk.data[gmap.col_token[chunk.indices] >= 0].sum(dtype=np.float64)
                    )
                    enc = pool.submit(_encode_blocks, prep, unit, chunk, tok)
                    if pending is not None:
                        n_blocks, n_tokens = _add_members(
                            tar, pending.result(), n_blocks, n_tokens, index
                        )
                    pending = enc
                    if progress is not None:
                        progress(chunk.n_rows)
                    if _CHUNK_DELAY:
                        time.sleep(_CHUNK_DELAY)
                if pending is not None:
                    n_blocks, n_tokens = _add_members(
                        tar, pending.result(), n_blocks, n_tokens, index
                    )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out / unit.file)
    finally:
        if tmp.exists():
            tmp.unlink()
    entry = {
        "file": unit.file,
        "cells": unit.stop - unit.start,
        "tokens": int(n_tokens),
        "bytes": hw.n,
        "sha256": hw.sha.hexdigest(),
        "blocks": n_blocks,
        "input": unit.input_index,
        "rows": [unit.start, unit.stop],
        "block_index": index,
        "total_counts": total_counts,
        "mapped_counts": mapped_counts,
    }
    atomic_write_json(sidecar_path(out, unit.file), entry)
    return entry


def _add_members(tar: tarfile.TarFile, blocks, n_blocks: int, n_tokens: float, index: list):
    for name, blob, ntok in blocks:
        # Byte offset of the member's data (after its 512-byte header): lets readers seek to a
        # block directly (exact resume, random access, ranged reads from object stores).
        index.append([tar.offset + tarfile.BLOCKSIZE, len(blob)])
        info = tarfile.TarInfo(name)
        info.size = len(blob)
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(blob))
        n_blocks += 1
        n_tokens += ntok
    return n_blocks, n_tokens


# ---------------------------------------------------------------------------- worker processes
_WORKER: dict = {}


def _worker_init(inputs: list[str], cfg_dict: dict) -> None:
    from scforge.config import ShardJobConfig, load_config

    cfg = load_config(ShardJobConfig, base=cfg_dict)
    _WORKER["prep"] = _Prepared(inputs, cfg)


def _worker_run(unit_dict: dict, out: str) -> dict:
    return write_unit(_WORKER["prep"], Unit(**unit_dict), Path(out))


# ---------------------------------------------------------------------------- the job
class ShardJob:
    """A sharding job over ``inputs`` into ``out``.

    Args:
        inputs: input paths (h5ad).
        out: output directory.
        cfg: the resolved job config.
        partition: ``(i, n)``: this job writes units ``u`` with ``u % n == i``.
        progress: show a progress bar.
    """

    def __init__(
        self,
        inputs: list[str],
        out: str | Path,
        cfg: ShardJobConfig,
        *,
        partition: tuple[int, int] = (0, 1),
        progress: bool = True,
    ) -> None:
        if not inputs:
            raise ShardError("no inputs given")
        i, n = partition
        if not (n >= 1 and 0 <= i < n):
            raise ShardError(f"--partition {i}/{n} is invalid; use i/n with 0 <= i < n")
        self.inputs = [str(p) for p in inputs]
        self.out = Path(out)
        self.cfg = cfg
        self.partition = partition
        self.progress = progress
        self.prep = _Prepared(self.inputs, cfg)
        for src, p in zip(self.prep.sources, self.inputs, strict=True):
            if src.n_cells == 0:
                raise ShardError(f"{p} has no cells")
            first = src.read_rows(0, min(src.n_cells, 64))
            _check_counts(self.prep, self.inputs.index(p), first)
        self.cells_per_shard = cfg.shard.cells_per_shard or self._estimate_cells_per_shard()

    def _estimate_cells_per_shard(self) -> int:
        """Cells per shard hitting ``target_shard_mb``, measured on blocks spread evenly over the
        first input (deterministic: the same input and config always give the same answer)."""
        src = self.prep.sources[0]
        block = self.cfg.shard.block_cells
        n = min(src.n_cells, block)
        size = cells = 0
        for start in sorted({int(s) for s in np.linspace(0, src.n_cells - n, 8)}):
            chunk = src.read_rows(start, start + n)
            tok = self.prep.tokenizer.tokenize(
                chunk, self.prep.maps[0], np.arange(start, start + n)
            )
            unit = Unit(0, 0, start, start + n, 0)
            size += sum(len(b) + 512 for _, b, _ in _encode_blocks(self.prep, unit, chunk, tok))
            cells += n
        per_cell = max(size / cells, 1.0)
        cps = int(self.cfg.shard.target_shard_mb * 1e6 / per_cell) // block * block
        return max(block, cps)

    def fingerprint(self) -> dict:
        """What must match for an existing output directory to be resumed."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "tokenizer": self.prep.tokenizer.describe(),
            "vocab_hash": self.prep.vocab.hash,
            "inputs": [
                {"name": os.path.basename(s.path), "n_cells": s.n_cells, "n_genes": s.n_genes}
                for s in self.prep.sources
            ],
            "obs_fields": list(self.cfg.source.obs_fields),
            "layer": self.cfg.source.layer,
            "cells_per_shard": self.cells_per_shard,
            "block_cells": self.cfg.shard.block_cells,
            "compression_level": self.cfg.shard.compression_level,
        }

    def _claim_output(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        job_path = self.out / JOB_FILE
        fp = self.fingerprint()
        if job_path.is_file():
            old = json.loads(job_path.read_text())
            if old != fp:
                diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
                raise ShardError(
                    f"{self.out} holds shards of a different job (differs in: {', '.join(diff)}); "
                    "write to a new --out directory, or delete the old one"
                )
        elif any(self.out.glob("shard-*.tar")) or (self.out / MANIFEST).exists():
            raise ShardError(f"{self.out} holds shards not written by this job; use a new --out")
        else:
            atomic_write_json(job_path, fp)
        from scforge.config.loader import to_yaml

        (self.out / "config.yaml").write_text(to_yaml(self.cfg))
        atomic_write_json(self.out / "inputs.json", [os.path.abspath(p) for p in self.inputs])

    def run(self) -> dict:
        """Writes this partition's missing shards, then the manifest if the job is complete."""
        t0 = time.perf_counter()
        self._claim_output()
        units = plan_units([s.n_cells for s in self.prep.sources], self.cells_per_shard)
        i, n = self.partition
        mine = [u for u in units if u.index % n == i]
        todo = [u for u in mine if read_sidecar(self.out, u.file) is None]
        skipped = len(mine) - len(todo)
        for u in todo:  # leftovers of a killed run (only our own units: partitions may share out)
            for stale in self.out.glob(f".{u.file}.tmp-*"):
                stale.unlink()
        cells_todo = sum(u.stop - u.start for u in todo)
        bar = _progress_bar(cells_todo, self.progress)
        try:
            if self.cfg.shard.workers > 1 and len(todo) > 1:
                self._run_pool(todo, bar)
            else:
                for u in todo:
                    write_unit(self.prep, u, self.out, progress=bar.update)
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        entries = [read_sidecar(self.out, u.file) for u in units]
        part = {"partition": [i, n], "shards": [u.file for u in mine]}
        atomic_write_json(self.out / f"manifest.part-{i}-of-{n}.json", part)
        complete = all(e is not None for e in entries)
        if complete:
            atomic_write_json(self.out / MANIFEST, self.build_manifest(entries))
        mine_entries = [e for e in entries if e is not None and e["file"] in set(part["shards"])]
        return {
            "out": str(self.out),
            "complete": complete,
            "cells_written": cells_todo,
            "shards_written": len(todo),
            "shards_skipped": skipped,
            "cells": sum(e["cells"] for e in mine_entries),
            "tokens": sum(e["tokens"] for e in mine_entries),
            "bytes": sum(e["bytes"] for e in mine_entries),
            "shards": len(mine_entries),
            "seconds": round(elapsed, 3),
            "cells_per_s": round(cells_todo / elapsed, 1) if elapsed > 0 else None,
        }

    def _run_pool(self, todo: list[Unit], bar) -> None:
        ctx = get_context("spawn")  # fork after Numba's OpenMP kernels have run aborts
        from scforge.config.loader import to_dict

        with ProcessPoolExecutor(
            self.cfg.shard.workers,
            mp_context=ctx,
            initializer=_worker_init,
            initargs=(self.inputs, to_dict(self.cfg)),
        ) as pool:
            futs = {pool.submit(_worker_run, asdict(u), str(self.out)): u for u in todo}
            for f in as_completed(futs):
                f.result()
                u = futs[f]
                bar.update(u.stop - u.start)

    def build_manifest(self, entries: list[dict]) -> dict:
        total = sum(e["total_counts"] for e in entries)
        mapped = sum(e["mapped_counts"] for e in entries)
        from scforge import __version__

        sources = []
        for idx, (src, rep) in enumerate(zip(self.prep.sources, self.prep.reports, strict=True)):
            d = src.describe()
            d["mapping"] = rep.as_dict()
            d["dataset"] = Path(src.path).stem
            src_total = sum(e["total_counts"] for e in entries if e["input"] == idx)
            src_mapped = sum(e["mapped_counts"] for e in entries if e["input"] == idx)
            d["mapping"]["fraction_counts_mapped"] = (
                round(src_mapped / src_total, 6) if src_total else 0
            )
            sources.append(d)
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "created_by": f"scforge {__version__}",
            "tokenizer": self.prep.tokenizer.describe(),
            "vocab": self.prep.vocab.describe(),
            "vocab_hash": self.prep.vocab.hash,
            "sources": sources,
            "obs_fields": list(self.cfg.source.obs_fields),
            "block_cells": self.cfg.shard.block_cells,
            "cells_per_shard": self.cells_per_shard,
            "shards": [
                {
                    k: e[k]
                    for k in (
                        "file",
                        "cells",
                        "tokens",
                        "bytes",
                        "sha256",
                        "blocks",
                        "input",
                        "rows",
                        "block_index",
                    )
                }
                for e in entries
            ],
            "totals": {
                "cells": sum(e["cells"] for e in entries),
                "tokens": sum(e["tokens"] for e in entries),
                "bytes": sum(e["bytes"] for e in entries),
                "shards": len(entries),
                "fraction_counts_mapped": round(mapped / total, 6) if total else 0,
            },
        }


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        unit="cell",
        unit_scale=True,
        smoothing=0.1,
        disable=not enabled,
        desc="sharding",
        dynamic_ncols=True,
    )


def shard(inputs: list[str], out: str | Path, cfg: ShardJobConfig | None = None, **kw) -> dict:
    """Convenience: ``ShardJob(inputs, out, cfg, **kw).run()``."""
    try:
        return ShardJob(inputs, out, cfg or ShardJobConfig(), **kw).run()
    except SourceError as e:
        raise ShardError(str(e)) from None
