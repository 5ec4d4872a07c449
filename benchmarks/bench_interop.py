"""Embedding a published model: ``scforge embed`` of an imported Geneformer vs plain transformers.

One run, CPU, the same cells and tokens for every method:

- model: a seeded random ``BertForMaskedLM`` of Geneformer V2-104M's sizes (12 x 768, 12 heads,
  ffn 3,072, relu, eps 1e-12, 20,275 tokens, 4,096 positions), saved with ``save_pretrained``
  and imported with ``scforge import hf`` (its time is reported; weights are random, so only
  speed and equality mean something);
- cells: real pbmc cells (``pbmc_2batch.h5ad``), tokenized once with the recorded Geneformer V2
  recipe cut to ``--max-length`` tokens (Geneformer's own 4,096 makes a 2-core run take hours);
- ``scforge_embed``: :func:`scforge.eval.embed.embed_cells` on the imported model (what
  ``scforge embed`` runs after tokenizing), mean pooling;
- ``hf_emb_extractor``: Geneformer's ``EmbExtractor`` path with plain transformers:
  ``BertForMaskedLM(..., output_hidden_states=True)`` (which also computes the MLM logits over
  the whole vocabulary), last layer mean-pooled over real tokens;
- ``hf_encoder``: the fairer peer, ``model.bert`` only (no MLM head), same pooling;
- ``scforge_embed_e2e``: the ``embed()`` API including tokenization of the AnnData.

Methods run interleaved for ``--rounds`` rounds after a warm-up batch; cells/s is the best
round; ratios are against ``hf_emb_extractor`` in the same run. Every method's embeddings are
checked against ``hf_encoder`` (max relative difference).

Usage: ``python -m benchmarks.bench_interop [--quick] [--cells 48] [--max-length 256] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import loadavg, machine, write_results

os.environ.setdefault("DS_ACCELERATOR", "cpu")

REPO = Path(__file__).resolve().parents[1]
PBMC = REPO / ".." / "shared" / "data" / "pbmc_2batch.h5ad"
V2_104M = dict(vocab_size=20_275, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
               intermediate_size=3072, hidden_act="relu", layer_norm_eps=1e-12,
               hidden_dropout_prob=0.02, attention_probs_dropout_prob=0.02,
               max_position_embeddings=4096, type_vocab_size=2, pad_token_id=0)


def _hf_embed(module, tokens, *, batch: int, hidden_states: bool) -> np.ndarray:
    import torch

    out = []
    for a in range(0, len(tokens), batch):
        part = tokens[a:a + batch]
        lens = torch.tensor([len(t) for t in part])
        ids = torch.zeros((len(part), int(lens.max())), dtype=torch.long)
        for r, t in enumerate(part):
            ids[r, :len(t)] = torch.as_tensor(t.astype(np.int64))
        mask = torch.arange(ids.shape[1])[None, :] < lens[:, None]
        with torch.no_grad():
            o = module(input_ids=ids, attention_mask=mask.long(),
                       output_hidden_states=hidden_states)
        h = o.hidden_states[-1] if hidden_states else o.last_hidden_state
        out.append(((h * mask.unsqueeze(-1)).sum(1) / lens[:, None]).numpy())
    return np.concatenate(out)


def run(n_cells: int, max_length: int, batch: int, rounds: int) -> dict:
    import anndata as ad
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from scforge.eval.embed import embed, embed_cells
    from scforge.eval.tokenize import checkpoint_tokenizer, tokenize_adata
    from scforge.interop import import_hf
    from scforge.training.export import load_pretrained, read_pretrained_info

    load_start = loadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_interop_"))
    torch.manual_seed(0)
    hf = BertForMaskedLM(BertConfig(**V2_104M)).eval()
    hf.save_pretrained(tmp / "hf")
    t0 = time.perf_counter()
    export = import_hf(tmp / "hf", tmp / "export", max_length=max_length)
    import_s = time.perf_counter() - t0
    info = read_pretrained_info(export)
    model = load_pretrained(export)
    hf = BertForMaskedLM.from_pretrained(str(tmp / "hf")).eval()
    a = ad.read_h5ad(PBMC)
    cells = a[np.linspace(0, a.n_obs - 1, n_cells).astype(int)].copy()
    tok = tokenize_adata(cells, checkpoint_tokenizer(info))
    lengths = [len(t) for t in tok.tokens]

    methods = {
        "scforge_embed": lambda: embed_cells(model, tok, max_len=max_length, batch_size=batch),
        "hf_emb_extractor": lambda: _hf_embed(hf, tok.tokens, batch=batch, hidden_states=True),
        "hf_encoder": lambda: _hf_embed(hf.bert, tok.tokens, batch=batch, hidden_states=False),
        "scforge_embed_e2e": lambda: embed(export, cells, None, batch_size=batch, device="cpu",
                                           progress=False).obsm["X_scforge"],
    }
    warm = tok.subset(np.arange(min(batch, n_cells)))
    embed_cells(model, warm, max_len=max_length, batch_size=batch)
    _hf_embed(hf, warm.tokens, batch=batch, hidden_states=True)
    times: dict[str, list[float]] = {k: [] for k in methods}
    embs: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for name, fn in methods.items():
            t = time.perf_counter()
            embs[name] = np.asarray(fn())
            times[name].append(time.perf_counter() - t)
    ref = embs["hf_encoder"]
    scale = float(np.abs(ref).max())
    rows = {}
    for name in methods:
        best = min(times[name])
        rows[name] = {"seconds": best, "seconds_all": times[name], "cells_per_s": n_cells / best,
                      "tokens_per_s": sum(lengths) / best,
                      "max_rel_diff_vs_hf_encoder": float(np.abs(embs[name] - ref).max() / scale)}
    base = rows["hf_emb_extractor"]["seconds"]
    for r in rows.values():
        r["vs_hf_emb_extractor"] = base / r["seconds"]
    return {
        "model": {k: info["model"][k] for k in ("hidden_size", "num_layers", "num_heads",
                                                "intermediate_size", "vocab_size", "max_len")},
        "parameters": info["parameters"], "import_seconds": import_s, "cells": n_cells,
        "max_length": max_length, "batch_size": batch, "rounds": rounds,
        "tokens_mean": float(np.mean(lengths)), "tokens_max": int(max(lengths)),
        "threads": torch.get_num_threads(), "methods": rows,
        "load_avg_start": load_start, "load_avg_end": loadavg(),
    }


def markdown(res: dict, mach: dict) -> str:
    m = res["model"]
    lines = [
        f"# Embedding an imported Geneformer V2-104M-size model (CPU) — {mach['date']}", "",
        f"Machine: {mach['cpu']}, {mach['cores']} cores; torch {mach['packages'].get('torch')}, "
        f"transformers {mach['packages'].get('transformers')}; git {mach['git']}.", "",
        f"Model: random BertForMaskedLM {m['num_layers']} x {m['hidden_size']} ({m['num_heads']} "
        f"heads, ffn {m['intermediate_size']}), {m['vocab_size']:,} tokens, "
        f"{res['parameters'] / 1e6:.1f}M parameters after import; `scforge import hf` took "
        f"{res['import_seconds']:.1f} s.", "",
        f"Cells: {res['cells']} pbmc cells, Geneformer V2 recipe cut to {res['max_length']} tokens "
        f"(mean {res['tokens_mean']:.0f}, max {res['tokens_max']}), batches of "
        f"{res['batch_size']}, fp32, {res['threads']} threads; best of {res['rounds']} interleaved "
        "rounds after a warm-up batch.", "",
        f"Load average (1 min): {res['load_avg_start']} at start, {res['load_avg_end']} at end "
        "(the machine is shared).", "",
        "| method | s | cells/s | tokens/s | vs HF EmbExtractor path | max rel. diff vs HF encoder |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in res["methods"].items():
        lines.append(f"| {name} | {r['seconds']:.2f} | {r['cells_per_s']:.2f} | "
                     f"{r['tokens_per_s']:.0f} | {r['vs_hf_emb_extractor']:.2f}x | "
                     f"{r['max_rel_diff_vs_hf_encoder']:.1e} |")
    lines += ["", "Seconds per round (in run order; the spread is the shared machine's load): "
              + "; ".join(f"{n} " + ", ".join(f"{t:.1f}" for t in r["seconds_all"])
                          for n, r in res["methods"].items()) + "."]
    lines += ["", "`hf_emb_extractor`: BertForMaskedLM with output_hidden_states (Geneformer's "
              "EmbExtractor computes the vocabulary logits it then ignores); `hf_encoder`: "
              "model.bert only; `scforge_embed_e2e` includes tokenizing the AnnData.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 cells, 128 tokens, 1 round")
    ap.add_argument("--cells", type=int, default=48)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    args = ap.parse_args(argv)
    if args.quick:
        args.cells, args.max_length, args.rounds = 16, 128, 1
    res = run(args.cells, args.max_length, args.batch_size, args.rounds)
    mach = machine()
    md = markdown(res, mach)
    js, mdp = write_results("interop_embed", {"machine": mach, "results": res}, md, args.out)
    print(md)
    print(f"wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
