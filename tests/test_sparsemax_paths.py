"""Every sparsemax path equals the textbook path (and both equal exact rationals).

The default code is the textbook formula (full sort, cumulative sum); the
"partition" path (NumPy, K >= 256: benchmarks/mappings.py, "sparsemax paths")
sorts only the candidates ``z_i >= max(z) - 1``.  It sums the same sorted
prefix in the same order, so the two must agree exactly, not approximately.
"""
import numpy as np
import pytest

from _references import exact_sparsemax_row
from refimpl import sparsemax, topk_sparsemax
from refimpl.backend import to_numpy
from refimpl.sparsemax import PATHS, _default_path, _sparsemax_rows


def _inputs(rng, K, dtype):
    s = rng.standard_normal((6, K)).astype(dtype)
    s[1] *= 0.01                                         # almost uniform: a large support
    s[2] = np.round(s[2] * 4) / 4                        # many ties, dyadic
    s[3, ::3] = -np.inf                                  # masked entries
    s[4] *= 50.0                                         # support of one or two
    s[5, : K // 2] = s[5, 0]                             # half the row tied at the top
    return s


@pytest.mark.parametrize("K", [10, 255, 256, 1000, 4097])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_partition_path_equals_textbook_path_exactly(K, dtype):
    s = _inputs(np.random.default_rng(K), K, dtype)
    with np.errstate(over="ignore"):
        ref = _sparsemax_rows(s, path="textbook")
        for path in PATHS:
            got = _sparsemax_rows(s, path=path)
            assert got.dtype == s.dtype
            np.testing.assert_array_equal(got, ref, err_msg=path)


@pytest.mark.parametrize("K", [300, 2000])
def test_both_paths_match_exact_rationals(K):
    s = _inputs(np.random.default_rng(1), K, np.float64)
    for path in PATHS:
        got = _sparsemax_rows(s, path=path)
        for row, out in zip(s, got):
            exact = np.array([float(v) for v in exact_sparsemax_row(row)])
            np.testing.assert_array_equal(out > 0, exact > 0)              # the same support
            np.testing.assert_allclose(out, exact, rtol=0, atol=4 * np.finfo(float).eps)


def test_default_path_per_backend(xp):
    assert _default_path(np, 10) == "textbook" and _default_path(np, 256) == "partition"
    if xp is not np:
        assert _default_path(xp, 65536) == "textbook"          # no partition on CuPy


def test_public_functions_use_the_measured_default(xp):
    rng = np.random.default_rng(5)
    s = rng.standard_normal((3, 512))
    got = to_numpy(sparsemax(xp.asarray(s)))
    np.testing.assert_array_equal(got, _sparsemax_rows(s, path="textbook"))
    got_k = to_numpy(topk_sparsemax(xp.asarray(s), 400))
    assert np.all((got_k > 0).sum(axis=1) <= 400) and np.allclose(got_k.sum(axis=1), 1)
