"""The sharding job: inputs -> tokenized, compressed, versioned shards (tar or a Zarr store).

Work is cut into units (one shard = a contiguous row range of one input), so the output is a pure
function of (inputs, config): any number of processes or cluster partitions, and any crash and
rerun, produce byte-identical shards. Within a unit, reading the next chunk overlaps tokenizing
and compressing the current one. QC-dropped cells leave a unit with fewer cells; its blocks stay
packed (every block holds ``block_cells`` cells but the last), so readers index cells as before.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
import time
from collections import deque
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
from scforge.data.shard.prepare import (
    CellPacker,
    Piece,
    Prepared,
    ShardError,
    UnitTally,
    input_label,
    iter_unit,
)
from scforge.data.sources import SourceError
from scforge.data.stats.qc import add_counts

log = logging.getLogger(__name__)

# Seconds to sleep after each chunk: lets crash-and-resume tests kill a job mid-shard.
_CHUNK_DELAY = float(os.environ.get("SCFORGE_SHARD_CHUNK_DELAY", "0") or 0)

_Prepared = Prepared  # the name benchmarks/bench_shard.py imports


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

    @property
    def name(self) -> str:
        return f"shard-{self.index:06d}"


def plan_units(sizes: list[int], cells_per_shard: int) -> list[Unit]:
    """Cuts inputs of ``sizes`` cells into shards of ``cells_per_shard`` (never across inputs)."""
    units, idx, offset = [], 0, 0
    for i, n in enumerate(sizes):
        for a in range(0, n, cells_per_shard):
            units.append(Unit(idx, i, a, min(a + cells_per_shard, n), offset))
            idx += 1
        offset += n
    return units


def _encode_run(prep: Prepared, unit: Unit, block_no: int, run) -> tuple[str, bytes, int]:
    """One compressed block: (member name, bytes, n_tokens)."""
    rows, lens, toks, vals = run
    names, obs = prep.obs(unit.input_index)
    arrays = {"lengths": lens.astype(np.uint32), "tokens": toks}
    if vals is not None:
        arrays["values"] = vals
    arrays["row"] = rows.astype(np.int64)
    strings = {"cell_id": names[rows].tolist()}
    for k, col in obs.items():
        strings[k] = col[rows].tolist()
    member = f"{unit.index:06d}-{block_no:06d}.{BLOCK_SUFFIX}"
    return member, encode_block(arrays, strings, level=prep.cfg.shard.compression_level), len(toks)


def _encode_blocks(prep: Prepared, unit: Unit, piece: Piece) -> list[tuple[str, bytes, int]]:
    """Blocks of one piece on its own (used to estimate shard sizes)."""
    packer = CellPacker(prep.cfg.shard.block_cells)
    runs = packer.add(piece) + packer.rest()
    return [_encode_run(prep, unit, i, r) for i, r in enumerate(runs)]


class _HashingWriter(io.RawIOBase):
    def __init__(self, fh) -> None:
        self.fh, self.sha, self.n = fh, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.n += len(b)
        return self.fh.write(b)


def write_unit(prep: Prepared, unit: Unit, out: Path, progress=None) -> dict:
    """Writes one tar shard atomically (temp name, fsync, rename) and its sidecar; returns the
    entry. Encoding runs one block behind reading and tokenizing."""
    tmp = out / f".{unit.file}.tmp-{os.getpid()}"
    tally = UnitTally()
    n_tokens = 0.0
    n_blocks = 0
    index: list[list[int]] = []
    packer = CellPacker(prep.cfg.shard.block_cells)
    try:
        with open(tmp, "wb") as raw, ThreadPoolExecutor(1) as pool:
            hw = _HashingWriter(raw)
            with tarfile.open(fileobj=hw, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                pending: deque = deque()
                block_no = 0

                def submit(runs) -> None:
                    nonlocal block_no
                    for run in runs:
                        pending.append(pool.submit(_encode_run, prep, unit, block_no, run))
                        block_no += 1

                for piece in iter_unit(prep, unit, delay=_CHUNK_DELAY):
                    tally.add(piece)
                    submit(packer.add(piece))
                    while len(pending) > 1:
                        n_blocks, n_tokens = _add_member(
                            tar, pending.popleft().result(), n_blocks, n_tokens, index
                        )
                    if progress is not None:
                        progress(len(piece.rows) + piece.dropped.get("total", 0))
                submit(packer.rest())
                while pending:
                    n_blocks, n_tokens = _add_member(
                        tar, pending.popleft().result(), n_blocks, n_tokens, index
                    )
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, out / unit.file)
    finally:
        if tmp.exists():
            tmp.unlink()
    entry = {
        "file": unit.file,
        "tokens": int(n_tokens),
        "bytes": hw.n,
        "sha256": hw.sha.hexdigest(),
        "blocks": n_blocks,
        "block_index": index,
        **tally.entry(unit),
    }
    atomic_write_json(sidecar_path(out, unit.file), entry)
    return entry


def _add_member(tar: tarfile.TarFile, block, n_blocks: int, n_tokens: float, index: list):
    name, blob, ntok = block
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
    return n_blocks + 1, n_tokens + ntok


# ---------------------------------------------------------------------------- worker processes
_WORKER: dict = {}


def _worker_init(inputs: list[str], cfg_dict: dict, hvg_genes: list[str] | None) -> None:
    import numba

    # Each worker's kernels get their share of the cores instead of all of them each.
    workers = max(1, int(cfg_dict["shard"]["workers"]))
    numba.set_num_threads(
        max(1, min(numba.config.NUMBA_NUM_THREADS, (os.cpu_count() or 1) // workers))
    )
    from scforge.config import ShardJobConfig, load_config

    cfg = load_config(ShardJobConfig, base=cfg_dict)
    _WORKER["prep"] = Prepared(inputs, cfg, hvg_genes=hvg_genes)


def _worker_run(unit_dict: dict, out: str) -> dict:
    prep = _WORKER["prep"]
    return _unit_writer(prep.cfg)(prep, Unit(**unit_dict), Path(out))


def _unit_writer(cfg: ShardJobConfig):
    if cfg.shard.format == "zarr":
        from scforge.data.store.writer import write_store_unit

        return write_store_unit
    return write_unit


def _read_entry(cfg: ShardJobConfig, out: Path, unit: Unit) -> dict | None:
    if cfg.shard.format == "zarr":
        from scforge.data.store.writer import read_store_sidecar

        return read_store_sidecar(out, unit.name)
    return read_sidecar(out, unit.file)


# ---------------------------------------------------------------------------- the job
class ShardJob:
    """A sharding job over ``inputs`` into ``out``.

    Args:
        inputs: input paths or URLs (any format ``open_source`` reads); empty = the
            ``source.soma`` block of the config.
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
        from scforge.data.shard.prepare import config_inputs

        inputs = [str(p) for p in inputs] or config_inputs(cfg)
        if not inputs:
            raise ShardError(
                "no inputs given; name input files or set source.soma.uri / "
                "source.soma.census_version"
            )
        i, n = partition
        if not (n >= 1 and 0 <= i < n):
            raise ShardError(f"--partition {i}/{n} is invalid; use i/n with 0 <= i < n")
        self.inputs = inputs
        self.out = Path(out)
        self.cfg = cfg
        self.partition = partition
        self.progress = progress
        self.prep = Prepared(self.inputs, cfg)
        for idx, (src, p) in enumerate(zip(self.prep.sources, self.inputs, strict=True)):
            if src.n_cells == 0:
                raise ShardError(f"{p} has no cells")
            self.prep.check_counts(idx, src.read_rows(0, min(src.n_cells, 64)))
        self._select_hvg()
        self.cells_per_shard = cfg.shard.cells_per_shard or self._estimate_cells_per_shard()

    def _select_hvg(self) -> None:
        hv = self.cfg.source.hvg
        if hv.genes:
            from scforge.data.stats import load_hvg_genes

            self.prep.set_hvg(load_hvg_genes(hv.genes))
        elif self.cfg.hvg_n_top:
            from scforge.data.stats import compute_corpus_stats

            log.info(
                "selecting %d highly variable genes (a statistics pass over the inputs)",
                self.cfg.hvg_n_top,
            )
            st = compute_corpus_stats(
                self.prep.sources, self.cfg, medians=False, hvg_n_top=self.cfg.hvg_n_top
            )
            self.prep.set_hvg(st.hvg_genes())

    def _estimate_cells_per_shard(self) -> int:
        """Cells per shard hitting ``target_shard_mb``, measured on blocks spread evenly over the
        first input (deterministic: the same input and config always give the same answer)."""
        from scforge.data.shard.prepare import process_chunk

        src = self.prep.sources[0]
        block = self.cfg.shard.block_cells
        n = min(src.n_cells, block)
        size = cells = 0
        for start in sorted({int(s) for s in np.linspace(0, src.n_cells - n, 8)}):
            piece = process_chunk(self.prep, 0, 0, src.read_rows(start, start + n))
            unit = Unit(0, 0, start, start + n, 0)
            size += sum(len(b) + 512 for _, b, _ in _encode_blocks(self.prep, unit, piece))
            cells += n
        per_cell = max(size / cells, 1.0)
        cps = int(self.cfg.shard.target_shard_mb * 1e6 / per_cell) // block * block
        return max(block, cps)

    @property
    def format_name(self) -> tuple[str, int]:
        if self.cfg.shard.format == "zarr":
            from scforge.data.store.format import STORE_FORMAT, STORE_VERSION

            return STORE_FORMAT, STORE_VERSION
        return FORMAT_NAME, FORMAT_VERSION

    def fingerprint(self) -> dict:
        """What must match for an existing output directory to be resumed."""
        from scforge.data.sources.soma import is_soma_url
        from scforge.data.stats.corpus import hvg_hash

        name, version = self.format_name
        return {
            "format": name,
            "version": version,
            "tokenizer": self.prep.tokenizer.describe(),
            "vocab_hash": self.prep.vocab.hash,
            "inputs": [
                {
                    "name": s.path if is_soma_url(s.path) else os.path.basename(s.path),
                    "n_cells": s.n_cells,
                    "n_genes": s.n_genes,
                }
                for s in self.prep.sources
            ],
            "obs_fields": list(self.prep.obs_fields),
            "layer": self.cfg.source.layer,
            "cells_per_shard": self.cells_per_shard,
            "block_cells": self.cfg.shard.block_cells,
            "compression_level": self.cfg.shard.compression_level,
            "qc": asdict(self.cfg.source.qc),
            "hvg": hvg_hash(self.prep.hvg_genes) if self.prep.hvg_genes else None,
            **({"store_layout": self.cfg.store.layout} if self.cfg.shard.format == "zarr" else {}),
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
        elif (
            any(self.out.glob("shard-*.tar"))
            or any(self.out.glob("shard-*/zarr.json"))
            or (self.out / MANIFEST).exists()
        ):
            raise ShardError(f"{self.out} holds shards not written by this job; use a new --out")
        else:
            atomic_write_json(job_path, fp)
        from scforge.config.loader import to_yaml

        (self.out / "config.yaml").write_text(to_yaml(self.cfg))
        atomic_write_json(self.out / "inputs.json", [input_label(p) for p in self.inputs])
        if self.prep.hvg_genes:
            atomic_write_json(self.out / "hvg.json", self.prep.hvg_genes)
        if self.cfg.shard.format == "zarr":
            from scforge.data.store.writer import init_store

            init_store(self.out)

    def run(self) -> dict:
        """Writes this partition's missing shards, then the manifest if the job is complete."""
        t0 = time.perf_counter()
        self._claim_output()
        units = plan_units([s.n_cells for s in self.prep.sources], self.cells_per_shard)
        i, n = self.partition
        mine = [u for u in units if u.index % n == i]
        todo = [u for u in mine if _read_entry(self.cfg, self.out, u) is None]
        skipped = len(mine) - len(todo)
        for u in todo:  # leftovers of a killed run (only our own units: partitions may share out)
            for pattern in (f".{u.file}.tmp-*", f".{u.name}.tmp-*"):
                for stale in self.out.glob(pattern):
                    _remove(stale)
        cells_todo = sum(u.stop - u.start for u in todo)
        bar = _progress_bar(cells_todo, self.progress)
        writer = _unit_writer(self.cfg)
        try:
            if self.cfg.shard.workers > 1 and len(todo) > 1:
                self._run_pool(todo, bar)
            else:
                for u in todo:
                    writer(self.prep, u, self.out, progress=bar.update)
        finally:
            bar.close()
        elapsed = time.perf_counter() - t0
        entries = [_read_entry(self.cfg, self.out, u) for u in units]
        part = {
            "partition": [i, n],
            "shards": [u.name if self.cfg.shard.format == "zarr" else u.file for u in mine],
        }
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
            "cells_dropped": sum(e.get("dropped", {}).get("total", 0) for e in mine_entries),
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
            initargs=(self.inputs, to_dict(self.cfg), self.prep.hvg_genes),
        ) as pool:
            futs = {pool.submit(_worker_run, asdict(u), str(self.out)): u for u in todo}
            for f in as_completed(futs):
                f.result()
                u = futs[f]
                bar.update(u.stop - u.start)

    def build_manifest(self, entries: list[dict]) -> dict:
        """The manifest of a complete job. Shards left empty by QC stay on disk (they mark their
        unit done) but are not listed: every listed shard holds at least one cell."""
        from scforge import __version__

        total = sum(e["total_counts"] for e in entries)
        mapped = sum(e["mapped_counts"] for e in entries)
        sources = []
        for idx in range(len(self.prep.sources)):
            d = self.prep.describe_source(idx)
            mine = [e for e in entries if e["input"] == idx]
            src_total = sum(e["total_counts"] for e in mine)
            src_mapped = sum(e["mapped_counts"] for e in mine)
            d["mapping"]["fraction_counts_mapped"] = (
                round(src_mapped / src_total, 6) if src_total else 0
            )
            d["cells_kept"] = sum(e["cells"] for e in mine)
            d["cells_dropped"] = _sum_drops(mine)
            d["qc"] = self.prep.filters[idx].describe()
            sources.append(d)
        name, version = self.format_name
        keys = ["file", "cells", "tokens", "bytes", "sha256", "input", "rows"]
        if self.cfg.shard.format == "tar":
            keys[5:5] = ["blocks"]
            keys.append("block_index")
        man = {
            "format": name,
            "version": version,
            "created_by": f"scforge {__version__}",
            "tokenizer": self.prep.tokenizer.describe(),
            "vocab": self.prep.vocab.describe(),
            "vocab_hash": self.prep.vocab.hash,
            "sources": sources,
            "obs_fields": list(self.prep.obs_fields),
            "block_cells": self.cfg.shard.block_cells,
            "cells_per_shard": self.cells_per_shard,
            "shards": [{k: e[k] for k in keys} for e in entries if e["cells"] > 0],
            "totals": {
                "cells": sum(e["cells"] for e in entries),
                "tokens": sum(e["tokens"] for e in entries),
                "bytes": sum(e["bytes"] for e in entries),
                "shards": sum(e["cells"] > 0 for e in entries),
                "fraction_counts_mapped": round(mapped / total, 6) if total else 0,
                "cells_dropped": _sum_drops(entries),
            },
            "qc": asdict(self.cfg.source.qc),
        }
        if self.prep.hvg_genes:
            man["hvg"] = {"n_genes": len(self.prep.hvg_genes), "file": "hvg.json"}
        if self.cfg.shard.format == "zarr":
            from scforge.data.store.format import describe_layout
            from scforge.data.store.writer import dense_width_pad

            width, pad_id = dense_width_pad(self.prep)
            man["layout"] = describe_layout(self.cfg.store.layout, width=width, pad_id=pad_id)
        return man


def _sum_drops(entries: list[dict]) -> dict[str, int]:
    acc: dict[str, int] = {}
    for e in entries:
        add_counts(acc, e.get("dropped", {}))
    return acc


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
