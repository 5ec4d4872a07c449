"""``scforge embed``: cell embeddings of an exported model, written to ``obsm`` of a new h5ad.

The input is an h5ad (tokenized here with the checkpoint's own vocabulary and tokenizer) or a
shard directory (whose manifest must match them). Cells are embedded in input order with a fixed
batch size, so the same cells give the same embeddings whichever way they arrive.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scforge.data.sources.h5ad import read_anndata, write_anndata
from scforge.errors import ArgumentParser, run_command
from scforge.eval.tokenize import (
    TokenizedCells,
    checkpoint_tokenizer,
    pad_batch,
    read_shard_cells,
    seq_len_of,
    tokenize_adata,
)

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``auto``/None -> cuda when available, else cpu."""
    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@torch.no_grad()
def embed_cells(model: torch.nn.Module, cells: TokenizedCells, *, max_len: int,
                batch_size: int = 64, eos_id: int = -1, progress: bool = False,
                device: str | torch.device | None = None) -> np.ndarray:
    """float32 [N, D] embeddings (``model.encode``) of tokenized cells, in their order.

    Args:
        model: a :class:`~scforge.models.SingleCellModel` (its device is used unless ``device``).
        cells: the tokenized cells.
        max_len: truncation length (see :func:`scforge.eval.tokenize.seq_len_of`).
        batch_size: cells per forward pass.
        eos_id: the tokenizer's ``<eos>`` (kept at the end of truncated cells), -1 if none.
        progress: show a tqdm bar.
        device: where to run; defaults to the model's device.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}; must be >= 1")
    dev = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    pad_id = int(getattr(model.config, "pad_token_id", 0))
    out: list[np.ndarray] = []
    try:
        for a in tqdm(range(0, len(cells), batch_size), disable=not progress, desc="embedding",
                      unit="batch", dynamic_ncols=True):
            vals = None if cells.values is None else cells.values[a:a + batch_size]
            batch = pad_batch(cells.tokens[a:a + batch_size], vals, max_len=max_len,
                              pad_id=pad_id, eos_id=eos_id).to(dev)
            out.append(model.encode(batch).float().cpu().numpy())
    finally:
        model.train(was_training)
    width = int(getattr(model.config, "hidden_size", 0))
    return np.concatenate(out) if out else np.zeros((0, width), np.float32)


def load_cells(data: str | Path | Any, info: dict[str, Any], *, layer: str = "X",
               gene_column: str = "", token_dictionary: str = "") -> tuple[TokenizedCells, Any]:
    """Tokenized cells of ``data`` (h5ad path, AnnData or shard directory) and the AnnData to
    write results into (the input's, or one built from the shards' obs)."""
    import anndata as ad

    if isinstance(data, str | Path) and Path(data).is_dir():
        cells = read_shard_cells(data, info)
        obs = cells.obs.astype(str)
        obs.index = cells.cell_ids
        return cells, ad.AnnData(obs=obs)
    adata = read_anndata(data) if isinstance(data, str | Path) else data
    tokenizer = checkpoint_tokenizer(info, token_dictionary=token_dictionary)
    return tokenize_adata(adata, tokenizer, layer=layer, gene_column=gene_column), adata


def embed(checkpoint_dir: str | Path, data: str | Path | Any, out: str | Path | None = None, *,
          key: str = "X_scforge", batch_size: int = 64, device: str | None = "auto",
          layer: str = "X", gene_column: str = "", token_dictionary: str = "",
          progress: bool = True) -> Any:
    """Embeds cells with an exported model and stores them in ``obsm[key]``.

    Args:
        checkpoint_dir: export directory (``<run>/export``).
        data: h5ad path, in-memory AnnData, or a shard directory tokenized for this checkpoint.
        out: h5ad to write (None: only return the AnnData).
        key: obsm key.
        batch_size: cells per forward pass.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1`` ...
        layer: raw-count matrix of an h5ad/AnnData (``X``, ``raw/X``, ``layers/<name>``).
        gene_column: var column with gene ids ("" = auto, as in ``scforge-shard``).
        token_dictionary: path of a custom vocabulary JSON (``vocab.kind=json`` checkpoints).
        progress: tqdm bar.

    Returns:
        The AnnData with ``obsm[key]`` (a copy of the input's when an AnnData was passed).

    Raises:
        CheckpointMismatchError: shards or vocabulary differ from the checkpoint's.
    """
    from scforge.training.export import load_pretrained, read_pretrained_info

    info = read_pretrained_info(checkpoint_dir)
    cells, adata = load_cells(data, info, layer=layer, gene_column=gene_column,
                              token_dictionary=token_dictionary)
    dev = resolve_device(device)
    model = load_pretrained(checkpoint_dir, device=dev)
    emb = embed_cells(model, cells, max_len=seq_len_of(info, model.config.max_len),
                      batch_size=batch_size, eos_id=int(info["tokenizer"].get("eos_id", -1)),
                      progress=progress)
    if not isinstance(data, str | Path):
        adata = adata.copy()
    adata.obsm[key] = emb
    adata.uns.setdefault("scforge", {})[key] = {"checkpoint": str(Path(checkpoint_dir).resolve()),
                                                 "step": int(info.get("step", -1))}
    if out is not None:
        write_anndata(adata, out)
    return adata


def embed_main(argv: list[str] | None = None) -> int:
    """``scforge embed --checkpoint DIR --data X.h5ad|SHARDS --out Y.h5ad [--key X_scforge]``."""
    ap = ArgumentParser(prog="scforge embed",
                                 description="Cell embeddings of an exported model -> obsm.")
    ap.add_argument("--checkpoint", required=True, help="export directory (<run>/export)")
    ap.add_argument("--data", required=True, help="h5ad file or shard directory")
    ap.add_argument("--out", required=True, help="h5ad to write")
    ap.add_argument("--key", default="X_scforge", help="obsm key (default: X_scforge)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda[:i]")
    ap.add_argument("--layer", default="X", help="raw-count matrix: X, raw/X, layers/<name>")
    ap.add_argument("--gene-column", default="", help="var column with gene ids (default: auto)")
    ap.add_argument("--token-dictionary", default="", help="custom vocabulary JSON, if any")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)

    def run() -> int:
        adata = embed(args.checkpoint, args.data, args.out, key=args.key,
                      batch_size=args.batch_size, device=args.device, layer=args.layer,
                      gene_column=args.gene_column, token_dictionary=args.token_dictionary,
                      progress=not args.no_progress)
        print(f"wrote {args.out}: obsm[{args.key!r}] {adata.obsm[args.key].shape}")
        return 0

    return run_command("scforge embed", run)
