"""scGPT checkpoints: the ``scgpt`` family against scGPT's own ``TransformerModel`` (the
published 0.2.4 code, imported from its wheel), on a random model of scGPT_human's sizes."""

from __future__ import annotations

import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import torch
from _interop_util import (
    SCGPT_HUMAN_ARGS,
    rel_err,
    save_scgpt_dir,
    scgpt_model_module,
    scgpt_vocab,
)

from scforge.contracts import Batch
from scforge.interop import detect_format, import_scgpt
from scforge.training.export import load_pretrained, read_pretrained_info

TOL = 1e-5


def _reference(args, vocab, *, seed=0, mvc=True, zero=True, style="continuous", n_input_bins=None,
               cell_emb_style="cls"):
    M = scgpt_model_module()
    torch.manual_seed(seed)
    model = M.TransformerModel(
        ntoken=len(vocab), d_model=args["embsize"], nhead=args["nheads"], d_hid=args["d_hid"],
        nlayers=args["nlayers"], nlayers_cls=args["n_layers_cls"], n_cls=1, vocab=vocab,
        dropout=args["dropout"], pad_token=args["pad_token"], pad_value=args["pad_value"],
        do_mvc=mvc, do_dab=False, use_batch_labels=False, explicit_zero_prob=zero,
        use_fast_transformer=False, pre_norm=False, input_emb_style=style,
        n_input_bins=n_input_bins, cell_emb_style=cell_emb_style)
    with torch.no_grad():  # LayerNorms away from (1, 0), so a swapped or dropped one shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _batch(vocab, *, lengths, n_bins=51, seed=0, pad_value=-2.0):
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.randint(0, vocab["<pad>"], (len(lengths), width), generator=g)
    ids[:, 0] = vocab["<cls>"]
    ids = ids.masked_fill(~mask, vocab["<pad>"])
    values = torch.randint(1, n_bins, (len(lengths), width), generator=g).float()
    values[:, 0] = 0.0
    return ids, mask, values, values.masked_fill(~mask, pad_value)


