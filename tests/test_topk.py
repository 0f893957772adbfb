"""Top-k sparsemax and the k best bit-vectors against independent references.

* ``topk_sparsemax``: exact rational sparsemax (written here) of the row with
  all but the k largest entries (ties: lower index) set to ``-inf``;
* ``kbest_bitvectors``: brute force over all 2^D vectors with exact integer
  scores, sorted by (score desc, the documented secondary key), for D <= 12;
  at the paper's D = 32 and 128 a best-first search over flip sets with exact
  integer costs on dyadic t (itself checked against brute force);
* structured top-k sparsemax == full sparsemax over 2^D when its support is
  smaller than k (``check_against_enumeration`` and an independent check);
* every VJP against float64 central differences (``check_vjp``), the
  structured chain with a piece signature that includes the k best vectors.
"""
import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl import kbest_bitvectors, sparsemax, sparsemax_vjp, topk_sparsemax, topk_sparsemax_vjp
from refimpl.backend import to_numpy
from refimpl.enumeration import bitvector_scores
from refimpl.gradcheck import check_against_enumeration, check_vjp

from _references import NEG_INF, assert_rows_match_exact, exact_sparsemax_row, qualifies

DTYPES = [np.float32, np.float64]
HYP = settings(max_examples=40, deadline=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------ references
def topk_masked_row(row, k):
    """The row with all but its k largest entries (ties: lower index) set to -inf."""
    keep = set(sorted(range(len(row)), key=lambda i: (-float(row[i]), i))[:k])
    return [float(row[i]) if i in keep else NEG_INF for i in range(len(row))]


def ref_topk_sparsemax_row(row, k):
    """Exact sparsemax of the row restricted to its k largest (ties: lower index)."""
    return np.array([float(v) for v in exact_sparsemax_row(topk_masked_row(row, k))])


def assert_topk_exact(out, s, k):
    """``out`` (NumPy, rows along the last axis) against the exact top-k sparsemax of ``s``:
    values within the threshold's rounding, support and k* exactly (``_references``)."""
    rows = [topk_masked_row(r, k) for r in np.asarray(s).reshape(-1, s.shape[-1])]
    assert_rows_match_exact(out.reshape(len(rows), -1), rows,
                            [exact_sparsemax_row(r) for r in rows], np.finfo(s.dtype).eps)


def ref_topk_sparsemax(a, k, axis=-1):
    a = np.moveaxis(np.asarray(a), axis, -1)
    out = np.array([ref_topk_sparsemax_row(r, k) for r in a.reshape(-1, a.shape[-1])])
    return np.moveaxis(out.reshape(a.shape), -1, axis)


def exact_ints(t):
    """Floats as integers on a common dyadic grid: t_i = ints[i] / 2^shift exactly."""
    fr = [Fraction(float(x)) for x in t]
    L = max(f.denominator for f in fr)
    return [int(f * L) for f in fr], L


def brute_kbest(t, k):
    """All 2^D vectors sorted by exact score desc, then the documented key
    sum_{i in F} 2^rank(i) (F: bits flipped from z* = 1[t > 0]; rank: |t_i|
    ascending, ties by lower index).  Returns bits (k, D) bool, exact scores
    (Fractions), and the full sorted list."""
    t = [float(x) for x in t]
    D = len(t)
    ints, L = exact_ints(t)
    zstar = [x > 0 for x in t]
    order = sorted(range(D), key=lambda i: (abs(t[i]), i))
    rank = {i: r for r, i in enumerate(order)}
    items = []
    for z in itertools.product((False, True), repeat=D):
        score = sum(ints[i] for i in range(D) if z[i])
        key = sum(1 << rank[i] for i in range(D) if z[i] != zstar[i])
        items.append((-score, key, z))
    items.sort()
    bits = np.array([it[2] for it in items[:k]], dtype=bool).reshape(k, D)
    scores = [Fraction(-it[0], L) for it in items[:k]]
    return bits, scores, items, L


def exact_score(bits_row, t):
    return sum((Fraction(float(x)) for b, x in zip(bits_row, t) if b), Fraction(0))


# ------------------------------------------------------------ topk_sparsemax
@pytest.mark.parametrize("dtype", DTYPES)
def test_topk_sparsemax_against_reference(xp, rng, dtype):
    for K in (1, 2, 5, 9, 70):
        for kind in ("normal", "ints", "neg_inf"):
            s = rng.standard_normal((6, K)) * 1.5
            if kind == "ints":
                s = np.round(s * 2) / 2                              # many exact ties
            if kind == "neg_inf":
                s[rng.random(s.shape) < 0.4] = -np.inf
                s[:, 0] = 0.25
            s = s.astype(dtype)
            for k in sorted({1, 2, 3, K - 1, K, K + 3} - {0}):
                if k < 1:
                    continue
                out = to_numpy(topk_sparsemax(xp.asarray(s), k))
                assert out.dtype == dtype and out.shape == s.shape
                assert_topk_exact(out, s, k)
                assert np.all((out > 0).sum(-1) <= k)


def test_topk_ties_go_to_lower_index(xp):
    s = xp.asarray(np.array([1.0, 2.0, 2.0, 2.0]))
    np.testing.assert_allclose(to_numpy(topk_sparsemax(s, 2)), [0, 0.5, 0.5, 0])
    np.testing.assert_allclose(to_numpy(topk_sparsemax(s, 1)), [0, 1, 0, 0])
    s = xp.asarray(np.array([3.0, 3.0, 3.0, 3.0, 3.0]))
    np.testing.assert_allclose(to_numpy(topk_sparsemax(s, 3)), [1 / 3] * 3 + [0, 0])


@pytest.mark.parametrize("axis", [0, 1, -1, 2])
def test_topk_axis(xp, rng, axis):
    s = np.round(rng.standard_normal((4, 5, 6)) * 2) / 2
    out = to_numpy(topk_sparsemax(xp.asarray(s), 3, axis=axis))
    np.testing.assert_allclose(out, ref_topk_sparsemax(s, 3, axis=axis), atol=1e-12)


def test_topk_k_at_least_K_is_sparsemax(xp, rng):
    s = rng.standard_normal((5, 7))
    full = to_numpy(sparsemax(xp.asarray(s)))
    for k in (7, 8, 100):
        np.testing.assert_array_equal(to_numpy(topk_sparsemax(xp.asarray(s), k)), full)


def test_topk_certificate_small_support_equals_sparsemax(xp, rng):
    """Docstring: fewer than k positive entries => equals sparsemax(scores)."""
    hits = 0
    for _ in range(200):
        K = int(rng.integers(3, 30))
        k = int(rng.integers(1, K))
        s = rng.standard_normal(K) * rng.choice([0.3, 1, 3])
        out = to_numpy(topk_sparsemax(xp.asarray(s), k))
        if (out > 0).sum() < k:
            hits += 1
            full = np.array([float(v) for v in exact_sparsemax_row(s)])
            np.testing.assert_allclose(out, full, atol=1e-13)
    assert hits >= 50


@st.composite
def topk_cases(draw):
    vals = draw(st.lists(st.one_of(st.integers(-4, 4).map(lambda i: i / 4),
                                   st.floats(-5, 5, allow_nan=False),
                                   st.just(NEG_INF)), min_size=1, max_size=25))
    if all(v == NEG_INF for v in vals):
        vals[0] = 0.0
    k = draw(st.integers(1, len(vals) + 2))
    dt = draw(st.sampled_from(DTYPES))
    return np.array(vals, dtype=dt), k


@HYP
@given(case=topk_cases())
def test_hypothesis_topk_sparsemax(xp, case):
    s, k = case
    out = to_numpy(topk_sparsemax(xp.asarray(s), k))
    assert out.dtype == s.dtype
    assert_topk_exact(out[None], s[None], k)
    assert (out > 0).sum() <= k


def topk_point(rng, shape, k, gap=1e-3):
    """Scores away from both kinds of kink: the k-th/(k+1)-th boundary of the
    top-k set and the sparsemax threshold of the top-k row."""
    out = np.empty(shape)
    flat = out.reshape(-1, shape[-1])
    for i in range(flat.shape[0]):
        while True:
            r = rng.standard_normal(shape[-1])
            srt = np.sort(r)[::-1]
            if k < r.size and srt[k - 1] - srt[k] < gap:
                continue
            p = ref_topk_sparsemax_row(r, k)
            top = srt[:k]
            j = int(np.argmax(p))
            tau = r[j] - p[j]
            if np.min(np.abs(top - tau)) >= gap:
                break
        flat[i] = r
    return out


@pytest.mark.parametrize("shape,k,axis", [((8,), 3, -1), ((4, 9), 2, -1), ((9, 4), 4, 0),
                                          ((3, 4, 70), 10, -1), ((5, 6), 1, -1), ((5, 6), 6, -1)])
def test_topk_sparsemax_vjp_against_finite_differences(xp, rng, shape, k, axis):
    moved = np.moveaxis(np.empty(shape), axis, -1).shape
    x = np.moveaxis(topk_point(rng, moved, k), -1, axis)

    def f(z):
        return topk_sparsemax(z, k, axis=axis)

    def vjp(z, u):
        return topk_sparsemax_vjp(f(z), u, axis=axis)

    def piece(z):
        zn = np.moveaxis(to_numpy(z), axis, -1)
        top = np.argsort(-zn, axis=-1, kind="stable")[..., :k]
        return (to_numpy(f(z)) == 0, np.sort(top, axis=-1))

    check_vjp(f, vjp, xp.asarray(x), piece=piece)


def test_topk_sparsemax_vjp_bad_grad(xp):
    p = topk_sparsemax(xp.asarray(np.array([0.3, 0.1, -0.2])), 2)
    with pytest.raises(ValueError, match="grad"):
        topk_sparsemax_vjp(p, xp.asarray(np.zeros(2)))


# ------------------------------------------------------------ kbest_bitvectors
def assert_kbest_matches(t, k, bits, scores):
    bits, scores = to_numpy(bits), to_numpy(scores)
    t = np.asarray(t)
    D = t.shape[-1]
    assert bits.dtype == bool and bits.shape == (k, D)
    assert scores.dtype == t.dtype and scores.shape == (k,)
    rbits, rscores, _, _ = brute_kbest(t, k)
    assert np.array_equal(bits, rbits), f"t={t.tolist()} k={k}\nours={bits.astype(int).tolist()}\n" \
                                        f"ref ={rbits.astype(int).tolist()}"
    scale = float(np.abs(t.astype(np.float64)).sum()) + 1
    tol = 4 * D * np.finfo(t.dtype).eps * scale
    for j in range(k):
        assert abs(float(scores[j]) - float(rscores[j])) <= tol
        assert abs(float(scores[j]) - float(exact_score(bits[j], t))) <= tol
    assert np.all(np.diff(scores) <= 0)


def kbest_inputs(rng, D, kind):
    if kind == "normal":
        return rng.standard_normal(D)
    if kind == "ints":                                   # ties everywhere
        return rng.integers(-3, 4, D).astype(float)
    if kind == "dyadic_repeats":                         # repeated |t_i|, zeros
        return rng.choice([-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0], D)
    if kind == "two_values":                             # all |t_i| equal
        return rng.choice([-2.0, 2.0], D)
    if kind == "zeros":
        t = np.zeros(D)
        t[rng.random(D) < 0.3] = 1.5
        return t
    raise ValueError(kind)


KINDS = ["normal", "ints", "dyadic_repeats", "two_values", "zeros"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [1, 2, 3, 4, 6, 8])
def test_kbest_against_brute_force(xp, rng, dtype, D):
    for kind in KINDS:
        for _ in range(4):
            t = kbest_inputs(rng, D, kind).astype(dtype)
            for k in sorted({1, 2, 3, D + 1, 2 ** D // 2 + 1, 2 ** D} & set(range(1, 2 ** D + 1))):
                bits, scores = kbest_bitvectors(xp.asarray(t), k)
                assert_kbest_matches(t, k, bits, scores)


@pytest.mark.parametrize("D", [10, 12])
def test_kbest_against_brute_force_large_D(xp, rng, D):
    for kind in KINDS:
        t = kbest_inputs(rng, D, kind)
        _, _, items, L = brute_kbest(t, 1)
        for k in (1, 5, 40, 300):
            bits, scores = kbest_bitvectors(xp.asarray(t), k)
            bits, scores = to_numpy(bits), to_numpy(scores)
            rbits = np.array([it[2] for it in items[:k]], dtype=bool)
            assert np.array_equal(bits, rbits), (kind, k, t.tolist())
            np.testing.assert_allclose(scores, [-it[0] / L for it in items[:k]], atol=1e-12)


def best_first_kbest(t, k):
    """The k best bit-vectors of a dyadic ``t`` by best-first search over flip sets.

    Independent of refimpl and of brute force, so it reaches D = 128: flipping
    bit i of z* = 1[t > 0] costs |t_i|, exactly an integer on t's dyadic grid.
    Flip sets are generated from the bits sorted by (|t_i|, i) -- rank r --
    with the two moves "append rank j+1" and "replace the last rank j by j+1";
    each set is reached once, and a child is never before its parent in the
    order (cost, Σ_{r ∈ F} 2^r), so a heap pops the sets in exactly that order:
    score descending, then the documented secondary key.
    Returns bits (k, D) bool and the exact scores (Fractions).
    """
    import heapq
    t = [float(x) for x in t]
    D = len(t)
    ints, L = exact_ints(t)
    order = sorted(range(D), key=lambda i: (abs(t[i]), i))
    cost = [abs(ints[i]) for i in order]                        # integers, ascending
    zstar = [x > 0 for x in t]
    best = sum(v for v, on in zip(ints, zstar) if on)
    heap = [(0, 0, ())]                                         # (cost, key, ranks flipped)
    bits, scores = [], []
    while heap and len(bits) < k:
        c, key, ranks = heapq.heappop(heap)
        z = list(zstar)
        for r in ranks:
            z[order[r]] = not z[order[r]]
        bits.append(z)
        scores.append(Fraction(best - c, L))
        last = ranks[-1] if ranks else -1
        if last + 1 < D:
            heapq.heappush(heap, (c + cost[last + 1], key + (1 << (last + 1)), ranks + (last + 1,)))
            if ranks:
                heapq.heappush(heap, (c - cost[last] + cost[last + 1],
                                      key - (1 << last) + (1 << (last + 1)), ranks[:-1] + (last + 1,)))
    return np.array(bits, dtype=bool), scores


def test_best_first_reference_equals_brute_force(rng):
    for D in (1, 3, 6, 9):
        for kind in KINDS:
            t = kbest_inputs(rng, D, kind)
            rbits, rscores, _, _ = brute_kbest(t, 2 ** D)
            bits, scores = best_first_kbest(t, 2 ** D)
            assert np.array_equal(bits, rbits) and scores == rscores, (kind, t.tolist())


def dyadic_t(rng, D, kind):
    """Dyadic scores with few bits (every score and cost exact in float32 too)."""
    if kind == "fine":
        return rng.integers(-512, 513, D) / 64                  # multiples of 1/64 in [-8, 8]
    if kind == "ties":
        return rng.integers(-3, 4, D) / 2                       # many equal |t_i| and zeros
    return kbest_inputs(rng, D, kind)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("D", [32, 128])
def test_kbest_at_paper_sizes_against_best_first_search(xp, rng, dtype, D):
    """The paper's D = 32 and 128, batched, against an independent exact search."""
    for kind in ("fine", "ties", "dyadic_repeats", "two_values", "zeros"):
        t = np.stack([dyadic_t(rng, D, kind) for _ in range(3)]).astype(dtype)
        assert np.array_equal(t.astype(np.float64), t.astype(dtype).astype(np.float64))
        for k in (1, 2, 10, 64, 300):
            bits, scores = kbest_bitvectors(xp.asarray(t), k)
            bits, scores = to_numpy(bits), to_numpy(scores)
            assert bits.shape == (3, k, D) and scores.shape == (3, k) and scores.dtype == dtype
            for b in range(3):
                rbits, rscores = best_first_kbest(t[b], k)
                assert np.array_equal(bits[b], rbits), (kind, k, b)
                assert scores[b].tolist() == [float(x) for x in rscores], (kind, k, b)   # exact


def test_kbest_negative_zero(xp):
    t = np.array([-0.0, 0.0, 0.5])
    bits, scores = kbest_bitvectors(xp.asarray(t), 8)
    assert_kbest_matches(t, 8, bits, scores)


@st.composite
def kbest_cases(draw):
    D = draw(st.integers(1, 7))
    elem = st.one_of(st.integers(-3, 3).map(float), st.sampled_from([-0.5, 0.5, 0.25, -0.25, 0.0]),
                     st.floats(-4, 4, allow_nan=False, allow_subnormal=False).map(
                         lambda x: round(x * 64) / 64))
    t = np.array(draw(st.lists(elem, min_size=D, max_size=D)))
    k = draw(st.integers(1, 2 ** D))
    dt = draw(st.sampled_from(DTYPES))
    return t.astype(dt), k


@HYP
@given(case=kbest_cases())
def test_hypothesis_kbest(xp, case):
    t, k = case
    bits, scores = kbest_bitvectors(xp.asarray(t), k)
    assert_kbest_matches(t, k, bits, scores)


NON_DYADIC_T = np.array([0.5, -0.3, 0.1, 0.2])


@pytest.mark.parametrize("dtype", DTYPES)
def test_kbest_non_dyadic_t_is_the_k_best_up_to_rounding(xp, rng, dtype):
    # [1,1,0,0] and [0,0,0,1] tie exactly at 0.2 for t = [0.5, -0.3, 0.1, 0.2],
    # but their costs 0.1 + 0.5 and 0.2 + 0.3 round differently: for such t the
    # documented order holds up to rounding (exact for dyadic t, tested above).
    cases = [NON_DYADIC_T] + [rng.uniform(-1, 1, D).round(1) for D in (4, 6, 8) for _ in range(5)]
    for t in cases:
        t = np.asarray(t, dtype=dtype)
        tol = 4 * t.size * np.finfo(dtype).eps * (float(np.abs(t).sum()) + 1)
        exact = sorted((float(exact_score(z, t)) for z in itertools.product((0, 1), repeat=t.size)),
                       reverse=True)
        for k in (1, 5, 9, 2 ** t.size):
            bits, scores = kbest_bitvectors(xp.asarray(t), k)
            ours = [float(exact_score(z, t)) for z in to_numpy(bits)]
            assert len({tuple(z) for z in to_numpy(bits).tolist()}) == k           # distinct
            assert all(a >= b - tol for a, b in zip(ours, ours[1:])), (t.tolist(), k)
            assert all(abs(a - b) <= tol for a, b in zip(ours, exact[:k])), (t.tolist(), k)
            assert np.all(np.diff(to_numpy(scores)) <= 0)


def test_kbest_batched_leading_dims(xp, rng):
    t = np.round(rng.standard_normal((3, 4, 5)) * 2) / 2
    bits, scores = kbest_bitvectors(xp.asarray(t), 7)
    bits, scores = to_numpy(bits), to_numpy(scores)
    assert bits.shape == (3, 4, 7, 5) and scores.shape == (3, 4, 7)
    for i in range(3):
        for j in range(4):
            assert_kbest_matches(t[i, j], 7, bits[i, j], scores[i, j])
    t32 = t.astype(np.float32)
    b32, s32 = kbest_bitvectors(xp.asarray(t32), 7)
    assert to_numpy(s32).dtype == np.float32
    np.testing.assert_array_equal(to_numpy(b32), bits)


def test_kbest_large_D_small_k(xp, rng):
    """D = 40: the k best only flip the k-1 smallest |t_i| (checked against a
    brute force over those bits, the other bits fixed at z*)."""
    D, k = 40, 6
    t = rng.standard_normal(D)
    bits, scores = kbest_bitvectors(xp.asarray(t), k)
    bits, scores = to_numpy(bits), to_numpy(scores)
    small = np.argsort(np.abs(t), kind="stable")[: k - 1]
    sub_bits, _, _, _ = brute_kbest(t[small], k)
    zstar = t > 0
    expected = np.tile(zstar, (k, 1))
    expected[:, small] = sub_bits
    np.testing.assert_array_equal(bits, expected)
    np.testing.assert_allclose(scores, expected.astype(float) @ t, atol=1e-12)


# --------------------------------------------- structured top-k == full sparsemax
def test_structured_topk_certificate_against_enumeration(xp, rng):
    """When sparsemax of the k best scores has support < k, it equals the full
    sparsemax over all 2^D scores."""
    hits = 0
    for trial in range(60):
        D = int(rng.integers(2, 9))
        k = int(rng.integers(2, 20))
        k = min(k, 2 ** D)
        t = rng.standard_normal(D) * rng.choice([0.3, 1.0, 3.0])
        if trial % 4 == 0:
            t = np.round(t * 2) / 2                         # ties
        bits, scores = kbest_bitvectors(xp.asarray(t), k)
        probs = sparsemax(scores)
        bits, probs = to_numpy(bits), to_numpy(probs)
        if (probs > 0).sum() >= k:
            continue
        hits += 1
        # (1) refimpl's enumeration scores + an exact sparsemax written here
        all_scores = bitvector_scores(t)
        reference = np.array([float(v) for v in exact_sparsemax_row(all_scores)])
        check_against_enumeration(t, bits, probs, reference, atol=1e-12)
        # (2) fully independent: exact scores of every vector, exact sparsemax, dict compare
        vecs = list(itertools.product((0, 1), repeat=D))
        exact_all = exact_sparsemax_row([exact_score(z, t) for z in vecs])
        ref = {z: float(p) for z, p in zip(vecs, exact_all) if p > 0}
        ours = {}
        for b, p in zip(bits, probs):
            if p > 0:
                ours[tuple(int(v) for v in b)] = float(p)
        assert ours.keys() == ref.keys(), (t.tolist(), k)
        for z in ref:
            assert abs(ours[z] - ref[z]) <= 1e-12
    assert hits >= 30


def test_check_against_enumeration_catches_wrong_structured_topk(rng):
    """Sanity of the certificate check: with support == k the truncated
    distribution may differ from the full one, and a perturbed one must fail."""
    t = np.array([0.05, -0.02, 0.03, 0.01])
    bits, scores = kbest_bitvectors(t, 2)
    probs = sparsemax(scores)
    reference = np.array([float(v) for v in exact_sparsemax_row(bitvector_scores(t))])
    assert (probs > 0).sum() == 2
    with pytest.raises(AssertionError, match="bit-vector"):
        check_against_enumeration(t, bits, probs, reference, atol=1e-12)


# ------------------------------------------------- structured top-k chain VJP
def test_structured_topk_chain_vjp(xp, rng):
    """t -> kbest_bitvectors -> sparsemax over the k scores -> sum_j pi_j l(z_j),
    with the VJP  sum_j (J_sparsemax^T dL/dpi)_j a_{z_j}; the piece signature
    is (support, identity of the k best vectors)."""
    qualified = total = 0
    for D, k in [(3, 4), (5, 6), (8, 10), (12, 16)]:
        table = rng.standard_normal(2 ** D)
        weights = 1 << np.arange(D)

        def run(t):
            bits, scores = kbest_bitvectors(t, k)
            return bits, sparsemax(scores)

        def loss_vals(bits):
            return xp.asarray(table[to_numpy(bits).astype(np.int64) @ weights])

        def f(t):
            bits, probs = run(t)
            return xp.sum(probs * loss_vals(bits), axis=-1, keepdims=True)

        def vjp(t, u):
            bits, probs = run(t)
            g = sparsemax_vjp(probs, u * loss_vals(bits))
            return xp.sum(g[:, None] * bits.astype(t.dtype), axis=0)

        def piece(t):
            bits, probs = run(t)
            return (to_numpy(probs) == 0, to_numpy(bits))

        for _ in range(15):
            t = xp.asarray(rng.standard_normal(D) * rng.choice([0.2, 1.0]))
            total += 1
            qualified += qualifies(f, vjp, t, piece)
    assert qualified >= 0.6 * total, f"only {qualified}/{total} points away from a kink"


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("k,exc,match", [
    (0, ValueError, "k"), (-2, ValueError, "k"), (9, ValueError, "k"), (2 ** 10, ValueError, "k"),
    (2.0, TypeError, "k"), (2.5, TypeError, "k"), ("3", TypeError, "k"), (True, TypeError, "k"),
    (None, TypeError, "k"),
])
def test_kbest_bad_k(xp, k, exc, match):
    with pytest.raises(exc, match=match):
        kbest_bitvectors(xp.asarray(np.zeros(3)), k)


def test_kbest_k_equal_2_pow_D_is_fine_and_numpy_int_k(xp):
    bits, _ = kbest_bitvectors(xp.asarray(np.array([0.5, -1.0, 2.0])), np.int64(8))
    assert len({tuple(b) for b in to_numpy(bits).tolist()}) == 8


@pytest.mark.parametrize("bad,exc,match", [
    (np.array([1.0, np.nan]), ValueError, "t"),
    (np.array([1.0, np.inf]), ValueError, "t"),
    (np.array([1.0, -np.inf]), ValueError, "t"),
    (np.array([1, 2]), TypeError, "t"),
    (np.zeros(0), ValueError, "t"),
    (np.array(1.0), ValueError, "t"),
])
def test_kbest_bad_t(xp, bad, exc, match):
    with pytest.raises(exc, match=match):
        kbest_bitvectors(xp.asarray(bad), 1)


@pytest.mark.parametrize("k,exc", [(0, ValueError), (-1, ValueError), (1.0, TypeError),
                                   (True, TypeError), ("2", TypeError)])
def test_topk_bad_k(xp, k, exc):
    with pytest.raises(exc, match="k"):
        topk_sparsemax(xp.asarray(np.zeros(3)), k)


@pytest.mark.parametrize("bad,exc,match", [
    (np.array([1.0, np.nan]), ValueError, "scores"),
    (np.array([1.0, np.inf]), ValueError, "scores"),
    (np.array([-np.inf, -np.inf]), ValueError, "-inf"),
    (np.array([1, 2]), TypeError, "scores"),
    (np.zeros(0), ValueError, "scores"),
    (np.array(1.0), ValueError, "scores"),
])
def test_topk_bad_scores(xp, bad, exc, match):
    with pytest.raises(exc, match=match):
        topk_sparsemax(xp.asarray(bad), 1)


def test_topk_bad_axis(xp):
    with pytest.raises(ValueError, match="axis"):
        topk_sparsemax(xp.asarray(np.zeros((2, 3))), 1, axis=2)


# ------------------------------------------------------------ purity
def test_inputs_not_modified(xp, rng):
    for dtype in DTYPES:
        s = xp.asarray(rng.standard_normal((4, 6)).astype(dtype))
        keep = to_numpy(s).copy()
        p = topk_sparsemax(s, 3)
        assert to_numpy(p).dtype == dtype
        np.testing.assert_array_equal(to_numpy(s), keep)
        g = xp.asarray(rng.standard_normal((4, 6)).astype(dtype))
        gk, pk = to_numpy(g).copy(), to_numpy(p).copy()
        assert to_numpy(topk_sparsemax_vjp(p, g)).dtype == dtype
        np.testing.assert_array_equal(to_numpy(g), gk)
        np.testing.assert_array_equal(to_numpy(p), pk)
        t = xp.asarray(rng.standard_normal((3, 5)).astype(dtype))
        tk = to_numpy(t).copy()
        kbest_bitvectors(t, 4)
        np.testing.assert_array_equal(to_numpy(t), tk)
