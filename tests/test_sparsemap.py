"""SparseMAP (batched active set) and its VJP against independent references.

* marginals: ``clip(t, 0, 1)`` for ``bitvector_oracle``; for ``budget_oracle(B)``
  the projection onto ``{μ ∈ [0,1]^D, Σμ <= B}`` by bisection on the multiplier;
* objective ``||μ - t||²``: the QP ``min_{ξ ∈ Δ} ||A ξ - t||²`` over all (feasible)
  2^D vertices solved with ``scipy.optimize.nnls`` (penalised sum constraint,
  then polished on its support), plus a brute-force KKT certificate over every
  vertex;
* structure of the result (weights, support, vertices, padding, batching,
  dtypes, leading dims), the oracles against brute force;
* ``sparsemap_vjp`` against central differences of ``Σ_z ξ_z ℓ(z)`` end to end,
  with the piece signature = the support vertices.
"""
import itertools

import numpy as np
import pytest
import scipy.optimize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refimpl import (SparseMAPResult, bitvector_oracle, budget_oracle, sparsemap,
                     sparsemap_vjp)
from refimpl.backend import to_numpy

from _references import qualifies


# ------------------------------------------------------------ references
def all_vertices(D, budget=None):
    """Every z ∈ {0,1}^D (with Σz <= budget), rows; written here (itertools)."""
    V = np.array(list(itertools.product((0.0, 1.0), repeat=D))).reshape(-1, D)
    if budget is not None:
        V = V[V.sum(1) <= budget]
    return V


def index_of(V):
    """Integer index of 0/1 rows (bit i worth 2^i)."""
    V = np.asarray(V) > 0.5
    return (V.astype(np.int64) << np.arange(V.shape[-1])).sum(-1)


def project_budget(t, B):
    """Projection of t onto {μ ∈ [0,1]^D, Σμ <= B}: μ = clip(t - λ, 0, 1), λ >= 0
    the smallest multiplier with Σμ <= B (bisection to machine precision)."""
    t = np.asarray(t, dtype=np.float64)
    mu = np.clip(t, 0, 1)
    if mu.sum() <= B:
        return mu
    lo, hi = 0.0, float(t.max())                       # Σ clip(t - max t) = 0 <= B
    for _ in range(200):
        mid = (lo + hi) / 2
        if np.clip(t - mid, 0, 1).sum() > B:
            lo = mid
        else:
            hi = mid
    return np.clip(t - hi, 0, 1)


def qp_optimum(t, V):
    """min_{ξ ∈ Δ} ||Vᵀ ξ - t||² by scipy NNLS: the sum-to-one constraint as a
    heavily weighted extra row, then re-solved exactly on the NNLS support
    (equality-constrained least squares); returns the best feasible value."""
    t = np.asarray(t, dtype=np.float64)
    A = V.T                                              # (D, n)
    n = A.shape[1]
    w = 1e4
    M = np.vstack([A, w * np.ones((1, n))])
    xi, _ = scipy.optimize.nnls(M, np.concatenate([t, [w]]), maxiter=50 * n)
    candidates = [xi / xi.sum()]
    S = np.flatnonzero(xi > 0)
    # KKT of min ||A_S x - t||² s.t. 1ᵀx = 1
    AS = A[:, S]
    K = np.block([[2 * AS.T @ AS, np.ones((len(S), 1))], [np.ones((1, len(S))), np.zeros((1, 1))]])
    sol = np.linalg.lstsq(K, np.concatenate([2 * AS.T @ t, [1.0]]), rcond=None)[0]
    x = np.zeros(n)
    x[S] = sol[: len(S)]
    if np.all(x >= -1e-12) and abs(x.sum() - 1) < 1e-12:
        candidates.append(np.maximum(x, 0) / np.maximum(x, 0).sum())
    return min(float(np.sum((A @ c - t) ** 2)) for c in candidates)


