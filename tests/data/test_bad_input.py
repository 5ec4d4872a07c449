"""Bad input: one-line error naming the problem and the fix, non-zero exit, nothing half-written."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scforge.data.shard.cli import main
from _testpaths import REPO


def _write(path: Path, x, var_names=None, obs=None) -> Path:
    n, g = x.shape
    var = pd.DataFrame(
        index=var_names if var_names is not None else [f"ENSG{i:011d}" for i in range(3, 3 + g)]
    )
    a = ad.AnnData(
        X=x,
        var=var,
        obs=obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(n)]),
    )
    a.write_h5ad(path)
    return path


def _real_ids(n: int) -> list[str]:

    from scforge.resources import load_json

    tok = load_json("geneformer_v2_token_dictionary.json.gz")
    return [g for g in tok if g.startswith("ENSG")][:n]


def _run(capsys, *args: str) -> tuple[int, str]:
    code = main([*map(str, args), "--no-progress"])
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_clean_failure(code: int, err: str, out: Path, *needles: str) -> None:
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.startswith("scforge-shard: error:")]
    assert len(lines) == 1, err
    for n in needles:
        assert n.lower() in lines[0].lower(), lines[0]
    assert not list(out.glob("*.tar")) and not list(out.glob(".*tmp*"))
    assert not (out / "manifest.json").exists()


def _counts(n=50, g=40, seed=0):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(1.0, size=(n, g)).astype(np.float32))


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda x: np.log1p(x), "non-integer"),
        (lambda x: -x, "negative"),
        (lambda x: x.__setitem__(slice(None), np.nan) or x, "nan"),
    ],
)
def test_values_not_raw_counts(tmp_path, capsys, mutate, needle):
    x = _counts()
    x.data = np.asarray(mutate(x.data.copy()), dtype=np.float32)
    path = _write(tmp_path / "bad.h5ad", x, var_names=_real_ids(40))
    code, err = _run(capsys, path, "--out", tmp_path / "o")
    _assert_clean_failure(code, err, tmp_path / "o", needle, "raw counts", "source.layer")


def test_no_gene_overlap_reports_overlap(tmp_path, capsys, mouse_path):
    code, err = _run(capsys, mouse_path, "--out", tmp_path / "o")
    _assert_clean_failure(code, err, tmp_path / "o", "0 of 1000", "geneformer_v2")


def test_duplicated_gene_ids(tmp_path, capsys):
    ids = _real_ids(40)
    ids[5] = ids[4]
    path = tmp_path / "dup.h5ad"
    x = _counts()
    var = pd.DataFrame(index=pd.Index(ids))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad.AnnData(X=x, var=var).write_h5ad(path)
    code, err = _run(capsys, path, "--out", tmp_path / "o")
    _assert_clean_failure(code, err, tmp_path / "o", "not unique", "var_names_make_unique")


def test_empty_and_truncated_files(tmp_path, capsys, cellbench_path):
    empty = tmp_path / "empty.h5ad"
    empty.write_bytes(b"")
    code, err = _run(capsys, empty, "--out", tmp_path / "o1")
    _assert_clean_failure(code, err, tmp_path / "o1", "empty")
    trunc = tmp_path / "trunc.h5ad"
    trunc.write_bytes(Path(cellbench_path).read_bytes()[:3_000_000])
    code, err = _run(capsys, trunc, "--out", tmp_path / "o2")
    _assert_clean_failure(code, err, tmp_path / "o2", "corrupt")


def test_no_cells(tmp_path, capsys):
    path = _write(
        tmp_path / "zero.h5ad", sp.csr_matrix((0, 40), dtype=np.float32), var_names=_real_ids(40)
    )
    code, err = _run(capsys, path, "--out", tmp_path / "o")
    _assert_clean_failure(code, err, tmp_path / "o", "no cells")


def test_output_dir_of_other_tokenizer_config(tmp_path, capsys, cellbench_path):
    out = tmp_path / "o"
    assert _run(capsys, cellbench_path, "--out", out)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code, err = _run(
        capsys, cellbench_path, "--out", out, "--config", REPO / "configs/shard/geneformer_v1.yaml"
    )
    assert code == 2 and "different job" in err and "tokenizer" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("tokenizer.stratgy=rank_value", "tokenizer.stratgy"),
        ("shard.cells_per_shard=many", "shard.cells_per_shard"),
        ("tokenizer.strategy=word2vec", "tokenizer.strategy"),
    ],
)
def test_bad_config_keys(tmp_path, capsys, cellbench_path, override, needle):
    code, err = _run(capsys, cellbench_path, "--out", tmp_path / "o", override)
    assert code == 2 and needle in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_csc_matrix_refused_with_fix(tmp_path, capsys):
    path = _write(tmp_path / "csc.h5ad", sp.csc_matrix(_counts()), var_names=_real_ids(40))
    code, err = _run(capsys, path, "--out", tmp_path / "o")
    _assert_clean_failure(code, err, tmp_path / "o", "csc", "tocsr")


def test_console_script_exit_code(tmp_path, mouse_path):
    exe = shutil.which("scforge-shard", path=str(Path(sys.executable).parent))
    assert exe is not None
    proc = subprocess.run(
        [exe, str(mouse_path), "--out", str(tmp_path / "o")], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("scforge-shard: error:")
