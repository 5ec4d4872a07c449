"""Embedding and evaluation cost: scforge embed throughput, scib-metrics runtime on its embedding.

Measured in one run on real labelled cells (``pbmc_2batch.h5ad``, 2 batches, 9 cell types):

- embed: tokenization (the checkpoint's tokenizer) and the model's forward passes
  (``scforge.eval.embed``), cells/s each. With ``--checkpoint`` the given export is used; without
  one, a freshly initialised encoder of ``--preset`` (seed 0) is exported with the manifest of a
  few shards of the same cells: its speed is the architecture's, its scores mean nothing.
- baseline: the HVG + PCA embedding scforge's ``embedding_quality`` task compares against
  (log1p-normalised 2,000 HVGs, 50 PCs), its compute time.
- scib-metrics ``Benchmarker`` (default metrics, ``n_jobs=1``) timed on the model embedding and on
  the PCA baseline separately, alternating, ``--repeat`` times each; the first round includes
  JAX compilation (it is specialised on the number of cells, so a warm-up on fewer cells does
  not pay it), the best round is reported as the runtime and the first as ``cold_seconds``;
  ratio = model runtime / PCA runtime.

Usage: ``python -m benchmarks.bench_eval [--cells 4000] [--checkpoint DIR] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import loadavg, machine, write_results

os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / ".." / "shared" / "data" / "pbmc_2batch.h5ad"


def random_export(adata, root: Path, *, preset: str, max_len: int) -> Path:
    """A seeded, untrained ``preset`` encoder exported with the manifest of shards of ``adata``."""
    import torch

    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard import ShardJob, load_manifest
    from scforge.models import ModelConfig, get_model
    from scforge.training.export import export_pretrained

    small = root / "cells.h5ad"
    adata[: min(512, adata.n_obs)].copy().write_h5ad(small)
    cfg = load_config(
        ShardJobConfig,
        [REPO / "configs/shard/geneformer_v2.yaml"],
        [f"tokenizer.max_length={max_len}", "shard.cells_per_shard=512"],
    )
    ShardJob([str(small)], root / "shards", cfg, progress=False).run()
    manifest = load_manifest(root / "shards")
    torch.manual_seed(0)
    mcfg = ModelConfig(
        family="transformer_encoder",
        preset=preset,
        vocab_size=int(manifest["vocab"]["size"]),
        max_len=max_len,
        dropout=0.0,
    )
    model = get_model(mcfg)
    return export_pretrained(
        root / "export", model.config, model.state_dict(), manifest=manifest, extra={"step": 0}
    )


def time_embed(export: Path, adata, *, batch_size: int) -> tuple[np.ndarray, dict]:
    import torch

    from scforge.eval.embed import embed_cells, load_cells
    from scforge.eval.tokenize import seq_len_of
    from scforge.training.export import load_pretrained, read_pretrained_info

    info = read_pretrained_info(export)
    t0 = time.perf_counter()
    cells, _ = load_cells(adata, info)
    t_tok = time.perf_counter() - t0
    model = load_pretrained(export, device="cpu")
    max_len = seq_len_of(info, model.config.max_len)
    eos = int(info["tokenizer"].get("eos_id", -1))
    embed_cells(
        model,
        cells.subset(np.arange(min(batch_size, len(cells)))),
        max_len=max_len,
        batch_size=batch_size,
        eos_id=eos,
    )  # warm-up
    t0 = time.perf_counter()
    emb = embed_cells(model, cells, max_len=max_len, batch_size=batch_size, eos_id=eos)
    t_fwd = time.perf_counter() - t0
    n = adata.n_obs
    tokens = int(sum(min(len(t), max_len) for t in cells.tokens))
    return emb, {
        "cells": n,
        "max_len": max_len,
        "batch_size": batch_size,
        "hidden_size": int(model.config.hidden_size),
        "num_layers": int(model.config.num_layers),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "torch_threads": torch.get_num_threads(),
        "tokenize_s": t_tok,
        "tokenize_cells_per_s": n / t_tok,
        "forward_s": t_fwd,
        "forward_cells_per_s": n / t_fwd,
        "forward_tokens_per_s": tokens / t_fwd,
        "embed_cells_per_s": n / (t_tok + t_fwd),
    }


def time_scib(
    adata, key: str, pre: str, *, label_key: str, batch_key: str, neighbors: str = "pynndescent"
) -> dict:
    import inspect

    from scforge.eval.tasks import scib_table

    kw = {"neighbors": neighbors} if "neighbors" in inspect.signature(scib_table).parameters else {}
    t0 = time.perf_counter()
    table = scib_table(
        adata, [key], label_key=label_key, batch_key=batch_key, pre_integrated=pre, **kw
    )
    dt = time.perf_counter() - t0
    row = table.loc[key]
    return {
        "seconds": dt,
        "cells_per_s": adata.n_obs / dt,
        "dims": int(adata.obsm[key].shape[1]),
        "scores": {k: float(v) for k, v in row.items() if np.isfinite(v)},
    }


def _merge_rounds(rounds: list[dict]) -> dict:
    best = min(rounds, key=lambda r: r["seconds"])
    return {
        **best,
        "cold_seconds": rounds[0]["seconds"],
        "rounds_s": [r["seconds"] for r in rounds],
    }


def run(args: argparse.Namespace) -> dict:
    import anndata as ad

    from scforge.eval.tasks import add_baselines

    full = ad.read_h5ad(args.h5ad)
    rng = np.random.default_rng(0)
    n = min(args.cells, full.n_obs)
    idx = np.sort(rng.choice(full.n_obs, n, replace=False))
    adata = full[idx].copy()
    del full
    label_key, batch_key = "cell_type", "batch"
    for k in (label_key, batch_key):
        adata.obs[k] = adata.obs[k].astype(str).astype("category")
    with tempfile.TemporaryDirectory() as tmp:
        export = (
            Path(args.checkpoint)
            if args.checkpoint
            else random_export(adata, Path(tmp), preset=args.preset, max_len=args.max_len)
        )
        print(f"[eval] embedding {n} cells ...", file=sys.stderr)
        emb, embed = time_embed(export, adata, batch_size=args.batch_size)
        embed["checkpoint"] = (
            str(args.checkpoint)
            if args.checkpoint
            else (f"untrained {args.preset} encoder (seed 0)")
        )
    adata.obsm["X_scforge"] = emb
    print("[eval] HVG + PCA baseline ...", file=sys.stderr)
    t0 = time.perf_counter()
    keys = add_baselines(adata, ["pca"], n_hvg=2000, n_pcs=50, batch_key=batch_key)
    t_base = time.perf_counter() - t0
    pca = keys["PCA"]
    rounds: dict[str, list[dict]] = {"model": [], "pca": []}
    for i in range(max(1, args.repeat)):
        for name, key in (("model", "X_scforge"), ("pca", pca)):
            print(f"[eval] scib-metrics on {name}, round {i + 1} ...", file=sys.stderr)
            rounds[name].append(
                time_scib(
                    adata,
                    key,
                    pca,
                    label_key=label_key,
                    batch_key=batch_key,
                    neighbors=args.neighbors,
                )
            )
    model_scib, pca_scib = _merge_rounds(rounds["model"]), _merge_rounds(rounds["pca"])
    return {
        "cells": n,
        "embed": embed,
        "baseline_pca_s": t_base,
        "scib_repeat": max(1, args.repeat),
        "scib_neighbors": args.neighbors,
        "scib": {"model": model_scib, "pca": pca_scib},
        "ratios": {
            "scib_model_over_pca": model_scib["seconds"] / pca_scib["seconds"],
            "embed_over_scib_cells_per_s": embed["embed_cells_per_s"] / model_scib["cells_per_s"],
        },
    }


def markdown(payload: dict) -> str:
    m, r = payload["machine"], payload["result"]
    e, s = r["embed"], r["scib"]
    return "\n".join(
        [
            f"# Embedding and evaluation ({m['date']})",
            "",
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GiB RAM, GPU: {m['gpu']}; "
            f"git {m['git']}; 1-min load average {payload['load_start']} at start, "
            f"{payload['load_end']} at end.",
            "",
            f"{r['cells']:,} pbmc_2batch cells (random subset, seed 0). Model: {e['checkpoint']}, "
            f"{e['num_layers']} x {e['hidden_size']}, {e['parameters'] / 1e6:.2f}M parameters, "
            f"max_len {e['max_len']}, batch {e['batch_size']}, {e['torch_threads']} torch threads.",
            "",
            "| step | seconds | cells/s | note |",
            "|---|---:|---:|---|",
            f"| tokenize (checkpoint's tokenizer) | {e['tokenize_s']:.2f} | "
            f"{e['tokenize_cells_per_s']:,.0f} | |",
            f"| forward passes | {e['forward_s']:.2f} | {e['forward_cells_per_s']:,.0f} | "
            f"{e['forward_tokens_per_s']:,.0f} tokens/s |",
            f"| HVG + PCA baseline | {r['baseline_pca_s']:.2f} | "
            f"{r['cells'] / r['baseline_pca_s']:,.0f} | 2,000 HVGs, 50 PCs |",
            f"| scib-metrics on the model embedding | {s['model']['seconds']:.1f} | "
            f"{s['model']['cells_per_s']:,.0f} | {s['model']['dims']} dims; first round "
            f"{s['model']['cold_seconds']:.1f} s |",
            f"| scib-metrics on the PCA baseline | {s['pca']['seconds']:.1f} | "
            f"{s['pca']['cells_per_s']:,.0f} | {s['pca']['dims']} dims; first round "
            f"{s['pca']['cold_seconds']:.1f} s |",
            "",
            f"scib-metrics: default metrics, kNN by {r.get('scib_neighbors', 'pynndescent')}; best of "
            f"{r['scib_repeat']} alternating round(s); the first includes JAX/Numba compilation.",
            "",
            f"- scib-metrics runtime, model / PCA: **{r['ratios']['scib_model_over_pca']:.2f}x**",
            f"- embedding is **{r['ratios']['embed_over_scib_cells_per_s']:.1f}x** faster per cell "
            "than scoring it with scib-metrics",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--h5ad", type=Path, default=PBMC)
    ap.add_argument("--cells", type=int, default=10_668)
    ap.add_argument("--checkpoint", default="", help="export directory (default: untrained)")
    ap.add_argument("--preset", default="debug", help="model preset when no checkpoint")
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=2, help="scib-metrics rounds per embedding")
    ap.add_argument(
        "--neighbors",
        default="pynndescent",
        choices=("pynndescent", "exact"),
        help="kNN for scib-metrics (pynndescent: its default)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="1,000 cells (2 scib rounds: the first compiles)"
    )
    ap.add_argument("--out", type=Path, default=None, help="results directory")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.cells = min(args.cells, 1000)
    if not args.h5ad.is_file():
        print(f"bench_eval: error: input not found: {args.h5ad}", file=sys.stderr)
        return 2
    if args.checkpoint and not (Path(args.checkpoint) / "config.json").is_file():
        print(
            f"bench_eval: error: {args.checkpoint} is not an export directory (no config.json)",
            file=sys.stderr,
        )
        return 2
    load0 = loadavg()
    result = run(args)
    payload = {
        "stage": "eval",
        "machine": machine(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_start": load0,
        "load_end": loadavg(),
        "result": result,
    }
    payload["versions"] = payload["machine"]["packages"]
    md = markdown(payload)
    print(md)
    if not args.no_write:
        js, mdp = write_results("eval", payload, md, args.out)
        print(json.dumps({"json": str(js), "markdown": str(mdp)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