def oracle_for(kind, D):
    return bitvector_oracle if kind == "bitvector" else budget_oracle(max(0, D // 2))


def reference_marginals(kind, t, D):
    return np.clip(t, 0, 1) if kind == "bitvector" else project_budget(t, max(0, D // 2))


def random_t(rng, D, kind):
    if kind == "uniform":
        return rng.uniform(-0.5, 1.5, D)
    if kind == "inside":
        return rng.uniform(0, 1, D)
    if kind == "normal":
        return rng.standard_normal(D) * 2
    if kind == "halves":                                 # degenerate: 0, 1/2, 1, ties
        return rng.integers(-2, 5, D) / 2.0
    if kind == "corners":
        return rng.choice([0.0, 1.0, 0.5, 0.25], D)
    raise ValueError(kind)


T_KINDS = ["uniform", "inside", "normal", "halves", "corners"]
# sparsemap stops when the best violation <= tol (1 + ||t||_inf) with tol = 1e-9:
# marginals are then accurate to a few 1e-10 (observed up to 5e-10 at D = 20).
MU_ATOL = 1e-8


def check_structure(res, t, D, budget=None, atol=1e-12):
    """Weights a distribution over distinct feasible 0/1 vertices, support first,
    padding rows zero, marginals = Σ weights·vertices; returns numpy copies."""
    V, w, mu = (to_numpy(a) for a in (res.vertices, res.weights, res.marginals))
    assert V.shape[-1] == D and V.shape[:-1] == w.shape and mu.shape[-1] == D
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1, atol=atol * D)
    assert np.all((V == 0) | (V == 1))
    Vf, wf = V.reshape(-1, *V.shape[-2:]), w.reshape(-1, w.shape[-1])
    for Vi, wi in zip(Vf, wf):
        n = int((wi > 0).sum())
        assert 1 <= n <= D + 1
        assert np.all(wi[:n] > 0) and np.all(wi[n:] == 0), "support rows must come first"
        assert np.all(Vi[n:] == 0), "padding rows must be zero"
        assert len({tuple(r) for r in Vi[:n].tolist()}) == n, "duplicate support vertices"
        if budget is not None:
            assert np.all(Vi[:n].sum(-1) <= budget)
    np.testing.assert_allclose(np.einsum("...s,...sd->...d", w.astype(np.float64), V), mu,
                               atol=atol * D)
    s = to_numpy(res.support)
    np.testing.assert_array_equal(s, w > 0)
    return V, w, mu


# ------------------------------------------------------------ oracles
def test_bitvector_oracle_against_brute_force(xp, rng):
    for D in (1, 3, 6):
        V = all_vertices(D)
        for _ in range(30):
            t = np.round(rng.standard_normal(D), 1)
            z = to_numpy(bitvector_oracle(xp.asarray(t)))
            assert z.dtype == t.dtype
            assert np.isclose(z @ t, (V @ t).max())
            np.testing.assert_array_equal(z, (t > 0).astype(float))   # ties (t_i = 0) off


def test_budget_oracle_against_brute_force(xp, rng):
    for D in (1, 3, 6):
        for B in range(0, D + 2):
            V = all_vertices(D, B)
            oracle = budget_oracle(B)
            for _ in range(15):
                t = np.round(rng.standard_normal((2, D)), 1)
                z = to_numpy(oracle(xp.asarray(t)))
                assert z.shape == t.shape and np.all(z.sum(-1) <= B)
                for i in range(2):
                    assert np.isclose(z[i] @ t[i], (V @ t[i]).max())
                    # documented ties: equal scores go to the lower index
                    order = sorted(range(D), key=lambda j: (-t[i, j], j))
                    expected = np.zeros(D)
                    for j in order[:B]:
                        if t[i, j] > 0:
                            expected[j] = 1
                    np.testing.assert_array_equal(z[i], expected)


@pytest.mark.parametrize("B", [-1, 1.5, "2", None, True])
def test_budget_oracle_bad_budget(B):
    with pytest.raises((ValueError, TypeError), match="budget"):
        budget_oracle(B)


# ------------------------------------------------------------ marginals
@pytest.mark.parametrize("D", [1, 2, 3, 5, 8, 13, 20])
def test_bitvector_marginals_are_clip(xp, rng, D):
    for kind in T_KINDS:
        T = np.stack([random_t(rng, D, kind) for _ in range(6)])
        res = sparsemap(xp.asarray(T), bitvector_oracle)
        _, _, mu = check_structure(res, T, D)
        np.testing.assert_allclose(mu, np.clip(T, 0, 1), atol=MU_ATOL)


@pytest.mark.parametrize("D", [1, 2, 4, 7, 12, 20])
def test_budget_marginals_are_projection(xp, rng, D):
    for B in sorted({0, 1, D // 2, D - 1, D, D + 2} - {-1}):
        if B < 0:
            continue
        for kind in T_KINDS:
            T = np.stack([random_t(rng, D, kind) for _ in range(4)])
            res = sparsemap(xp.asarray(T), budget_oracle(B))
            _, _, mu = check_structure(res, T, D, budget=B)
            ref = np.stack([project_budget(t, B) for t in T])
            np.testing.assert_allclose(mu, ref, atol=MU_ATOL, err_msg=f"B={B} kind={kind}")


def test_budget_projection_reference_self_check():
    """The bisection reference on hand cases (KKT: λ > 0 only if Σμ = B)."""
    lam = (0.9 + 0.8 + 0.7 - 1) / 3                       # all three stay inside (0, 1)
    np.testing.assert_allclose(project_budget([0.9, 0.8, 0.7], 1), [0.9 - lam, 0.8 - lam, 0.7 - lam],
                               atol=1e-12)
    np.testing.assert_allclose(project_budget([2.0, 2.0, -1.0], 1), [0.5, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(project_budget([3.0, 0.2, 0.1], 1), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(project_budget([0.2, 0.3], 1), [0.2, 0.3])


def test_qp_reference_self_check(rng):
    """The scipy QP reference against the closed forms (no refimpl involved)."""
    for D in (1, 3, 6):
        for _ in range(5):
            t = rng.uniform(-0.5, 1.5, D)
            assert abs(qp_optimum(t, all_vertices(D)) - np.sum((np.clip(t, 0, 1) - t) ** 2)) <= 1e-9
            B = D // 2
            assert abs(qp_optimum(t, all_vertices(D, B)) - np.sum((project_budget(t, B) - t) ** 2)) <= 1e-9


@st.composite
def sparsemap_cases(draw):
    D = draw(st.integers(1, 7))
    elem = st.one_of(st.integers(-4, 8).map(lambda i: i / 4),
                     st.floats(-2, 3, allow_nan=False, allow_subnormal=False))
    t = np.array(draw(st.lists(elem, min_size=D, max_size=D)))
    B = draw(st.one_of(st.none(), st.integers(0, D + 1)))
    return t, B


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=sparsemap_cases())
def test_hypothesis_marginals_and_structure(xp, case):
    t, B = case
    D = t.size
    oracle = bitvector_oracle if B is None else budget_oracle(B)
    res = sparsemap(xp.asarray(t), oracle)
    _, _, mu = check_structure(res, t, D, budget=B)
    ref = np.clip(t, 0, 1) if B is None else project_budget(t, B)
    np.testing.assert_allclose(mu, ref, atol=MU_ATOL)


# ------------------------------------------------------------ objective vs QP
@pytest.mark.parametrize("kind", ["bitvector", "budget"])
@pytest.mark.parametrize("D", [1, 2, 3, 5, 8])
def test_objective_equals_qp_optimum(xp, rng, kind, D):
    budget = D // 2 if kind == "budget" else None
    V = all_vertices(D, budget)
    n_points = 4 if D == 8 else 8
    for j in range(n_points):
        t = random_t(rng, D, T_KINDS[j % len(T_KINDS)])
        res = sparsemap(xp.asarray(t), oracle_for(kind, D))
        Vr, w, mu = check_structure(res, t, D, budget)
        ours = float(np.sum((w @ Vr - t) ** 2))
        assert abs(float(np.sum((mu - t) ** 2)) - ours) <= 1e-12
        qp = qp_optimum(t, V)
        assert abs(ours - qp) <= 1e-7, f"ours {ours!r} vs scipy QP {qp!r} (t={t.tolist()})"
        ref_mu = reference_marginals(kind, t, D)
        assert abs(ours - float(np.sum((ref_mu - t) ** 2))) <= 1e-8


@pytest.mark.parametrize("kind", ["bitvector", "budget"])
def test_kkt_certificate_over_all_vertices(xp, rng, kind):
    """Optimality of ξ: <a_z, t - μ> <= τ for every feasible vertex, with
    equality (= τ) on the support (brute force over 2^D)."""
    for D in (2, 4, 6, 9):
        budget = D // 2 if kind == "budget" else None
        V = all_vertices(D, budget)
        T = np.stack([random_t(rng, D, k) for k in T_KINDS])
        res = sparsemap(xp.asarray(T), oracle_for(kind, D))
        Vr, w, mu = check_structure(res, T, D, budget)
        for i, t in enumerate(T):
            r = t - mu[i]
            sup = Vr[i][w[i] > 0]
            vals = sup @ r
            tau = vals.mean()
            np.testing.assert_allclose(vals, tau, atol=MU_ATOL)
            assert (V @ r).max() <= tau + MU_ATOL


# ------------------------------------------------------------ batching, dtypes
@pytest.mark.parametrize("kind", ["bitvector", "budget"])
def test_batched_equals_per_example(xp, rng, kind):
    for D in (3, 7, 12):
        T = np.stack([random_t(rng, D, T_KINDS[i % len(T_KINDS)]) for i in range(10)])
        T[:3, : D // 2] = rng.choice([-1.0, 2.0], (3, D // 2))    # rows with small supports
        oracle = oracle_for(kind, D)
        res = sparsemap(xp.asarray(T), oracle)
        Vb, wb, mub = check_structure(res, T, D, D // 2 if kind == "budget" else None)
        for i in range(len(T)):
            one = sparsemap(xp.asarray(T[i]), oracle)
            V1, w1, mu1 = (to_numpy(a) for a in (one.vertices, one.weights, one.marginals))
            a = {tuple(v): x for v, x in zip(V1.tolist(), w1.tolist()) if x > 0}
            b = {tuple(v): x for v, x in zip(Vb[i].tolist(), wb[i].tolist()) if x > 0}
            assert a.keys() == b.keys()
            for z in a:
                assert abs(a[z] - b[z]) <= 1e-10
            np.testing.assert_allclose(mu1, mub[i], atol=1e-12)


def test_padding_rows_have_zero_weight(xp):
    T = np.array([[2.0, -1.0, 3.0, -2.0],            # one vertex
                  [0.3, 0.6, 0.2, 0.9]])             # needs several
    res = sparsemap(xp.asarray(T), bitvector_oracle)
    V, w, mu = check_structure(res, T, 4)
    assert (w[0] > 0).sum() == 1 and (w[1] > 0).sum() >= 3
    np.testing.assert_array_equal(V[0, 0], [1, 0, 1, 0])
    assert w[0, 0] == 1


def test_leading_batch_dims(xp, rng):
    D = 5
    T = rng.uniform(-0.5, 1.5, (3, 4, D))
    for kind in ("bitvector", "budget"):
        res = sparsemap(xp.asarray(T), oracle_for(kind, D))
        V, w, mu = check_structure(res, T, D, D // 2 if kind == "budget" else None)
        assert V.shape[:2] == (3, 4) and w.shape[:2] == (3, 4) and mu.shape == (3, 4, D)
        ref = np.stack([[reference_marginals(kind, T[i, j], D) for j in range(4)] for i in range(3)])
        np.testing.assert_allclose(mu, ref, atol=MU_ATOL)
        assert isinstance(res, SparseMAPResult) and int(res.n_iter) >= 1
        g = xp.asarray(rng.standard_normal(w.shape))
        assert to_numpy(sparsemap_vjp(res, g)).shape == (3, 4, D)


def test_single_example_shapes(xp):
    res = sparsemap(xp.asarray(np.array([0.3, 0.7, 1.5, -0.2])), bitvector_oracle)
    V, w, mu = check_structure(res, None, 4)
    assert V.ndim == 2 and w.ndim == 1 and mu.shape == (4,)
    np.testing.assert_allclose(mu, [0.3, 0.7, 1.0, 0.0], atol=1e-12)


@pytest.mark.parametrize("kind", ["bitvector", "budget"])
def test_float32_in_float32_out(xp, rng, kind):
    D = 6
    T = rng.uniform(-0.5, 1.5, (5, D)).astype(np.float32)
    res = sparsemap(xp.asarray(T), oracle_for(kind, D))
    for a in (res.vertices, res.weights, res.marginals):
        assert to_numpy(a).dtype == np.float32
    V, w, mu = check_structure(res, T, D, D // 2 if kind == "budget" else None, atol=1e-6)
    ref = np.stack([reference_marginals(kind, t.astype(np.float64), D) for t in T])
    np.testing.assert_allclose(mu, ref, atol=1e-6)
    g = sparsemap_vjp(res, xp.asarray(rng.standard_normal(w.shape).astype(np.float32)))
    assert to_numpy(g).dtype == np.float32


# ------------------------------------------------------------ VJP
def sparsemap_loss_fns(xp, oracle, table):
    """f(t) = Σ_z ξ_z ℓ(z) with ℓ a lookup table keyed by the vertex index;
    its VJP via sparsemap_vjp; the piece = sorted support vertex indices."""
    def run(t):
        res = sparsemap(t, oracle)
        idx = index_of(to_numpy(res.vertices))
        return res, xp.asarray(table[idx])

    def f(t):
        res, ell = run(t)
        return xp.sum(res.weights * ell, axis=-1, keepdims=True)

    def vjp(t, u):
        res, ell = run(t)
        return sparsemap_vjp(res, u * ell)

    def piece(t):
        res = sparsemap(t, oracle)
        w = to_numpy(res.weights)
        return tuple(sorted(index_of(to_numpy(res.vertices)[w > 0]).tolist()))

    return f, vjp, piece


@pytest.mark.parametrize("kind", ["bitvector", "budget"])
@pytest.mark.parametrize("D", [3, 5, 8])
def test_sparsemap_vjp_against_finite_differences(xp, rng, kind, D):
    table = rng.standard_normal(2 ** D)
    # ℓ(z) = <w, z> + c (number of ones)² as a lookup table, plus noise
    z = all_vertices(D)
    table = z @ rng.standard_normal(D) + 0.7 * z.sum(1) ** 2 + 0.3 * table
    f, vjp, piece = sparsemap_loss_fns(xp, oracle_for(kind, D), table)
    total = 40
    qualified = sum(qualifies(f, vjp, xp.asarray(rng.uniform(-0.5, 1.5, D)), piece)
                    for _ in range(total))
    assert qualified >= 0.6 * total, f"only {qualified}/{total} random points qualified"


def test_sparsemap_vjp_batched_matches_per_example(xp, rng):
    D = 4
    T = rng.uniform(-0.5, 1.5, (6, D))
    res = sparsemap(xp.asarray(T), bitvector_oracle)
    G = rng.standard_normal(to_numpy(res.weights).shape)
    G[to_numpy(res.weights) == 0] = 1e6                     # padding entries are ignored
    gb = to_numpy(sparsemap_vjp(res, xp.asarray(G)))
    for i in range(6):
        one = SparseMAPResult(vertices=res.vertices[i], weights=res.weights[i],
                              marginals=res.marginals[i], n_iter=res.n_iter)
        np.testing.assert_allclose(to_numpy(sparsemap_vjp(one, xp.asarray(G[i]))), gb[i], atol=1e-10)


def test_sparsemap_vjp_independent_formula(xp, rng):
    """A_S Q g_S with Q = G⁻¹ - G⁻¹11ᵀG⁻¹/(1ᵀG⁻¹1), computed here with explicit
    inverses, wherever the Gram matrix of the support is invertible."""
    checked = 0
    for _ in range(40):
        D = int(rng.integers(2, 7))
        t = rng.uniform(-0.5, 1.5, D)
        res = sparsemap(xp.asarray(t), bitvector_oracle)
        V, w = to_numpy(res.vertices), to_numpy(res.weights)
        A = V[w > 0].T
        G = A.T @ A
        if np.linalg.cond(G) > 1e8:
            continue
        g = rng.standard_normal(w.shape)
        Gi = np.linalg.inv(G)
        one = np.ones(len(G))
        Q = Gi - np.outer(Gi @ one, one @ Gi) / (one @ Gi @ one)
        expected = A @ Q @ g[w > 0]
        np.testing.assert_allclose(to_numpy(sparsemap_vjp(res, xp.asarray(g))), expected, atol=1e-10)
        checked += 1
    assert checked >= 10


def qualifying_fraction(xp, rng, oracle, D, n_points):
    table = rng.standard_normal(2 ** D)
    f, vjp, piece = sparsemap_loss_fns(xp, oracle, table)
    qualified = sum(qualifies(f, vjp, xp.asarray(rng.uniform(-0.5, 1.5, D)), piece)
                    for _ in range(n_points))
    return qualified / n_points


def test_bitvector_support_locally_constant_at_random_points(xp, rng):
    """Regression: the active-set path must not be decided by rounding noise
    (residual entries that are 0 in exact arithmetic are ±1e-16 in floating
    point; ``1[r > 0]`` used to pick a vertex by their sign, and about half of
    the random points at D = 8-12 changed support within ±1e-6)."""
    for D in (8, 12):
        frac = qualifying_fraction(xp, rng, bitvector_oracle, D, 30)
        assert frac >= 0.9, f"D={D}: only {frac:.0%} of random points keep their support within ±eps"


def test_bitvector_minimal_reproducer_noise_does_not_decide_support(xp):
    """Regression: t and t + 1e-13 d used to give different SparseMAP
    distributions ({111: .1824, 110: .2536, 010: .4827, 100: .0813} vs
    {111: .1824, 110: .3349, 010: .4014, 000: .0813})."""
    t = np.array([0.5173, 0.9187000000000001, 0.1824])
    d = np.array([-5.369532353602852e-14, 5.811181041963531e-14, 3.645723961860758e-14])
    assert_same_distribution(xp, bitvector_oracle, t, t + d)


def assert_same_distribution(xp, oracle, t1, t2, atol=1e-9):
    def dist(x):
        res = sparsemap(xp.asarray(x), oracle)
        V, w = to_numpy(res.vertices), to_numpy(res.weights)
        return {tuple(v): x for v, x in zip(V.astype(int).tolist(), w.tolist()) if x > 0}

    a, b = dist(t1), dist(t2)
    assert a.keys() == b.keys(), f"{a} != {b}"
    for z in a:
        assert abs(a[z] - b[z]) <= atol


def test_budget_support_locally_constant_at_random_points(xp, rng):
    for D in (12, 16):
        frac = qualifying_fraction(xp, rng, budget_oracle(D // 2), D, 30)
        assert frac >= 0.9, f"D={D}: only {frac:.0%} of random points keep their support within ±eps"


def test_budget_minimal_reproducer_noise_does_not_decide_support(xp):
    t = np.array([0.5235, 0.6387, 1.0913, 0.5276, 1.2597])
    d = np.array([6.142219559433554e-13, -6.390117658662915e-13, -1.3364608285276735e-12,
                  8.422431372812634e-13, -2.091837592449685e-12])
    assert_same_distribution(xp, budget_oracle(2), t, t + d)


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("bad,exc", [
    (np.array([0.5, np.nan]), ValueError), (np.array([0.5, np.inf]), ValueError),
    (np.array([0.5, -np.inf]), ValueError), (np.array([1, 2]), TypeError),
    (np.zeros(0), ValueError), (np.zeros((3, 0)), ValueError), (np.array(0.5), ValueError),
])
def test_sparsemap_bad_t(xp, bad, exc):
    with pytest.raises(exc, match="t"):
        sparsemap(xp.asarray(bad), bitvector_oracle)


def test_sparsemap_max_iter(xp):
    t = xp.asarray(np.array([[0.3, 0.6, 0.2], [2.0, -1.0, 3.0]]))
    with pytest.raises(RuntimeError, match=r"max_iter=1 .*1 rows left \(batch rows \[0\]\)"):
        sparsemap(t, bitvector_oracle, max_iter=1,
                  init=xp.asarray(np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])))


def test_sparsemap_vjp_bad_grad(xp):
    res = sparsemap(xp.asarray(np.array([[0.3, 0.6], [0.1, 0.2]])), bitvector_oracle)
    S = to_numpy(res.weights).shape[-1]
    with pytest.raises(ValueError, match="grad_weights"):
        sparsemap_vjp(res, xp.asarray(np.zeros((2, S + 1))))
    with pytest.raises(ValueError, match="grad_weights"):
        sparsemap_vjp(res, xp.asarray(np.zeros(S)))
    with pytest.raises(TypeError, match="grad_weights"):
        sparsemap_vjp(res, xp.asarray(np.zeros((2, S), dtype=np.int64)))


# ------------------------------------------------------------ purity
def test_inputs_not_modified(xp, rng):
    for dtype in (np.float32, np.float64):
        for kind in ("bitvector", "budget"):
            t = xp.asarray(rng.uniform(-0.5, 1.5, (4, 6)).astype(dtype))
            keep = to_numpy(t).copy()
            res = sparsemap(t, oracle_for(kind, 6))
            np.testing.assert_array_equal(to_numpy(t), keep)
            saved = [to_numpy(a).copy() for a in (res.vertices, res.weights, res.marginals)]
            g = xp.asarray(rng.standard_normal(saved[1].shape).astype(dtype))
            gk = to_numpy(g).copy()
            sparsemap_vjp(res, g)
            np.testing.assert_array_equal(to_numpy(g), gk)
            for a, b in zip((res.vertices, res.weights, res.marginals), saved):
                np.testing.assert_array_equal(to_numpy(a), b)
            o = xp.asarray(rng.standard_normal((3, 6)).astype(dtype))
            ok = to_numpy(o).copy()
            oracle_for(kind, 6)(o)
            np.testing.assert_array_equal(to_numpy(o), ok)
