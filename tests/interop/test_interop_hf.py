"""Hugging Face BERT (Geneformer) -> scforge -> Hugging Face: the same function all the way.

A randomly initialised ``transformers.BertForMaskedLM`` of Geneformer's published sizes is
saved with ``save_pretrained``, imported, and compared on the same token batches (fp32, padded
and unpadded): MLM logits at masked positions and last hidden states within 1e-5 relative, the
``<cls>`` and mean-pooled embeddings too; then exported back and loaded by
``BertForMaskedLM.from_pretrained`` with no missing or unexpected keys, equal again.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from _interop_util import GF_V1, GF_V2_104M, random_bert, rel_err, token_batch
from _testpaths import REPO

from scforge.contracts import IGNORE_INDEX, Batch
from scforge.interop import detect_format, export_hf, import_hf
from scforge.models.layers import pool
from scforge.training.export import load_pretrained, read_pretrained_info

TOL = 1e-5
SIZES = {
    "v1": (GF_V1, {}),
    # V2-104M widths, heads, ffn, vocabulary, 4,096 positions, relu, eps: 2 of its 12 layers.
    "v2_104m_2layers": (GF_V2_104M, {"num_hidden_layers": 2}),
}


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "scforge.cli", *args], capture_output=True,
                          text=True, timeout=600)


def _hf_outputs(hf, ids, mask):
    with torch.no_grad():
        out = hf(input_ids=ids, attention_mask=mask.long(), output_hidden_states=True)
    return out.logits, out.hidden_states[-1]


def _masked(ids, mask, *, special: bool, seed: int = 1):
    """15% of the real, non-special positions replaced by <mask> (id 1); labels there."""
    g = torch.Generator().manual_seed(seed)
    pick = mask & (torch.rand(ids.shape, generator=g) < 0.15)
    if special:
        pick[:, 0] = False
        pick &= ids != 3
    labels = torch.where(pick, ids, torch.full_like(ids, IGNORE_INDEX))
    return ids.masked_fill(pick, 1), labels, pick


def _check_parity(model, hf, *, special: bool, lengths: list[int]) -> None:
    ids, mask = token_batch(hf.config.vocab_size, lengths=lengths, seed=len(lengths))
    if not special:  # V1 cells are genes only
        ids = ids.masked_fill(mask & ((ids == 2) | (ids == 3)), 7)
    ids, labels, picked = _masked(ids, mask, special=special)
    ref_logits, ref_hidden = _hf_outputs(hf, ids, mask)
    batch = Batch(input_ids=ids, attention_mask=mask, labels=labels)
    with torch.no_grad():
        hidden, keys = model.encode_tokens(batch)
        out = model(batch)
    assert rel_err(hidden[mask], ref_hidden[mask]) < TOL
    assert out.logits is not None and out.logits.shape[0] == int(picked.sum()) > 0
    assert rel_err(out.logits, ref_logits[picked]) < TOL
    assert rel_err(pool(hidden, keys, "cls"), ref_hidden[:, 0]) < TOL
    m = mask.unsqueeze(-1).float()
    ref_mean = (ref_hidden * m).sum(1) / m.sum(1)
    want = ref_mean if model.config.pooling == "mean" else ref_hidden[:, 0]
    with torch.no_grad():
        assert rel_err(model.encode(batch), want) < TOL  # the imported pooling


def _roundtrip(model_dir, export, out, hf, *, special: bool) -> None:
    from transformers import BertForMaskedLM

    export_hf(export, out)
    back, loading = BertForMaskedLM.from_pretrained(str(out), output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"], loading
    assert not loading["mismatched_keys"], loading
    back.eval()
    ids, mask = token_batch(hf.config.vocab_size, lengths=[40, 40, 40], seed=7)
    for lengths in ([40, 40, 40], [40, 23, 9]):
        ids, mask = token_batch(hf.config.vocab_size, lengths=lengths, seed=len(lengths))
        a_logits, a_hidden = _hf_outputs(back, ids, mask)
        b_logits, b_hidden = _hf_outputs(hf, ids, mask)
        assert rel_err(a_hidden[mask], b_hidden[mask]) < TOL
        assert rel_err(a_logits[mask], b_logits[mask]) < TOL


def _run_size(name, cfg, over, tmp_path):
    hf = random_bert(cfg, **over)
    hf.save_pretrained(tmp_path / "hf")
    assert detect_format(tmp_path / "hf") == "hf_bert"
    export = import_hf(tmp_path / "hf", tmp_path / "export")
    info = read_pretrained_info(export)
    v2 = cfg["vocab_size"] == 20_275
    assert info["imported"]["recipe"] == ("geneformer_v2" if v2 else "geneformer_v1")
    assert info["tokenizer"]["max_length"] == (4096 if v2 else 2048)
    assert info["tokenizer"]["special_tokens"] is v2
    assert info["model"]["norm_placement"] == "post" and info["model"]["activation"] == "relu"
    model = load_pretrained(export)
    for lengths in ([48, 48, 48, 48], [48, 30, 17, 5]):  # unpadded, padded
        _check_parity(model, hf, special=v2, lengths=lengths)
    direct = load_pretrained(tmp_path / "hf")  # the HF directory itself, converted in place
    for (k, a), b in zip(model.state_dict().items(), direct.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    _roundtrip(tmp_path / "hf", export, tmp_path / "hf_back", hf, special=v2)


@pytest.mark.parametrize("name", list(SIZES))
def test_geneformer_import_export_parity(name, tmp_path):
    cfg, over = SIZES[name]
    _run_size(name, cfg, over, tmp_path)


@pytest.mark.slow
def test_geneformer_v2_104m_full_depth_parity(tmp_path):
    _run_size("v2_104m", GF_V2_104M, {}, tmp_path)


def test_v2_104m_parameter_count():
    """The V2-104M configuration is the 104M-parameter model of the card (+-2%)."""
    from transformers import BertConfig, BertForMaskedLM

    with torch.device("meta"):
        hf = BertForMaskedLM(BertConfig(**GF_V2_104M))
    n = sum(p.numel() for p in hf.parameters())
    assert abs(n - 104e6) < 0.02 * 104e6, n


def test_cli_import_bin_weights_bert_model_and_head_seed(tmp_path):
    """pytorch_model.bin through weights_only; a BertModel (no MLM head): same hidden states,
    and the missing head initialised the same way every time."""
    cfg = {**GF_V2_104M, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 128,
           "num_hidden_layers": 2, "max_position_embeddings": 256}
    hf = random_bert(cfg, seed=3)
    # the pre-safetensors layout of Geneformer's older uploads: config + torch.save'd state
    # dict (tied decoder weight stored too, buffers included)
    hf.config.save_pretrained(tmp_path / "bin")
    torch.save(hf.state_dict(), tmp_path / "bin" / "pytorch_model.bin")
    r = _cli("import", "hf", str(tmp_path / "bin"), "--out", str(tmp_path / "e_bin"),
             "--max-length", "128", "--pooling", "cls")
    assert r.returncode == 0, r.stderr
    info = read_pretrained_info(tmp_path / "e_bin")
    assert info["tokenizer"]["max_length"] == 128 and info["model"]["pooling"] == "cls"
    _check_parity(load_pretrained(tmp_path / "e_bin"), hf, special=True, lengths=[30, 12])

    base = random_bert(cfg, seed=4, head=False)
    base.save_pretrained(tmp_path / "base")
    export = import_hf(tmp_path / "base", tmp_path / "e_base")
    assert read_pretrained_info(export)["imported"]["has_mlm_head"] is False
    assert any(k.startswith("pooler.") for k in read_pretrained_info(export)["imported"]["dropped"])
    ids, mask = token_batch(cfg["vocab_size"], lengths=[30, 30, 11], seed=5)
    with torch.no_grad():
        ref = base(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    a, b = load_pretrained(export), load_pretrained(tmp_path / "base")
    with torch.no_grad():
        hidden, _ = a.encode_tokens(Batch(input_ids=ids, attention_mask=mask))
    assert rel_err(hidden[mask], ref[mask]) < TOL
    assert torch.equal(a.gene_head.dense.weight, b.gene_head.dense.weight)


def test_untied_decoder_and_gelu_new(tmp_path):
    cfg = {**GF_V2_104M, "hidden_size": 64, "num_attention_heads": 4, "intermediate_size": 96,
           "num_hidden_layers": 2, "max_position_embeddings": 128, "hidden_act": "gelu_new",
           "tie_word_embeddings": False}
    hf = random_bert(cfg, seed=8)
    with torch.no_grad():  # make the untied decoder differ from the embedding
        hf.cls.predictions.decoder.weight.normal_(0, 0.05)
    assert not torch.equal(hf.cls.predictions.decoder.weight,
                           hf.bert.embeddings.word_embeddings.weight)
    hf.save_pretrained(tmp_path / "hf")
    export = import_hf(tmp_path / "hf", tmp_path / "export", max_length=128)
    model = load_pretrained(export)
    assert model.config.tie_embeddings is False and model.config.activation == "gelu_new"
    _check_parity(model, hf, special=True, lengths=[40, 21, 6])
    _roundtrip(tmp_path / "hf", export, tmp_path / "back", hf, special=True)


class NotATensor:
    """A class weights_only refuses to unpickle."""


def test_refusals_are_one_line_errors(tmp_path):
    tiny = {**GF_V2_104M, "hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64,
            "num_hidden_layers": 1, "max_position_embeddings": 64}
    random_bert(tiny).save_pretrained(tmp_path / "ok")

    def refused(args, *needles):
        r = _cli(*args)
        assert r.returncode == 2, (r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"scforge {args[0]}: error: "), r.stderr
        for n in needles:
            assert n in lines[0], lines[0]

    # a .bin holding a pickled object
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    torch.save({"w": torch.zeros(2), "obj": NotATensor()}, evil / "pytorch_model.bin")
    refused(["import", "hf", str(evil), "--out", str(tmp_path / "x1")], "weights_only")
    # TensorFlow weights only
    tf = tmp_path / "tf"
    tf.mkdir()
    (tf / "config.json").write_text((tmp_path / "ok" / "config.json").read_text())
    (tf / "tf_model.h5").write_bytes(b"\x89HDF")
    refused(["import", "hf", str(tf), "--out", str(tmp_path / "x2")], "tf_model.h5")
    # a vocabulary size no Geneformer dictionary has
    random_bert({**tiny, "vocab_size": 500}).save_pretrained(tmp_path / "v500")
    refused(["import", "hf", str(tmp_path / "v500"), "--out", str(tmp_path / "x3")],
            "--token-dictionary")
    # a pickled token dictionary
    (tmp_path / "dict.pkl").write_bytes(b"\x80\x04}")
    refused(["import", "hf", str(tmp_path / "ok"), "--out", str(tmp_path / "x4"),
             "--token-dictionary", str(tmp_path / "dict.pkl")], "pickle")
    # relative position embeddings
    random_bert({**tiny, "position_embedding_type": "relative_key"}).save_pretrained(
        tmp_path / "rel")
    refused(["import", "hf", str(tmp_path / "rel"), "--out", str(tmp_path / "x5")],
            "relative_key")
    # exporting a pre-LN model
    from scforge.interop.recipes import build_recipe, manifest_of
    from scforge.models import ModelConfig, get_model
    from scforge.training.export import export_pretrained

    tok = build_recipe("geneformer_v2", max_length=64)
    pre = get_model(ModelConfig(preset="debug", vocab_size=tok.vocab.size, max_len=64))
    export_pretrained(tmp_path / "pre", pre.config, pre.state_dict(),
                      manifest=manifest_of(tok, "geneformer_v2"))
    refused(["export", "hf", str(tmp_path / "pre"), "--out", str(tmp_path / "x6")],
            "norm_placement='pre'", "post-LN")
    assert not (tmp_path / "x6" / "model.safetensors").exists()


@pytest.mark.parametrize(("recipe", "hf_cfg"), [("geneformer_v1", GF_V1),
                                                ("geneformer_v2_104m", GF_V2_104M)])
def test_model_recipes_are_what_import_writes(recipe, hf_cfg, tmp_path):
    """configs/model/<recipe>.yaml holds the architecture `scforge import hf` records for the
    published config (so a model trained from it exports to Geneformer's format)."""
    import yaml
    from transformers import BertConfig

    from scforge.interop import hf_checkpoint
    from scforge.models import ModelConfig
    from scforge.models.convert.hf_bert import exportable

    BertConfig(**hf_cfg).save_pretrained(tmp_path)  # config.json only
    model = hf_checkpoint(tmp_path, weights=False).info["model"]
    want = yaml.safe_load((REPO / "configs" / "model" / f"{recipe}.yaml").read_text())
    diff = {k: (v, model[k]) for k, v in want.items() if k != "vocab_size" and model[k] != v
            and not (k == "preset" and v == "none")}
    assert not diff, diff
    exportable(ModelConfig(**{**want, "vocab_size": hf_cfg["vocab_size"]}))
