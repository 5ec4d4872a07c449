"""``scforge import hf|scgpt DIR --out EXPORT`` and ``scforge export hf EXPORT --out DIR``.

Bad input ends in one line on stderr (``scforge import: error: ...``) and exit status 2.
"""

from __future__ import annotations

import argparse
import sys


def _fail(prog: str, exc: BaseException) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return 2


def import_main(argv: list[str] | None = None) -> int:
    """``scforge import hf DIR --out EXPORT [...]`` / ``scforge import scgpt DIR --out EXPORT``."""
    ap = argparse.ArgumentParser(
        prog="scforge import",
        description="Convert a published checkpoint into an scforge export (model.safetensors + "
        "config.json with the tokenizer recorded), usable by embed/evaluate/finetune/predict.")
    sub = ap.add_subparsers(dest="kind", required=True)
    hf = sub.add_parser("hf", help="Hugging Face BertForMaskedLM / BertModel dir (Geneformer)")
    hf.add_argument("dir", help="directory with config.json + model.safetensors or "
                    "pytorch_model.bin")
    hf.add_argument("--out", required=True, help="export directory to write")
    hf.add_argument("--vocab", default="auto", help="auto (by vocabulary size: 20,275 -> "
                    "geneformer_v2, 25,426 -> geneformer_v1) | geneformer_v1 | geneformer_v2")
    hf.add_argument("--token-dictionary", default="", help="the model's token dictionary "
                    "(JSON; pickles are refused)")
    hf.add_argument("--gene-medians", default="", help="gene medians JSON (custom dictionary)")
    hf.add_argument("--max-length", type=int, default=0, help="tokens per cell (default: the "
                    "recipe's, 4096 for V2 and 2048 for V1)")
    hf.add_argument("--pooling", default="", choices=["", "mean", "cls"],
                    help="cell embedding: mean over real tokens (Geneformer's; default) or cls")
    sc = sub.add_parser("scgpt", help="scGPT dir: args.json, vocab.json, best_model.pt")
    sc.add_argument("dir")
    sc.add_argument("--out", required=True, help="export directory to write")
    sc.add_argument("--max-length", type=int, default=0, help="tokens per cell (default: "
                    "max_seq_len of args.json)")
    sc.add_argument("--pooling", default="", choices=["", "cls", "mean"],
                    help="cell embedding (default: cell_emb_style of args.json)")
    args = ap.parse_args(argv)
    try:
        if args.kind == "hf":
            from scforge.interop.hf import import_hf

            out = import_hf(args.dir, args.out, vocab=args.vocab,
                            token_dictionary=args.token_dictionary,
                            gene_medians=args.gene_medians, max_length=args.max_length,
                            pooling=args.pooling)
        else:
            from scforge.interop.scgpt import import_scgpt

            out = import_scgpt(args.dir, args.out, max_length=args.max_length,
                               pooling=args.pooling)
    except (ValueError, FileNotFoundError, OSError) as e:
        return _fail("scforge import", e)
    from scforge.training.export import read_pretrained_info

    info = read_pretrained_info(out)
    print(f"wrote {out}: {info['model']['family']} {info['parameters']:,} parameters, "
          f"vocabulary {info['vocab']['name']}, {info['tokenizer']['strategy']} "
          f"{info['tokenizer']['max_length']} tokens")
    return 0


def export_main(argv: list[str] | None = None) -> int:
    """``scforge export hf EXPORT --out DIR [--token-dictionary F]``."""
    ap = argparse.ArgumentParser(
        prog="scforge export",
        description="Write a Hugging Face BertForMaskedLM directory (config.json, "
        "model.safetensors, token_dictionary.json) from a post-LN scforge export.")
    sub = ap.add_subparsers(dest="kind", required=True)
    hf = sub.add_parser("hf", help="BertForMaskedLM directory (Geneformer's format)")
    hf.add_argument("export", help="scforge export directory (<run>/export)")
    hf.add_argument("--out", required=True, help="directory to write")
    hf.add_argument("--token-dictionary", default="", help="vocabulary JSON of a vocab.kind=json "
                    "export")
    args = ap.parse_args(argv)
    try:
        from scforge.interop.hf import export_hf

        out = export_hf(args.export, args.out, token_dictionary=args.token_dictionary)
    except (ValueError, FileNotFoundError, OSError) as e:
        return _fail("scforge export", e)
    print(f"wrote {out}: BertForMaskedLM (config.json, model.safetensors, token_dictionary.json)")
    return 0
