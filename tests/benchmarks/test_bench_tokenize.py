"""The tokenization benchmark's peers are faithful: the NumPy port of scGPT's binning gives
bins inside the range scGPT's own function can produce on real pbmc cells."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_tokenize import load_scgpt_binning, scgpt_binning_port
from _testpaths import shared


def test_scgpt_port_matches_reference_tie_ranges(pbmc_first2000):
    ref = np.load(shared("reference/scgpt_bins_pbmc_2batch_first2000.npz"))
    indptr, _, data, _ = pbmc_first2000
    assert np.array_equal(ref["offsets"], indptr)
    np.random.seed(0)
    n_cells = 300
    got = np.concatenate(
        [
            scgpt_binning_port(data[indptr[r] : indptr[r + 1]], int(ref["n_bins"]))
            for r in range(n_cells)
        ]
    )
    lo, hi = ref["tie_lo"][: indptr[n_cells]], ref["tie_hi"][: indptr[n_cells]]
    assert np.all((got >= lo) & (got <= hi))
    fixed = lo == hi
    assert fixed.sum() > 1000
    np.testing.assert_array_equal(got[fixed], lo[fixed])
    assert (got[~fixed] != lo[~fixed]).any()  # ties really are broken at random


def test_port_zero_row_and_dense_row():
    assert not scgpt_binning_port(np.zeros(5, np.float32), 51).any()
    row = np.array([0, 3, 0, 1, 7], np.float32)
    b = scgpt_binning_port(row, 51)
    assert b.dtype == np.float32 and b[0] == 0 and b[2] == 0 and b[4] == 50


def test_missing_scgpt_wheel_is_reported(tmp_path):
    fn, why = load_scgpt_binning(tmp_path)
    assert fn is None and "pip download --no-deps scgpt" in why
