"""``scforge-shard inspect`` (manifest summary + decoded cells as gene symbols) and ``merge``."""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from scforge.data.shard.manifest import JOB_FILE, MANIFEST, atomic_write_json, load_manifest
from scforge.data.shard.reader import check_size, read_shards, verify_shard
from scforge.data.shard.writer import ShardError
from scforge.resources import load_json


def _symbols(man: dict) -> dict[int, str]:
    """Token id -> human-readable gene name for this manifest's vocabulary."""
    from scforge.data.vocab import build_vocab

    vocab = build_vocab(
        man["vocab"]["name"]
        if man["vocab"]["name"] in ("geneformer_v1", "geneformer_v2", "scgpt")
        else "scgpt"
    )
    if vocab.hash != man["vocab_hash"]:
        return {}
    names = load_json("gencode_v44_id2name.json.gz") if vocab.keyed_by == "ensembl" else {}
    return {t: names.get(g, g) for g, t in vocab.tokens.items()}


def inspect(path: str | Path, *, n_cells: int = 3, n_genes: int = 12, as_json: bool = False,
            verify: bool = False) -> str:
    """A readable summary of a shard directory.

    Every shard's size is checked against the manifest (a truncated shard is an error, not a
    summary that looks healthy); ``verify`` also checks every sha256 (reads everything).
    """
    man = load_manifest(path)
    for entry in man["shards"]:
        if str(entry.get("file", "")).endswith(".tar"):  # zarr units are checked by their store
            (verify_shard if verify else check_size)(Path(path) / entry["file"], entry)
    tot = man["totals"]
    if as_json:
        return json.dumps(
            {
                k: man[k]
                for k in ("format", "version", "tokenizer", "vocab", "totals", "obs_fields")
            },
            indent=1,
        )
    tk = man["tokenizer"]
    lines = [
        f"{path}: {man['format']} v{man['version']} ({man['created_by']})",
        f"  tokenizer  {tk['strategy']}  max_length={tk['max_length']}  options={tk['options']}",
        f"  vocabulary {man['vocab']['name']}  size={man['vocab']['size']}  "
        f"hash={man['vocab_hash'][:12]}",
        f"  cells {tot['cells']:,}  tokens {tot['tokens']:,} "
        f"({tot['tokens'] / max(tot['cells'], 1):.0f}/cell)  shards {tot['shards']}  "
        f"{tot['bytes'] / 1e6:.1f} MB ({tot['bytes'] / max(tot['cells'], 1):.0f} B/cell)  "
        f"counts mapped {100 * tot['fraction_counts_mapped']:.1f}%",
    ]
    for s in man["sources"]:
        m = s["mapping"]
        lines.append(
            f"  source {s['path']}: {s['n_cells']:,} cells, {m['n_mapped_genes']:,}/"
            f"{m['n_input_genes']:,} genes mapped via {m['via']}, "
            f"{m['n_collapse_groups']} collapsed groups"
        )
    sym = _symbols(man)
    for cell in islice(read_shards(path), n_cells):
        ids = cell["input_ids"][:n_genes].tolist()
        genes = [sym.get(int(t), str(t)) for t in ids]
        if "values" in cell:
            genes = [
                f"{g}:{v:g}" for g, v in zip(genes, cell["values"][:n_genes].tolist(), strict=True)
            ]
        meta = {f: cell[f] for f in man["obs_fields"] if f in cell}
        lines.append(
            f"  cell {cell['cell_id']} {meta} ({len(cell['input_ids'])} tokens): "
            + " ".join(genes)
            + (" ..." if len(cell["input_ids"]) > n_genes else "")
        )
    return "\n".join(lines)


def merge(path: str | Path) -> dict:
    """Builds ``manifest.json`` from the sidecars written by all partitions of a job."""
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard.manifest import read_sidecar
    from scforge.data.shard.writer import ShardJob, plan_units

    root = Path(path)
    if not (root / JOB_FILE).is_file():
        raise ShardError(f"{root} has no {JOB_FILE}: not an scforge shard directory")
    job = json.loads((root / JOB_FILE).read_text())
    units = plan_units([i["n_cells"] for i in job["inputs"]], job["cells_per_shard"])
    entries = [read_sidecar(root, u.file) for u in units]
    missing = [u.file for u, e in zip(units, entries, strict=True) if e is None]
    if missing:
        raise ShardError(
            f"{root}: {len(missing)} of {len(units)} shards are not finished (e.g. "
            f"{missing[:3]}); rerun the partitions that own them"
        )
    cfg = load_config(ShardJobConfig, [root / "config.yaml"])
    inputs = [s for s in json.loads((root / "inputs.json").read_text())]
    man = ShardJob(inputs, root, cfg, progress=False).build_manifest(entries)
    atomic_write_json(root / MANIFEST, man)
    return man
