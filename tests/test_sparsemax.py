"""sparsemax, sparsemax_vjp and sparsemax_jacobian against independent references.

* forward: an exact sparsemax in rational arithmetic (``fractions.Fraction``,
  written here, sort + threshold) on random, constructed and
  hypothesis-generated inputs: exact ties at the threshold, all-equal slices,
  ``-inf`` entries, K = 1, huge magnitudes, long rows (K up to 65536), any axis;
* properties (hypothesis): simplex, shift invariance, permutation
  equivariance, fixed points on the simplex;
* backward: float64 central differences (``refimpl.gradcheck``) at points
  drawn away from the kinks;
* bad input, dtype and purity.

Tolerance against the exact result: the threshold's own rounding,
``4 eps (1 + Σ_S |z - max z|)(1 + √|S|)/|S|`` per row (``_references``), plus an
exact check of the support and k*; dyadic inputs must match exactly.
"""
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl import sparsemax, sparsemax_jacobian, sparsemax_vjp
from refimpl.backend import to_numpy
from refimpl.gradcheck import check_vjp, numerical_jacobian

from _references import NEG_INF, assert_rows_match_exact, exact_sparsemax_row

DTYPES = [np.float32, np.float64]
HYP = settings(max_examples=60, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------ exact reference
def exact_threshold(row):
    """Exact tau of a row (Fraction)."""
    p = exact_sparsemax_row(row)
    i = max(range(len(p)), key=lambda j: p[j])
    return Fraction(float(row[i])) - p[i]


def exact_sparsemax(a, axis=-1):
    """Correctly rounded (float64) exact sparsemax of a NumPy array along ``axis``."""
    a = np.moveaxis(np.asarray(a), axis, -1)
    rows = a.reshape(-1, a.shape[-1])
    out = np.array([[float(v) for v in exact_sparsemax_row(r)] for r in rows]).reshape(a.shape)
    return np.moveaxis(out, -1, axis)


def tol_for(K, dtype):
    """A loose bound, for the property checks only (sums, shift/permutation of two
    float outputs); comparisons with the exact result use ``assert_exact``."""
    return 8 * K * np.finfo(dtype).eps


def assert_exact(ours, scores, axis=-1):
    """ours (any backend) matches the exact sparsemax of scores (NumPy) along axis:
    values within the threshold's rounding, the support and k* exactly
    (``_references.assert_rows_match_exact``).  Returns the rounded exact result."""
    ours = to_numpy(ours)
    scores = np.asarray(scores)
    assert ours.dtype == scores.dtype
    assert ours.shape == scores.shape
    assert np.all(np.isfinite(ours)), "non-finite output"
    rows = np.moveaxis(scores, axis, -1).reshape(-1, scores.shape[axis])
    exact = [exact_sparsemax_row(r) for r in rows]
    assert_rows_match_exact(np.moveaxis(ours, axis, -1).reshape(rows.shape), rows, exact,
                            np.finfo(scores.dtype).eps)
    ref = np.array([[float(v) for v in e] for e in exact]).reshape(np.moveaxis(scores, axis, -1).shape)
    return np.moveaxis(ref, -1, axis)


def test_tolerance_catches_a_small_wrong_answer():
    """Moving 0.05 (or 1e-4) of probability between two support entries fails, at K = 65536."""
    K = 65536
    s = np.zeros(K, dtype=np.float32)
    s[:4] = [1.0, 0.9, 0.8, 0.7]                                # support of 4: p = .4, .3, .2, .1
    good = np.zeros(K, dtype=np.float32)
    good[:4] = [0.4, 0.3, 0.2, 0.1]
    assert_exact(good, s)
    for delta in (0.05, 1e-4):
        bad = good.copy()
        bad[0] += delta
        bad[1] -= delta
        with pytest.raises(AssertionError, match="tolerance"):
            assert_exact(bad, s)
    leaked = good.copy()
    leaked[0] -= 1e-7
    leaked[10] = 1e-7                                            # a tiny entry off the support
    with pytest.raises(AssertionError, match="support"):
        assert_exact(leaked, s)


def test_exact_reference_self_check():
    """The reference itself on hand-computed cases."""
    assert exact_sparsemax_row([0.5, 0.0, -0.5]) == [Fraction(3, 4), Fraction(1, 4), 0]
    assert exact_sparsemax_row([1.0, 0.0]) == [1, 0]
    assert exact_sparsemax_row([NEG_INF, 2.0, 2.0]) == [0, Fraction(1, 2), Fraction(1, 2)]
    assert exact_sparsemax_row([3.0]) == [1]
    assert exact_sparsemax_row([0.1, 0.1, 0.1]) == [Fraction(1, 3)] * 3


# ------------------------------------------------------------ random inputs
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("K", [1, 2, 3, 5, 17, 64, 65, 130])
def test_random_rows_match_exact(xp, rng, dtype, K):
    for scale in (1e-3, 0.3, 1.0, 5.0, 1e3):
        s = (rng.standard_normal((20, K)) * scale).astype(dtype)
        assert_exact(sparsemax(xp.asarray(s)), s)
    # integer-valued rows: many exact ties everywhere
    s = rng.integers(-3, 4, size=(30, K)).astype(dtype) / 2
    assert_exact(sparsemax(xp.asarray(s)), s)


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_rows_with_neg_inf_match_exact(xp, rng, dtype):
    for K in (2, 7, 64, 200):
        s = rng.standard_normal((25, K))
        s[rng.random((25, K)) < 0.4] = -np.inf
        s[:, rng.integers(K)] = rng.standard_normal()               # every row has a finite entry
        s[0, :] = -np.inf
        s[0, K // 2] = 123.0                                        # one finite entry: one-hot
        s = s.astype(dtype)
        out = to_numpy(sparsemax(xp.asarray(s)))
        assert_exact(out, s)
        assert out[0, K // 2] == 1 and out[0].sum() == 1


# --------------------------------------------------- exact ties at the threshold
def dyadic_tie_row(rng, k, n_ties, n_below, m=6, tau_num=None):
    """A row whose sparsemax is known exactly: k support entries tau + n_i/2^m
    (Σ n_i = 2^m), n_ties entries exactly equal to tau, n_below entries below.
    All values are dyadic with few bits (exact in float32 too)."""
    cuts = np.sort(rng.choice(np.arange(1, 2 ** m), size=k - 1, replace=False))
    n = np.diff(np.concatenate([[0], cuts, [2 ** m]]))
    tau = (rng.integers(-128, 129) if tau_num is None else tau_num) / 16
    support = tau + n / 2 ** m
    below = tau - rng.integers(1, 64, size=n_below) / 16
    row = np.concatenate([support, np.full(n_ties, tau), below])
    expected = np.concatenate([n / 2 ** m, np.zeros(n_ties + n_below)])
    perm = rng.permutation(row.size)
    return row[perm], expected[perm]


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_ties_at_threshold(xp, rng, dtype):
    for _ in range(60):
        k = int(rng.integers(1, 9))
        row, expected = dyadic_tie_row(rng, k, int(rng.integers(1, 5)), int(rng.integers(0, 5)))
        s = row.astype(dtype)
        assert np.array_equal(s.astype(np.float64), row)            # exactly representable
        out = to_numpy(sparsemax(xp.asarray(s)))
        ref = assert_exact(out, s)
        assert np.array_equal(ref, expected)                        # reference agrees with construction
        assert np.array_equal(out, expected)     # dyadic: every sum and tau exact, so p is exact
        assert exact_threshold(row) == Fraction(float(row[np.argmax(expected)])) - Fraction(
            float(expected.max()))


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_ties_at_threshold_long_rows(xp, rng, dtype):
    """Ties at tau in rows long enough for the K > 64 code path."""
    rows, exps = [], []
    for _ in range(4):
        k = int(rng.integers(1, 20))
        row, expected = dyadic_tie_row(rng, k, 40, 200 - 40 - k)
        rows.append(row)
        exps.append(expected)
    s = np.array(rows).astype(dtype)
    out = to_numpy(sparsemax(xp.asarray(s)))
    assert_exact(out, s)
    assert np.array_equal(out, np.array(exps))                      # dyadic: exact


@st.composite
def tie_rows(draw):
    k = draw(st.integers(1, 10))
    n_ties = draw(st.integers(1, 6))
    n_below = draw(st.integers(0, 6))
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return dyadic_tie_row(np.random.default_rng(seed), k, n_ties, n_below)


@HYP
@given(case=tie_rows(), dtype=st.sampled_from(DTYPES))
def test_hypothesis_exact_ties_at_threshold(xp, case, dtype):
    row, expected = case
    s = row.astype(dtype)
    out = to_numpy(sparsemax(xp.asarray(s)))
    assert_exact(out, s)
    assert np.array_equal(out, expected)                            # dyadic: exact


# --------------------------------------------------- all-equal, K = 1, huge
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [0.0, -5.5, 3.25, 1e6, -1e6, 1e8, -1e8])
@pytest.mark.parametrize("K", [1, 2, 3, 7, 64, 100])
def test_all_equal_slices(xp, dtype, c, K):
    s = np.full((3, K), c, dtype=dtype)
    out = to_numpy(sparsemax(xp.asarray(s)))
    assert out.dtype == dtype
    assert np.abs(out - 1.0 / K).max() <= tol_for(K, dtype)
    assert_exact(out, s)


def test_all_equal_slices_huge_float64(xp):
    for c in (1e30, -1e30, 1e300, -1e300):
        s = np.full((2, 5), c)
        out = to_numpy(sparsemax(xp.asarray(s)))
        assert np.abs(out - 0.2).max() <= tol_for(5, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_K_equals_1(xp, rng, dtype):
    for shape in [(1,), (4, 1), (2, 3, 1)]:
        s = (rng.standard_normal(shape) * 1e6).astype(dtype)
        out = to_numpy(sparsemax(xp.asarray(s)))
        assert out.dtype == dtype and out.shape == shape
        assert np.all(out == 1)
    out = to_numpy(sparsemax(xp.asarray(np.array([[1.0, 2.0, -3.0]], dtype=dtype)), axis=0))
    assert np.all(out == 1)


@pytest.mark.parametrize("dtype,scale", [(np.float64, 1e30), (np.float64, 1e17), (np.float64, 1e300),
                                         (np.float32, 1e8), (np.float32, 1e30)])
def test_huge_magnitudes_match_exact(xp, rng, dtype, scale):
    K = 9
    base = rng.standard_normal((40, K))
    rows = [base * scale, -np.abs(base) * scale, (1 + 1e-12 * base) * scale,
            np.round(base) * scale, base * scale + rng.standard_normal((40, K))]
    s = np.concatenate(rows).astype(dtype)
    s[::7, ::3] = -np.inf
    s[:, 4] = np.where(np.all(s == -np.inf, axis=1), 1.0, s[:, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)       # overflow of s - max near float max
        out = sparsemax(xp.asarray(s))
    assert_exact(out, s)


def test_huge_magnitude_hand_cases(xp):
    cases = [([1e30, 1e30, -1e30, 1e29], [0.5, 0.5, 0, 0], np.float64),
             ([1e30, 1e30 + 2 ** 100, 0.0], [0, 1, 0], np.float64),
             ([-1e30, -1e30 + 2 ** 47, -1e30], [0, 1, 0], np.float64),
             ([1e8, 1e8, -1e8], [0.5, 0.5, 0], np.float32),
             ([1e8, 1e8 - 8, 0.0], [1, 0, 0], np.float32),
             ([1e8 + 0.5, 1e8 + 0.25], [0.625, 0.375], np.float64)]  # differences 0.25 < 1
    for s, expected, dtype in cases:
        s = np.array(s, dtype=dtype)
        out = to_numpy(sparsemax(xp.asarray(s)))
        assert out.dtype == dtype
        assert_exact(out, s)
        np.testing.assert_array_equal(out, exact_sparsemax(s))      # differences are dyadic: exact
        np.testing.assert_array_equal(out, expected)
    np.testing.assert_allclose(to_numpy(sparsemax(xp.asarray(np.array([1e8 + 0.5, 1e8, 1e8 - 0.25])))),
                               [0.75, 0.25, 0.0], atol=1e-8)


# --------------------------------------------------------------- axis
@pytest.mark.parametrize("dtype", DTYPES)
def test_axis_argument(xp, rng, dtype):
    s2 = rng.standard_normal((5, 4)).astype(dtype)
    out = to_numpy(sparsemax(xp.asarray(s2), axis=0))
    assert_exact(out, s2, axis=0)
    assert np.allclose(out.sum(axis=0), 1, atol=tol_for(5, dtype))
    assert not np.allclose(out.sum(axis=1), 1)                     # not the last axis
    s3 = (rng.standard_normal((3, 6, 4)) * 2).astype(dtype)
    for axis in (0, 1, 2, -1, -2, -3):
        out = to_numpy(sparsemax(xp.asarray(s3), axis=axis))
        assert_exact(out, s3, axis=axis)
    # numpy integer axis
    assert_exact(sparsemax(xp.asarray(s3), axis=np.int64(1)), s3, axis=1)


def test_axis_long_rows_not_last(xp, rng):
    s = rng.standard_normal((200, 3)) * 3                           # K = 200 along axis 0
    assert_exact(sparsemax(xp.asarray(s), axis=0), s, axis=0)


# --------------------------------------------------------------- long rows
def long_rows(rng, K, dtype):
    """Rows for the K > 64 path: many entries near the max, few near the max,
    all within 1 of the max (every entry a candidate), and with -inf."""
    many = rng.uniform(-50, -40, K)
    many[: K // 5] = rng.uniform(-0.01, 0, K // 5)                 # candidates < K/4
    few = rng.uniform(-50, -1.0001, K)
    few[:3] = [0.0, -0.2, -0.9]
    tiny = rng.uniform(-1e-6, 0, K)
    masked = rng.uniform(-3, 0, K)
    masked[rng.random(K) < 0.5] = -np.inf
    return [rng.permutation(r).astype(dtype) + dtype(7) for r in (many, few, tiny, masked)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_long_rows_match_exact(xp, rng, dtype):
    K = 65536
    rows = long_rows(rng, K, dtype)
    batch = np.stack(rows[:2])                                      # mixed candidate counts
    assert_exact(sparsemax(xp.asarray(batch)), batch)
    for r in rows[1:]:                                              # one at a time
        assert_exact(sparsemax(xp.asarray(r)), r)
    onehot = np.full(K, -5.0, dtype=dtype)
    onehot[12345] = 0.0
    out = to_numpy(sparsemax(xp.asarray(onehot)))
    assert out[12345] == 1 and out.sum() == 1


@pytest.mark.parametrize("K", [65, 100, 1000, 4097])
def test_medium_rows_match_exact(xp, rng, K):
    for dtype in DTYPES:
        s = np.stack([r[:K] for r in long_rows(rng, K, dtype)])
        s = np.concatenate([s, (rng.standard_normal((3, K)) * 0.01).astype(dtype)])
        assert_exact(sparsemax(xp.asarray(s)), s)


# ------------------------------------------------------------ hypothesis
def rows_strategy(max_k=40, allow_neg_inf=True):
    finite = st.floats(-10, 10, allow_nan=False, allow_infinity=False)
    elem = st.one_of(finite, st.just(NEG_INF)) if allow_neg_inf else finite
    scale = st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e3, 1e8, 1e30])
    dtype = st.sampled_from(DTYPES)

    @st.composite
    def rows(draw):
        vals = draw(st.lists(elem, min_size=1, max_size=max_k))
        if all(v == NEG_INF for v in vals):
            vals[draw(st.integers(0, len(vals) - 1))] = draw(finite)
        dt = draw(dtype)
        sc = draw(scale)
        if dt is np.float32 and sc > 1e8:
            sc = 1e8
        return (np.array(vals) * sc).astype(dt)
    return rows()


@HYP
@given(s=rows_strategy())
def test_hypothesis_matches_exact(xp, s):
    assert_exact(sparsemax(xp.asarray(s)), s)


@HYP
@given(s=rows_strategy())
def test_hypothesis_on_simplex(xp, s):
    p = to_numpy(sparsemax(xp.asarray(s)))
    K = s.size
    assert p.dtype == s.dtype
    assert np.all(p >= 0) and np.all(p <= 1)
    assert abs(float(p.astype(np.float64).sum()) - 1) <= tol_for(K, s.dtype)
    assert np.all(p[s == -np.inf] == 0)


@st.composite
def grid_rows_and_shift(draw):
    """Rows and a shift on a dyadic grid so that s + c is exact in the dtype."""
    dt = draw(st.sampled_from(DTYPES))
    hi = 2 ** 20 if dt is np.float64 else 2 ** 10
    ints = draw(st.lists(st.integers(-hi, hi), min_size=1, max_size=30))
    c = draw(st.integers(-2 ** 20, 2 ** 20)) if dt is np.float64 else draw(st.integers(-8, 8))
    return (np.array(ints) / 1024).astype(dt), dt(c)


@HYP
@given(case=grid_rows_and_shift())
def test_hypothesis_shift_invariance(xp, case):
    s, c = case
    shifted = s + c
    assert np.array_equal(shifted.astype(np.float64) - float(c), s.astype(np.float64))   # exact shift
    p = to_numpy(sparsemax(xp.asarray(s)))
    q = to_numpy(sparsemax(xp.asarray(shifted)))
    assert np.abs(p - q).max() <= 2 * tol_for(s.size, s.dtype)


@HYP
@given(s=rows_strategy(), seed=st.integers(0, 2 ** 32 - 1))
def test_hypothesis_permutation_equivariance(xp, s, seed):
    perm = np.random.default_rng(seed).permutation(s.size)
    p = to_numpy(sparsemax(xp.asarray(s)))
    q = to_numpy(sparsemax(xp.asarray(s[perm])))
    assert np.abs(p[perm] - q).max() <= 2 * tol_for(s.size, s.dtype)


@st.composite
def simplex_points(draw):
    """Exact points of the simplex: n_i / 2^m with Σ n_i = 2^m (zeros allowed)."""
    m = draw(st.integers(0, 12))
    K = draw(st.integers(1, 30))
    cuts = sorted(draw(st.lists(st.integers(0, 2 ** m), min_size=K - 1, max_size=K - 1)))
    n = np.diff(np.concatenate([[0], cuts, [2 ** m]]))
    dt = draw(st.sampled_from(DTYPES))
    return (n / 2 ** m).astype(dt)


@HYP
@given(p=simplex_points())
def test_hypothesis_fixed_points_on_simplex(xp, p):
    assert p.astype(np.float64).sum() == 1
    out = to_numpy(sparsemax(xp.asarray(p)))
    assert out.dtype == p.dtype
    assert np.abs(out - p).max() <= tol_for(p.size, p.dtype)


def test_fixed_points_float_simplex(xp, rng):
    """Points of the simplex up to rounding (normalised Dirichlet draws)."""
    for K in (2, 5, 50, 300):
        p = rng.dirichlet(np.ones(K) * 0.5, size=10)
        p[:, ::3] = 0
        p /= p.sum(axis=1, keepdims=True)
        out = to_numpy(sparsemax(xp.asarray(p)))
        assert np.abs(out - p).max() <= tol_for(K, np.float64)


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad,exc,match", [
    (np.array([1.0, np.nan, 0.0]), ValueError, "scores.*NaN"),
    (np.array([[1.0, 2.0], [np.nan, np.nan]]), ValueError, "scores.*NaN"),
    (np.array([1.0, np.inf]), ValueError, "scores.*inf"),
    (np.array([[0.0, 1.0], [-np.inf, -np.inf]]), ValueError, "scores.*-inf"),
    (np.full(100, -np.inf), ValueError, "scores.*-inf"),
    (np.r_[np.zeros(99), np.nan], ValueError, "scores.*NaN"),
    (np.r_[np.zeros(99), np.inf], ValueError, "scores.*inf"),
    (np.array([1, 2, 3]), TypeError, "scores"),
    (np.array([True, False]), TypeError, "scores"),
    (np.array([], dtype=float), ValueError, "scores"),
    (np.zeros((3, 0)), ValueError, "scores"),
    (np.array(1.0), ValueError, "scores"),
    ([1.0, 2.0], TypeError, "scores"),
])
def test_bad_input(xp, bad, exc, match):
    arg = xp.asarray(bad) if isinstance(bad, np.ndarray) else bad
    with pytest.raises(exc, match=match):
        sparsemax(arg)


@pytest.mark.parametrize("axis", [2, -3, 1.0, "0", None])
def test_bad_axis(xp, axis):
    s = xp.asarray(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="axis"):
        sparsemax(s, axis=axis)
    p = sparsemax(s)
    with pytest.raises(ValueError, match="axis"):
        sparsemax_vjp(p, p, axis=axis)
    with pytest.raises(ValueError, match="axis"):
        sparsemax_jacobian(p, axis=axis)


def test_neg_inf_is_valid(xp):
    out = to_numpy(sparsemax(xp.asarray(np.array([-np.inf, 0.0, -np.inf]))))
    assert np.array_equal(out, [0.0, 1.0, 0.0])


def test_vjp_bad_grad(xp):
    p = sparsemax(xp.asarray(np.array([[0.3, 0.1, -0.2]])))
    with pytest.raises(ValueError, match="grad"):
        sparsemax_vjp(p, xp.asarray(np.zeros((1, 4))))
    with pytest.raises(ValueError, match="grad"):
        sparsemax_vjp(p, xp.asarray(np.zeros(3)))
    with pytest.raises(TypeError, match="grad"):
        sparsemax_vjp(p, xp.asarray(np.zeros((1, 3), dtype=np.int64)))


# ------------------------------------------------------------ VJP / Jacobian
def away_from_kinks(rng, shape, gap=1e-3, scale=1.0, neg_inf_frac=0.0):
    """Scores with every finite entry at least ``gap`` from its slice's exact tau
    (so no support change within the finite-difference step)."""
    out = np.empty(shape)
    flat = out.reshape(-1, shape[-1])
    for i in range(flat.shape[0]):
        while True:
            r = rng.standard_normal(shape[-1]) * scale
            r[rng.random(shape[-1]) < neg_inf_frac] = -np.inf
            if np.all(r == -np.inf):
                continue
            tau = float(exact_threshold(r))
            fin = r[np.isfinite(r)]
            if np.min(np.abs(fin - tau)) >= gap:
                break
        flat[i] = r
    return out


def sparsemax_pair(axis=-1):
    return (lambda x: sparsemax(x, axis=axis),
            lambda x, u: sparsemax_vjp(sparsemax(x, axis=axis), u, axis=axis))


@pytest.mark.parametrize("shape,axis", [((7,), -1), ((4, 6), -1), ((4, 6), 0), ((3, 5, 4), 1),
                                        ((2, 3, 70), -1), ((1,), -1), ((5, 1), -1)])
def test_vjp_against_finite_differences(xp, rng, shape, axis):
    for scale in (0.3, 1.0, 4.0):
        x = np.moveaxis(away_from_kinks(rng, np.moveaxis(np.empty(shape), axis, -1).shape,
                                        scale=scale), -1, axis)
        f, vjp = sparsemax_pair(axis)
        check_vjp(f, vjp, xp.asarray(x), n_directions=3)


def test_vjp_with_neg_inf_entries(xp, rng):
    x = away_from_kinks(rng, (6, 9), neg_inf_frac=0.3)
    f, vjp = sparsemax_pair()
    check_vjp(f, vjp, xp.asarray(x))
    g = to_numpy(vjp(xp.asarray(x), xp.asarray(rng.standard_normal(x.shape))))
    assert np.all(g[x == -np.inf] == 0)


def test_vjp_one_hot_rows_is_zero(xp, rng):
    """One-hot outputs: the Jacobian is 0 (finite differences agree)."""
    x = rng.standard_normal((8, 5))
    x[np.arange(8), rng.integers(0, 5, 8)] = 10.0
    f, vjp = sparsemax_pair()
    check_vjp(f, vjp, xp.asarray(x))
    g = to_numpy(vjp(xp.asarray(x), xp.asarray(rng.standard_normal(x.shape))))
    assert np.all(g == 0)


def test_vjp_independent_formula_and_dtype(xp, rng):
    """s ⊙ (g - mean_S g), written out per row; float32 grad gives float32."""
    x = away_from_kinks(rng, (10, 6))
    g = rng.standard_normal(x.shape)
    p = exact_sparsemax(x)
    ref = np.zeros_like(g)
    for i in range(10):
        S = p[i] > 0
        ref[i, S] = g[i, S] - g[i, S].mean()
    out = to_numpy(sparsemax_vjp(sparsemax(xp.asarray(x)), xp.asarray(g)))
    np.testing.assert_allclose(out, ref, atol=1e-12)
    out32 = to_numpy(sparsemax_vjp(sparsemax(xp.asarray(x.astype(np.float32))),
                                   xp.asarray(g.astype(np.float32))))
    assert out32.dtype == np.float32
    np.testing.assert_allclose(out32, ref, atol=1e-5)


@pytest.mark.parametrize("shape,axis", [((6,), -1), ((3, 5), -1), ((5, 3), 0), ((2, 4, 3), 1)])
def test_jacobian_against_numerical(xp, rng, shape, axis):
    moved = np.moveaxis(np.empty(shape), axis, -1).shape
    x = np.moveaxis(away_from_kinks(rng, moved), -1, axis)
    J = to_numpy(sparsemax_jacobian(sparsemax(xp.asarray(x), axis=axis), axis=axis))
    K = shape[axis]
    assert J.shape == moved[:-1] + (K, K)
    num = to_numpy(numerical_jacobian(lambda z: sparsemax(z, axis=axis), xp.asarray(x)))
    # num: shape + shape; move category axes last and take the block diagonal over the batch
    a, n = axis % len(shape), len(shape)
    num = np.moveaxis(num, [a, n + a], [n - 1, 2 * n - 1])
    batch = int(np.prod(moved[:-1]))
    num = num.reshape(batch, K, batch, K)
    Jf = J.reshape(batch, K, K)
    for b in range(batch):
        for c in range(batch):
            expected = Jf[b] if b == c else np.zeros((K, K))
            np.testing.assert_allclose(num[b, :, c, :], expected, atol=1e-8)
    # J symmetric, rows sum to 0 (sparsemax output always sums to 1)
    np.testing.assert_allclose(J, np.swapaxes(J, -1, -2))
    np.testing.assert_allclose(J.sum(-1), 0, atol=1e-12)


def test_jacobian_dtype(xp):
    p = sparsemax(xp.asarray(np.array([0.4, 0.1, -3.0], dtype=np.float32)))
    J = sparsemax_jacobian(p)
    assert to_numpy(J).dtype == np.float32


# ------------------------------------------------------------ purity and dtype
@pytest.mark.parametrize("dtype", DTYPES)
def test_inputs_not_modified_and_dtype(xp, rng, dtype):
    base = rng.standard_normal((4, 80)).astype(dtype)
    base[0, :5] = -np.inf
    for s_np in (base, base[:, ::2], base.T):                       # contiguous and strided views
        s = xp.asarray(s_np)
        keep = to_numpy(s).copy()
        p = sparsemax(s, axis=-1)
        assert to_numpy(p).dtype == dtype
        np.testing.assert_array_equal(to_numpy(s), keep)
        g = xp.asarray(rng.standard_normal(s_np.shape).astype(dtype))
        g_keep, p_keep = to_numpy(g).copy(), to_numpy(p).copy()
        out = sparsemax_vjp(p, g)
        assert to_numpy(out).dtype == dtype
        J = sparsemax_jacobian(p)
        assert to_numpy(J).dtype == dtype
        np.testing.assert_array_equal(to_numpy(g), g_keep)
        np.testing.assert_array_equal(to_numpy(p), p_keep)
    assert_exact(sparsemax(xp.asarray(base[:, ::2])), base[:, ::2])
    assert_exact(sparsemax(xp.asarray(base.T), axis=0), base.T, axis=0)
