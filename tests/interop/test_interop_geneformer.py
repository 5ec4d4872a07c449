"""An imported Geneformer on real cells: ``scforge embed``, Geneformer's own embedding path
through plain transformers, and fine-tuning (classification head + LoRA) through the DeepSpeed
trainer."""

from __future__ import annotations

import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch
from _interop_util import GF_V1, GF_V2_104M, random_bert

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")

from scforge.eval.tokenize import checkpoint_tokenizer, tokenize_adata  # noqa: E402
from scforge.interop import export_hf, import_hf  # noqa: E402
from scforge.training.export import load_pretrained, read_pretrained_info  # noqa: E402

MAX_LEN = 64  # tokens per cell of the recorded tokenizer (Geneformer's own: 4,096 / 2,048)


@pytest.fixture(scope="module")
def cells(pbmc_path):
    a = ad.read_h5ad(pbmc_path)
    return a[np.arange(0, a.n_obs, 211)].copy()  # 51 cells across both batches


def _geneformer_cell_embeddings(hf, tokens, *, pad_id: int, batch: int = 16) -> np.ndarray:
    """Geneformer's ``EmbExtractor`` (``emb_mode='cell'``, ``emb_layer=0``): the last layer of a
    ``BertForMaskedLM`` run with ``output_hidden_states``, mean-pooled over each cell's real
    tokens (``mean_nonpadding_embs``), written here with plain transformers and torch."""
    out = []
    for a in range(0, len(tokens), batch):
        part = tokens[a:a + batch]
        lens = torch.tensor([len(t) for t in part])
        ids = torch.full((len(part), int(lens.max())), pad_id, dtype=torch.long)
        for r, t in enumerate(part):
            ids[r, :len(t)] = torch.as_tensor(t.astype(np.int64))
        mask = torch.arange(ids.shape[1])[None, :] < lens[:, None]
        with torch.no_grad():
            h = hf(input_ids=ids, attention_mask=mask.long(),
                   output_hidden_states=True).hidden_states[-1]
        out.append(((h * mask.unsqueeze(-1)).sum(1) / lens[:, None]).numpy())
    return np.concatenate(out)


def test_embed_matches_geneformer_embedding_path(cells, tmp_path):
    """V2-104M widths (2 of its 12 layers): ``scforge embed`` of the import writes
    obsm['X_scforge'] equal to Geneformer's pooling of the original model and of the model
    exported back to Hugging Face, on the same tokens."""
    from transformers import BertForMaskedLM

    hf = random_bert(GF_V2_104M, num_hidden_layers=2, seed=11)
    hf.save_pretrained(tmp_path / "hf")
    export = import_hf(tmp_path / "hf", tmp_path / "export", max_length=MAX_LEN)
    cells.write_h5ad(tmp_path / "cells.h5ad")
    r = subprocess.run([sys.executable, "-m", "scforge.cli", "embed", "--checkpoint",
                        str(export), "--data", str(tmp_path / "cells.h5ad"), "--out",
                        str(tmp_path / "emb.h5ad"), "--device", "cpu", "--no-progress"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    emb = ad.read_h5ad(tmp_path / "emb.h5ad").obsm["X_scforge"]
    assert emb.shape == (cells.n_obs, 768)

    info = read_pretrained_info(export)
    tok = tokenize_adata(cells, checkpoint_tokenizer(info))
    assert max(len(t) for t in tok.tokens) == MAX_LEN and all(t[0] == 2 for t in tok.tokens)
    ref = _geneformer_cell_embeddings(hf, tok.tokens, pad_id=0)
    assert np.abs(emb - ref).max() <= 1e-5 * np.abs(ref).max()

    export_hf(export, tmp_path / "hf_back")
    back = BertForMaskedLM.from_pretrained(str(tmp_path / "hf_back")).eval()
    again = _geneformer_cell_embeddings(back, tok.tokens, pad_id=0)
    assert np.abs(again - emb).max() <= 1e-5 * np.abs(emb).max()
    # the HF directory itself is a checkpoint too: embed reads it converted in place
    from scforge.eval.embed import embed

    direct = embed(tmp_path / "hf_back", cells, None, device="cpu", progress=False)
    assert direct.obsm["X_scforge"].shape == emb.shape  # default length there: 4,096 tokens
    np.testing.assert_allclose(
        direct.obsm["X_scforge"][[len(t) < MAX_LEN for t in tok.tokens]],
        emb[[len(t) < MAX_LEN for t in tok.tokens]], rtol=0, atol=1e-5 * np.abs(emb).max())


def test_finetune_imported_geneformer_v1_lora(cells, tmp_path):
    """Geneformer V1's published size (6 x 256, 25,426 tokens), imported, fine-tunes through the
    DeepSpeed trainer with a classification head and LoRA adapters; predict applies it."""
    from scforge.finetune import FinetuneConfig, finetune, load_finetuned, predict

    random_bert(GF_V1, seed=12).save_pretrained(tmp_path / "hf")
    export = import_hf(tmp_path / "hf", tmp_path / "export", max_length=MAX_LEN)
    assert read_pretrained_info(export)["vocab"]["name"] == "geneformer_v1"
    cfg = FinetuneConfig(checkpoint=str(export), out_dir=str(tmp_path / "ft"), epochs=1,
                         batch_size=16, val_fraction=0.0, progress=False, device="cpu",
                         pooling="mean")
    cfg.lora.enabled = True
    before = {k: v.clone() for k, v in load_pretrained(export).state_dict().items()}
    res = finetune(cfg, cells)
    assert len(res["lora"]) == 2 * 6  # qkv and out of each of the 6 blocks
    assert res["history"] and np.isfinite(res["history"][-1]["loss"])
    model, meta = load_finetuned(tmp_path / "ft")
    merged = model.encoder.state_dict()
    changed = [k for k in before if not torch.equal(before[k], merged[k])]
    assert changed and all(k.endswith(("attn.qkv.weight", "attn.out.weight")) for k in changed)
    pred = predict(tmp_path / "ft", cells[:10].copy(), None, device="cpu")
    assert set(pred.obs["scforge_pred"]) <= set(meta["classes"])
    # the fine-tuned encoder goes back to Geneformer's format
    from transformers import BertForMaskedLM

    export_hf(tmp_path / "ft" / "export", tmp_path / "ft_hf")
    back, loading = BertForMaskedLM.from_pretrained(str(tmp_path / "ft_hf"),
                                                    output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    torch.testing.assert_close(back.bert.encoder.layer[0].attention.self.query.weight,
                               merged["encoder.blocks.0.attn.qkv.weight"][:256])
