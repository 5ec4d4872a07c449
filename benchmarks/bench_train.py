"""Training throughput on CPU: scforge's encoder vs Hugging Face ``BertForMaskedLM``.

    python -m benchmarks.bench_train                      # debug + small, ~10 min on 2 cores
    python -m benchmarks.bench_train --quick --out DIR    # debug, 1,024 tokens, <= ~2 min
    python -m benchmarks.bench_train --sizes debug --steps 3 --no-bf16
    python -m benchmarks.bench_train --sizes debug,small,base --hf-compile

What is compared, in one process on identical batches:

1. **Model step** (forward, backward, grad clip, AdamW) of ``transformer_encoder`` and of HF
   ``BertForMaskedLM`` (Geneformer's model class) with the same configuration: layers, width,
   heads, FFN, vocabulary (Geneformer V2, 20,275), dropout 0.02 (Geneformer's), tied MLM head,
   fp32, SDPA attention for both. Batches are real cellbench cells tokenized to 2,048 rank-value
   tokens (every cell has more genes than that, so rows are full and shapes fixed), masked 15%
   by the streaming loader. Eager and ``torch.compile`` (scforge: per block, as the trainer's
   ``train.compile``; HF: per ``BertLayer`` with ``--hf-compile``).
2. **Padding** of real pbmc cells (median ~1,200 genes) padded to at most 2,048 tokens, one
   epoch of the loader with and without length bucketing.
3. **Trainer end to end** (``--trainer``, default on for ``debug``): ``Trainer.fit`` through
   DeepSpeed with the loader on pbmc shards, bucketing on; start-up time and the JSONL metrics.

Throughputs are per 2-core machine and noisy (the machine is shared): compare the ratios, which
are taken in the same run, and the 1-minute load average at start and end is recorded. Results
go to ``<--out, default benchmarks/results>/train_<date>_<cores>core.{json,md}``; the JSON has
``machine``, ``versions`` and ``rows`` (one per size x variant with tokens/s and the ratio to HF
eager at that size).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from benchmarks.common import machine, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "data" / "train"
SHARED = REPO.parent / "shared" / "data"
VOCAB = 20_275
DROPOUT = 0.02


def make_shards(h5ad: Path, out: Path, max_length: int) -> Path:
    """Geneformer V2 rank-value shards (reused when already there)."""
    from scforge.config import ShardJobConfig, load_config
    from scforge.data.shard import ShardJob

    if (out / "manifest.json").is_file():
        return out
    cfg = load_config(ShardJobConfig, [REPO / "configs" / "shard" / "geneformer_v2.yaml"],
                      [f"tokenizer.max_length={max_length}", "shard.cells_per_shard=2000"])
    ShardJob([str(h5ad)], out, cfg, progress=False).run()
    return out


def fixed_batches(shards: Path, batch: int, length: int, n: int) -> list:
    """``n`` masked batches of ``batch`` full rows of ``length`` tokens."""
    from scforge.data.stream import ShardStream, StreamConfig

    cfg = StreamConfig(batch_size=batch, max_len=length, shuffle=False, seed=0)
    cfg.masking.name = "bert"
    cfg.bucketing.enabled = False
    it = ShardStream(shards, cfg, rank=0, world_size=1).iter_workers(1)
    out = [b for b in (next(it) for _ in range(4 * n)) if b.input_ids.shape == (batch, length)]
    if len(out) < n:
        raise RuntimeError(f"only {len(out)} full {batch}x{length} batches; use shorter rows")
    return out[:n]


def models(preset: str, length: int, seed: int = 0):
    """scforge encoder and HF BertForMaskedLM with the same sizes (fresh random init)."""
    from transformers import BertConfig, BertForMaskedLM

    from scforge.models import ModelConfig, count_parameters, get_model
    from scforge.models.config import resolve_preset

    mc = resolve_preset(ModelConfig(preset=preset, vocab_size=VOCAB, max_len=length,
                                    dropout=DROPOUT))
    torch.manual_seed(seed)
    ours = get_model(mc)
    hc = BertConfig(vocab_size=VOCAB, hidden_size=mc.hidden_size,
                    num_hidden_layers=mc.num_layers, num_attention_heads=mc.num_heads,
                    intermediate_size=mc.intermediate_size, max_position_embeddings=length,
                    hidden_dropout_prob=DROPOUT, attention_probs_dropout_prob=DROPOUT,
                    layer_norm_eps=mc.layer_norm_eps, pad_token_id=0, type_vocab_size=1,
                    tie_word_embeddings=True)
    torch.manual_seed(seed)
    hf = BertForMaskedLM._from_config(hc, attn_implementation="sdpa")
    sizes = {"layers": mc.num_layers, "hidden": mc.hidden_size, "heads": mc.num_heads,
             "ffn": mc.intermediate_size, "params_scforge": count_parameters(ours),
             "params_hf": count_parameters(hf)}
    return ours, hf, sizes


def make_step(model, *, hf: bool, bf16: bool = False):
    """A closure running one training step (fwd + bwd + clip + AdamW) on a batch."""
    import contextlib

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(b) -> None:
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if bf16
               else contextlib.nullcontext())
        with ctx:
            if hf:
                out = model(input_ids=b.input_ids, attention_mask=b.attention_mask.long(),
                            labels=b.labels)
            else:
                out = model(b)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_size(size: str, batches: list, *, rounds: int, hf_compile: bool, compile_: bool,
               bf16: bool) -> dict:
    """Interleaved timing of every variant of one size.

    The machine is shared, so load changes during a run. Each round runs one step of every
    variant on the same batch (in a rotating order) and ratios are taken per round, so a burst
    of outside load hits the variants being compared alike.
    """
    from scforge.training.compile import compile_blocks

    length = batches[0].input_ids.shape[1]
    ours, hf, sizes = models(size, length)
    variants = {"hf_eager": (make_step(hf, hf=True), 1),
                "scforge_eager": (make_step(ours, hf=False), 1)}
    if compile_ or hf_compile:
        ours_c, hf_c, _ = models(size, length)
        if compile_:
            compile_blocks(ours_c)
            variants["scforge_compile"] = (make_step(ours_c, hf=False), 2)
        if hf_compile:
            for layer in hf_c.bert.encoder.layer:
                layer.compile()
            variants["hf_compile"] = (make_step(hf_c, hf=True), 2)
    if bf16:  # own copies: AdamW state must not be shared with the fp32 variants
        ours_b, hf_b, _ = models(size, length)
        variants["hf_bf16"] = (make_step(hf_b, hf=True, bf16=True), 1)
        variants["scforge_bf16"] = (make_step(ours_b, hf=False, bf16=True), 1)
    warm = max(w for _, w in variants.values())
    out: dict = {"config": sizes}
    for name, (step, w) in variants.items():
        t0 = time.perf_counter()
        for b in batches[:w]:
            step(b)
        out[name] = {"warmup_s": time.perf_counter() - t0, "times": []}
    names = list(variants)
    for r in range(rounds):
        b = batches[warm + r % (len(batches) - warm)]
        for name in names[r % len(names):] + names[: r % len(names)]:
            t = time.perf_counter()
            variants[name][0](b)
            out[name]["times"].append(time.perf_counter() - t)
    tokens, cells = batches[0].input_ids.numel(), batches[0].input_ids.shape[0]
    base = out["hf_eager"]["times"]
    for name in names:
        times = out[name]["times"]
        sec = statistics.median(times)
        ratio = statistics.median(h / t for h, t in zip(base, times, strict=True))
        out[name].update(s_per_step=sec, tokens_per_s=tokens / sec, cells_per_s=cells / sec,
                         vs_hf_eager=ratio, steps=len(times))
    if "hf_bf16" in out:  # the bf16 pair against each other as well
        out["scforge_bf16"]["vs_hf_bf16"] = statistics.median(
            h / t for h, t in zip(out["hf_bf16"]["times"], out["scforge_bf16"]["times"],
                                  strict=True))
    return out


VARIANTS = ("hf_eager", "hf_compile", "hf_bf16", "scforge_eager", "scforge_compile",
            "scforge_bf16")


def result_rows(res: dict) -> list[dict]:
    """One flat row per size x variant (what a suite runner reads)."""
    rows = []
    for size, r in res["sizes"].items():
        for name in VARIANTS:
            if name in r:
                x = r[name]
                rows.append({"size": size, "variant": name, "tokens_per_s": x["tokens_per_s"],
                             "cells_per_s": x["cells_per_s"], "s_per_step": x["s_per_step"],
                             "vs_hf_eager": x["vs_hf_eager"],
                             **({"vs_hf_bf16": x["vs_hf_bf16"]} if "vs_hf_bf16" in x else {}),
                             "params": r["config"]["params_scforge" if name.startswith("scforge")
                                                   else "params_hf"]})
    return rows


def padding(shards: Path, batch: int, length: int) -> dict:
    """Pad fraction of one loader epoch with and without length bucketing."""
    from scforge.data.stream import ShardStream, StreamConfig

    out = {}
    for bucketing in (False, True):
        cfg = StreamConfig(batch_size=batch, max_len=length, seed=0)
        cfg.bucketing.enabled = bucketing
        stream = ShardStream(shards, cfg, rank=0, world_size=1)
        for _ in stream.iter_workers(1):
            pass
        out["bucketing" if bucketing else "no_bucketing"] = stream.metrics["pad_fraction"]
    return out


def trainer_run(shards: Path, preset: str, steps: int, batch: int, length: int) -> dict:
    """End-to-end ``Trainer`` (DeepSpeed ZeRO-0, fp32, loader in-process, bucketing on)."""
    from scforge.training import load_train_config
    from scforge.training.trainer import Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_train_config([REPO / "configs" / "train" / "debug.yaml"], [
            f"data.train={shards}", "data.val_fraction=0", "train.val_every=0",
            f"train.out_dir={tmp}/run", f"train.max_steps={steps}", "train.log_every=1",
            f"train.micro_batch_size={batch}", f"data.stream.max_len={length}",
            f"model.max_len={length}", f"model.preset={preset}", f"model.dropout={DROPOUT}",
            "train.progress=false", "train.export=false", "train.ckpt_every=0"])
        t0 = time.perf_counter()
        trainer = Trainer(cfg)
        startup = time.perf_counter() - t0
        trainer.fit()
        recs = [json.loads(x) for x in (Path(tmp) / "run" / "metrics.jsonl").read_text().split("\n")
                if x]
    recs = [r for r in recs if r["kind"] == "train"][1:]  # drop the first (warm-up) step
    keys = ("tokens_per_s", "padded_tokens_per_s", "cells_per_s", "pad_fraction")
    return {"startup_s": startup, "steps": len(recs),
            **{k: statistics.median(r[k] for r in recs) for k in keys}}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Training throughput (CPU) — {m['date']}", "",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB; torch "
             f"{m['versions'].get('torch')}, transformers {res.get('transformers')}; "
             f"git {m['git']}.", "",
             f"Batches: {res['batch']} x {res['length']} rank-value tokens (cellbench, rows full), "
             f"15% masked, fp32, dropout {DROPOUT}; {res['steps']} interleaved rounds after "
             "warm-up (each round: one step of every variant on the same batch); s/step is the "
             "median, ratio = median over rounds of HF-eager time / variant time. bf16 rows: "
             "CPU autocast around the forward of both models (fp32 weights); the ratio in "
             "brackets is against HF bf16.", "",
             f"Load average (1 min): {res['load_avg_start']:.2f} at start, "
             f"{res['load_avg_end']:.2f} at end (the machine is shared).", "",
             "| size | layers x d (heads, ffn) | params (ours / HF) | model | s/step | tokens/s "
             "| cells/s | vs HF eager |", "|---|---|---|---|---|---|---|---|"]
    for size, r in res["sizes"].items():
        s = r["config"]
        for name in VARIANTS:
            if name not in r:
                continue
            x = r[name]
            vs_bf16 = f" ({x['vs_hf_bf16']:.2f}x)" if "vs_hf_bf16" in x else ""
            lines.append(f"| {size} | {s['layers']} x {s['hidden']} ({s['heads']}, {s['ffn']}) | "
                         f"{s['params_scforge'] / 1e6:.2f}M / {s['params_hf'] / 1e6:.2f}M | {name} "
                         f"| {x['s_per_step']:.3f} | {x['tokens_per_s']:,.0f} | "
                         f"{x['cells_per_s']:.2f} | {x['vs_hf_eager']:.2f}x{vs_bf16} |")
    p = res["padding"]
    lines += ["", f"Padding of real pbmc cells (batch {res['pad_batch']}, max {res['length']} "
              f"tokens, one epoch): {p['no_bucketing']:.1%} without bucketing, "
              f"{p['bucketing']:.1%} with bucketing."]
    if res.get("trainer"):
        lines += ["", "| Trainer end to end (pbmc, bucketing) | startup s | non-pad tokens/s | "
                  "padded tokens/s | cells/s | pad fraction |", "|---|---|---|---|---|---|"]
        for size, t in res["trainer"].items():
            lines.append(f"| {size} | {t['startup_s']:.1f} | {t['tokens_per_s']:,.0f} | "
                         f"{t['padded_tokens_per_s']:,.0f} | {t['cells_per_s']:.1f} | "
                         f"{t['pad_fraction']:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="debug,small", help="presets, comma-separated")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=3, help="timed rounds (steps per model)")
    ap.add_argument("--hf-compile", action="store_true", help="also time HF with compile")
    ap.add_argument("--no-compile", action="store_true", help="skip scforge torch.compile")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast pair")
    ap.add_argument("--trainer", default="debug", help="presets to run end to end ('' = none)")
    ap.add_argument("--trainer-steps", type=int, default=8)
    ap.add_argument("--quick", action="store_true",
                    help="<= ~2 min: debug only, 1,024 tokens, 2 rounds, no compile/bf16, "
                         "4 trainer steps")
    ap.add_argument("--out", default=None, help="results directory (default benchmarks/results)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.length, args.steps = "debug", 1024, 2
        args.no_compile, args.no_bf16, args.hf_compile = True, True, False
        args.trainer_steps = 4
    import transformers

    load_start = os.getloadavg()[0]

    torch.manual_seed(0)
    cb = make_shards(SHARED / "cellbench_5batch.h5ad", DATA / f"cb_{args.length}", args.length)
    pbmc = make_shards(SHARED / "pbmc_2batch.h5ad", DATA / f"pbmc_{args.length}", args.length)
    batches = fixed_batches(cb, args.batch, args.length, 2 + min(args.steps, 4))
    mach = machine()
    res: dict = {"machine": mach, "versions": {**mach.get("versions", {}),
                                              "transformers": transformers.__version__},
                 "transformers": transformers.__version__, "quick": args.quick,
                 "load_avg_start": load_start,
                 "batch": args.batch, "length": args.length, "steps": args.steps,
                 "threads": torch.get_num_threads(), "sizes": {}, "pad_batch": 8}
    for size in [s for s in args.sizes.split(",") if s]:
        r = bench_size(size, batches, rounds=args.steps, hf_compile=args.hf_compile,
                       compile_=not args.no_compile, bf16=not args.no_bf16)
        res["sizes"][size] = r
        print(json.dumps({size: r}, default=float), flush=True)
    res["padding"] = padding(pbmc, res["pad_batch"], args.length)
    res["trainer"] = {s: trainer_run(pbmc, s, args.trainer_steps, res["pad_batch"], args.length)
                      for s in args.trainer.split(",") if s}
    res["rows"] = result_rows(res)
    res["load_avg_end"] = os.getloadavg()[0]
    md = markdown(res)
    print(md)
    if not args.no_write:
        js, mdp = write_results("train", res, md, args.out)
        print(f"wrote {js} and {mdp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