@pytest.fixture(scope="module")
def human(tmp_path_factory):
    """scGPT_human's sizes (512 x 12 layers, 8 heads, d_hid 512, 60,697 tokens), random init,
    saved as scGPT publishes it (best_model.pt, args.json, vocab.json), then imported."""
    vocab = scgpt_vocab()
    ref = _reference(SCGPT_HUMAN_ARGS, vocab)
    root = tmp_path_factory.mktemp("scgpt_human")
    src = save_scgpt_dir(root / "scgpt", ref, SCGPT_HUMAN_ARGS, vocab)
    r = subprocess.run([sys.executable, "-m", "scforge.cli", "import", "scgpt", str(src),
                        "--out", str(root / "export"), "--max-length", "128"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return ref, vocab, src, root / "export"


def test_scgpt_forward_parity_published_sizes(human):
    ref, vocab, src, export = human
    assert detect_format(src) == "scgpt"
    info = read_pretrained_info(export)
    assert info["vocab"]["name"] == "scgpt" and info["tokenizer"]["strategy"] == \
        "binned_expression"
    assert info["model"]["family"] == "scgpt" and info["model"]["explicit_zero_prob"]
    model = load_pretrained(export)
    for lengths in ([40, 40, 40], [40, 26, 9]):
        ids, mask, values, ref_values = _batch(vocab, lengths=lengths, seed=len(lengths))
        with torch.no_grad():
            want = ref(ids, ref_values, ~mask, MVC=True)
            want_hidden = ref._encode(ids, ref_values, ~mask)
            got = model.predict_values(Batch(input_ids=ids, attention_mask=mask, values=values))
        assert rel_err(got["hidden"][mask], want_hidden[mask]) < TOL
        for key in ("mlm_output", "mlm_zero_probs", "mvc_output", "mvc_zero_probs"):
            assert rel_err(got[key][mask], want[key][mask]) < TOL, key
        assert rel_err(got["cell_emb"], want["cell_emb"]) < TOL  # cls
        with torch.no_grad():
            assert rel_err(model.encode(Batch(input_ids=ids, attention_mask=mask,
                                              values=values)), want["cell_emb"]) < TOL
    direct = load_pretrained(src)  # the scGPT directory itself, converted in place
    for (k, a), b in zip(model.state_dict().items(), direct.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_scgpt_avg_pool_and_flash_attn_names(human, tmp_path):
    """``avg-pool`` cell embeddings (unpadded rows: scGPT averages padded positions too), and a
    checkpoint saved with flash-attn's ``Wqkv`` names, as scGPT's published ones are."""
    ref, vocab, _, _ = human
    state = {k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v
             for k, v in ref.state_dict().items()}
    src = tmp_path / "flash"
    src.mkdir()
    torch.save(state, src / "best_model.pt")
    import json

    (src / "args.json").write_text(json.dumps({**SCGPT_HUMAN_ARGS, "cell_emb_style": "avg-pool"}))
    (src / "vocab.json").write_text(json.dumps(vocab))
    model = load_pretrained(import_scgpt(src, tmp_path / "export", max_length=64))
    assert model.config.pooling == "mean"
    ids, mask, values, ref_values = _batch(vocab, lengths=[30, 30], seed=3)
    ref.cell_emb_style = "avg-pool"
    try:
        with torch.no_grad():
            want = ref(ids, ref_values, ~mask)["cell_emb"]
    finally:
        ref.cell_emb_style = "cls"
    with torch.no_grad():
        got = model.encode(Batch(input_ids=ids, attention_mask=mask, values=values))
    assert rel_err(got, want) < TOL


def test_scgpt_category_value_style_and_masked_values(tmp_path):
    """The binned (``category``) value encoder, and values hidden by the masking collator: the
    family feeds ``mask_value`` where scGPT's data has it."""
    vocab = scgpt_vocab()
    n_bins = 51
    args = {**SCGPT_HUMAN_ARGS, "embsize": 64, "nheads": 4, "d_hid": 96, "nlayers": 2,
            "input_emb_style": "category", "pad_value": n_bins, "mask_value": n_bins + 1}
    ref = _reference(args, vocab, style="category", n_input_bins=n_bins + 2, zero=False)
    model = load_pretrained(save_scgpt_dir(tmp_path / "scgpt", ref, args, vocab))
    assert model.config.value_mode == "binned" and model.config.n_bins == n_bins + 1
    ids, mask, values, ref_values = _batch(vocab, lengths=[20, 14, 5], pad_value=n_bins)
    hidden_values = torch.zeros_like(mask)
    hidden_values[:, 3] = True
    ref_values = ref_values.masked_fill(hidden_values, n_bins + 1)
    with torch.no_grad():
        want = ref(ids, ref_values, ~mask, MVC=True)
        got = model.predict_values(Batch(input_ids=ids, attention_mask=mask,
                                         values=values.masked_fill(hidden_values, 0),
                                         value_mask=hidden_values))
    for key in ("mlm_output", "mvc_output", "cell_emb"):
        sel = mask if got[key].dim() == 2 and key != "cell_emb" else slice(None)
        assert rel_err(got[key][sel], want[key][sel]) < TOL, key


def test_scgpt_embed_real_cells(human, pbmc_path, tmp_path):
    """``scforge embed`` of the imported scGPT on real pbmc cells (scGPT's binned recipe over
    the gene symbols) equals scGPT's ``_encode(...)[:, 0]`` on the same genes and bins."""
    from scforge.eval.embed import embed
    from scforge.eval.tokenize import checkpoint_tokenizer, pad_batch, tokenize_adata

    ref, vocab, _, export = human
    a = ad.read_h5ad(pbmc_path)
    cells = a[np.arange(0, a.n_obs, 500)].copy()
    out = embed(export, cells, tmp_path / "emb.h5ad", device="cpu", progress=False)
    emb = out.obsm["X_scforge"]
    info = read_pretrained_info(export)
    tok = tokenize_adata(cells, checkpoint_tokenizer(info))
    assert all(t[0] == vocab["<cls>"] for t in tok.tokens)
    batch = pad_batch(tok.tokens, tok.values, max_len=128, pad_id=vocab["<pad>"],
                      eos_id=int(info["tokenizer"]["eos_id"]))
    ref_values = batch.values.masked_fill(~batch.attention_mask, -2.0)
    with torch.no_grad():
        want = ref._encode(batch.input_ids, ref_values, ~batch.attention_mask)[:, 0].numpy()
    assert np.abs(emb - want).max() <= TOL * np.abs(want).max()


def test_scgpt_refusals(tmp_path):
    vocab = scgpt_vocab()
    args = {**SCGPT_HUMAN_ARGS, "embsize": 32, "nheads": 4, "d_hid": 32, "nlayers": 1}
    ref = _reference(args, vocab, mvc=False, zero=False)
    src = save_scgpt_dir(tmp_path / "dsbn", ref, args, vocab)
    state = torch.load(src / "best_model.pt", weights_only=True)
    state["dsbn.bns.0.weight"] = torch.ones(32)
    torch.save(state, src / "best_model.pt")
    r = subprocess.run([sys.executable, "-m", "scforge.cli", "import", "scgpt", str(src),
                        "--out", str(tmp_path / "x")], capture_output=True, text=True,
                       timeout=600)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("scforge import: error: ") and "domain-specific" in lines[0]
    (src / "vocab.json").unlink()
    with pytest.raises(FileNotFoundError, match="vocab.json"):
        import_scgpt(src, tmp_path / "y")


def test_scgpt_model_recipe_is_what_import_writes(human):
    import yaml
    from _testpaths import REPO

    info = read_pretrained_info(human[3])["model"]
    want = yaml.safe_load((REPO / "configs" / "model" / "scgpt_human.yaml").read_text())
    skip = {"vocab_size", "max_len", "explicit_zero_prob"}  # the fixture's reference has zero heads
    diff = {k: (v, info[k]) for k, v in want.items() if k not in skip and info[k] != v}
    assert not diff, diff
