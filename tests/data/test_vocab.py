"""GeneVocab construction and gene mapping (ids, symbols, collapsing, overlap reporting)."""

from __future__ import annotations

import numpy as np
import pytest

from scforge.data.vocab import GeneVocab, VocabError


def test_geneformer_v2_specials_and_size():
    v = GeneVocab.from_geneformer("v2")
    assert v.specials == {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}
    assert v.size == 20275 and v.token_dtype == np.uint16
    med = v.median_array()
    assert med.shape == (20275,) and np.all(med > 0)


def test_v1_has_no_cls():
    v = GeneVocab.from_geneformer("v1", id_mapping="none")
    assert v.special("<cls>") == -1 and v.special("<mask>") == 1


def test_scgpt_vocab_appends_specials():
    v = GeneVocab.from_scgpt()
    assert v.keyed_by == "symbol"
    base = 60694
    assert v.tokens["<pad>"] >= base - 1 and v.special("<cls>") >= 0 and v.special("<eos>") >= 0
    assert v.size <= 65536


def test_symbols_map_to_ensembl_and_collapse():
    v = GeneVocab.from_geneformer("v2")
    # Two symbols for the same gene collapse onto one token and are reported as a group.
    gmap, rep = v.map_genes(["CD3E", "CD4", "NOT_A_GENE_XYZ", "MS4A1"])
    assert rep.via == "symbol map"
    assert rep.n_mapped_genes == 3 and gmap.col_token[2] == -1
    assert gmap.col_token[0] == v.tokens["ENSG00000198851"]  # CD3E


def test_alias_ids_collapse_like_geneformer(pbmc_first2000):
    *_, var = pbmc_first2000
    v = GeneVocab.from_geneformer("v2")
    gmap, rep = v.map_genes(var)
    assert rep.n_collapse_groups == 150
    assert rep.n_remapped == 190  # the fixture README's count of remapped columns
    plain = GeneVocab.from_geneformer("v2", id_mapping="none")
    gmap2, rep2 = plain.map_genes(var)
    assert rep2.n_collapse_groups == 0


def test_no_overlap_raises_with_numbers():
    v = GeneVocab.from_geneformer("v2")
    with pytest.raises(VocabError, match="only 0 of 3 input genes"):
        v.map_genes(["ENSMUSG00000051951", "ENSMUSG00000089699", "ENSMUSG00000102343"])


def test_from_corpus():
    v = GeneVocab.from_corpus(["B", "A", "A", "C"])
    assert v.tokens == {"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3, "A": 4, "B": 5, "C": 6}
    assert v.hash != GeneVocab.from_corpus(["A", "B"]).hash
