"""SparseMAP at the paper's sizes: the support spans the minimal face, the VJP
is the exact derivative there, exact at every magnitude, deterministic.

Independent references: ``clip(t, 0, 1)``; the capped-simplex projection by
bisection (``project_budget`` in test_sparsemap); the exact Jacobian of the
projection (the free-coordinate mask, less the mean over the free set where
the budget binds); exact ranks of integer matrices; the restricted problem
``min_{ξ ∈ Δ} ||A_S ξ - t||²`` with S fixed, solved by scipy's least squares
on the null space of ``1ᵀ``.
"""
import numpy as np
import pytest
import scipy.linalg

from refimpl import bitvector_oracle, budget_oracle, sparsemap, sparsemap_vjp
from refimpl.backend import to_numpy

from test_sparsemap import project_budget


def _scores(rng, kind, n, D):
    if kind == "normal":
        return rng.standard_normal((n, D))
    if kind == "normal+.5":
        return rng.standard_normal((n, D)) + 0.5
    if kind == "onehot":                          # the bit-VAE's t' = (x + 1) / 2
        return (rng.standard_normal((n, D)) + 1) / 2
    raise ValueError(kind)


def _oracle(poly, D):
    return bitvector_oracle if poly == "bits" else budget_oracle(D // 2)


def _reference(poly, T):
    if poly == "bits":
        return np.clip(T, 0, 1)
    return np.stack([project_budget(t, T.shape[1] // 2) for t in T])


def exact_marginal_vjp(poly, T, mu, G):
    """Jᵀg of the projection: g on the free set F; where the budget binds
    (Σμ = B with F nonempty), g minus its mean over F."""
    free = (mu > 0) & (mu < 1)
    out = np.where(free, G, 0.0)
    if poly == "budget":
        B = T.shape[1] // 2
        binds = np.clip(T, 0, 1).sum(1) > B
        for i in np.flatnonzero(binds & free.any(1)):
            out[i, free[i]] -= G[i, free[i]].mean()
    return out


def marginal_vjp(res, G, xp):
    """VJP of the marginals through the weights: ∂<g, μ>/∂ξ_s = <g, a_s>."""
    gw = xp.einsum("nsd,nd->ns", res.vertices, xp.asarray(G))
    return to_numpy(sparsemap_vjp(res, gw))


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("poly", ["bits", "budget"])
@pytest.mark.parametrize("kind", ["normal", "normal+.5", "onehot"])
def test_spans_face_and_exact_jacobian(xp, rng, D, poly, kind):
    n = 24 if D == 256 else 48
    T = _scores(rng, kind, n, D)
    res = sparsemap(xp.asarray(T), _oracle(poly, D))
    mu = to_numpy(res.marginals)
    ref = _reference(poly, T)
    assert np.abs(mu - ref).max() <= 1e-10
    spans = to_numpy(res.spans_face)
    assert spans.shape == (n,) and spans.dtype == bool
    assert spans.mean() >= 0.99, f"spans_face on {spans.mean():.0%} of rows"
    G = rng.standard_normal((n, D))
    got = marginal_vjp(res, G, xp)
    want = exact_marginal_vjp(poly, T, ref, G)
    err = np.abs(got - want).max(1)
    assert err[spans].max() <= 1e-9, f"marginal VJP off by {err[spans].max():.2e} on spanning rows"


def test_spans_face_matches_exact_rank(xp, rng):
    """spans_face against exact integer ranks and the face dimension from t."""
    for poly in ("bits", "budget"):
        D = 24
        T = _scores(rng, "onehot", 20, D)
        T[:4, :6] = 0.5                                           # ties: a lower-dim support
        res = sparsemap(xp.asarray(T), _oracle(poly, D))
        V, w = to_numpy(res.vertices), to_numpy(res.weights)
        ref = _reference(poly, T)
        for i in range(len(T)):
            A = V[i][w[i] > 0].astype(np.int64)
            rank = np.linalg.matrix_rank((A - A[0]).astype(float)) if len(A) > 1 else 0
            assert rank == len(A) - 1, "support is not affinely independent"
            free = int(((ref[i] > 1e-12) & (ref[i] < 1 - 1e-12)).sum())
            binds = poly == "budget" and np.clip(T[i], 0, 1).sum() > D // 2 and free > 0
            face = free - binds
            assert bool(to_numpy(res.spans_face)[i]) == (rank == face)


def test_spans_face_is_none_for_an_oracle_without_faces(xp, rng):
    res = sparsemap(xp.asarray(rng.uniform(-0.5, 1.5, (3, 6))), lambda t: (t > 0).astype(t.dtype))
    assert res.spans_face is None


def _restricted_weights(A, t):
    """argmin over aff(S) of ||A ξ - t||² (ξ = ξ0 + N β, N spanning ker 1ᵀ)."""
    S = A.shape[1]
    xi0 = np.full(S, 1.0 / S)
    N = scipy.linalg.null_space(np.ones((1, S)))
    beta = scipy.linalg.lstsq(A @ N, t - A @ xi0)[0]
    return xi0 + N @ beta


def test_weights_vjp_against_restricted_problem_d128(xp, rng):
    """ξ-VJP at D = 128 against central differences of the restricted problem
    (S fixed), along random directions, on spanning rows with positive weights."""
    D, n = 128, 6
    for poly in ("bits", "budget"):
        T = _scores(rng, "onehot", n, D)
        res = sparsemap(xp.asarray(T), _oracle(poly, D))
        V, w = to_numpy(res.vertices), to_numpy(res.weights)
        G = rng.standard_normal(w.shape) * (w > 0)
        vjp = to_numpy(sparsemap_vjp(res, xp.asarray(G)))
        for i in range(n):
            sup = w[i] > 0
            A = V[i][sup].T                                       # (D, S)
            np.testing.assert_allclose(_restricted_weights(A, T[i]), w[i][sup], atol=1e-10)
            for _ in range(2):
                d = rng.standard_normal(D)
                eps = 1e-5
                fd = (G[i][sup] @ (_restricted_weights(A, T[i] + eps * d)
                                   - _restricted_weights(A, T[i] - eps * d))) / (2 * eps)
                assert abs(fd - vjp[i] @ d) <= 1e-7 * (1 + abs(fd)), (fd, vjp[i] @ d)


HUGE = [1e10, 1e14, 1e16, 1e30, 1e300]


@pytest.mark.parametrize("c", HUGE)
@pytest.mark.parametrize("poly", ["bits", "budget"])
@pytest.mark.parametrize("start", ["warm", "cold"])
def test_huge_magnitudes_exact(xp, c, poly, start):
    t = np.array([[c, -c, 0.25, 0.75]])
    init = None if start == "warm" else xp.asarray(bitvector_oracle(t))
    res = sparsemap(xp.asarray(t), _oracle(poly, 4), init=init)
    np.testing.assert_allclose(to_numpy(res.marginals), [[1, 0, 0.25, 0.75]], rtol=0, atol=1e-15)


@pytest.mark.parametrize("poly", ["bits", "budget"])
@pytest.mark.parametrize("start", ["warm", "cold"])
def test_random_mixtures_of_huge_and_small(xp, rng, poly, start):
    D, n = 12, 30
    T = rng.uniform(-0.5, 1.5, (n, D))
    for i in range(n):
        k = rng.integers(1, 4)                     # at most 3 huge entries, under the budget 6
        cols = rng.choice(D, k, replace=False)
        T[i, cols] = rng.choice([-1, 1], k) * 10.0 ** rng.uniform(10, 300, k)
    init = None if start == "warm" else xp.zeros((n, D))           # the zero vertex
    res = sparsemap(xp.asarray(T), _oracle(poly, D), init=init)
    ref = _reference(poly, np.where(np.abs(T) > 1e9, np.sign(T) * 1e9, T))
    np.testing.assert_allclose(to_numpy(res.marginals), ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("poly", ["bits", "budget"])
@pytest.mark.parametrize("start", ["warm", "cold"])
def test_deterministic_and_permutation_equivariant(xp, rng, poly, start):
    D, n = 64, 16
    T = _scores(rng, "onehot", n, D)
    init = None if start == "warm" else xp.zeros((n, D))
    oracle = _oracle(poly, D)
    a = sparsemap(xp.asarray(T), oracle, init=init)
    b = sparsemap(xp.asarray(T.copy()), oracle, init=init)
    perm = rng.permutation(n)
    c = sparsemap(xp.asarray(T[perm]), oracle, init=None if init is None else init[perm])
    for name in ("vertices", "weights", "marginals"):
        x, y, z = (to_numpy(getattr(r, name)) for r in (a, b, c))
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x[perm], z)          # shapes too: same S


def test_cold_start_converges_with_accurate_marginals(xp, rng):
    """The plain active set from one vertex (a user oracle, or ``init``)."""
    for D in (32, 128):
        T = _scores(rng, "onehot", 16, D)
        for poly in ("bits", "budget"):
            oracle = _oracle(poly, D)
            res = sparsemap(xp.asarray(T), oracle, init=oracle(xp.asarray(T)))
            assert np.abs(to_numpy(res.marginals) - _reference(poly, T)).max() <= 1e-9


def test_bad_oracles(xp):
    t = xp.asarray(np.array([0.3, 0.6]))
    with pytest.raises(TypeError, match="oracle must be a function"):
        sparsemap(t, "bits")
    with pytest.raises(TypeError, match="budget_oracle is a factory"):
        sparsemap(t, budget_oracle)
    with pytest.raises(ValueError, match="oracle must give one 0/1 vertex per row"):
        sparsemap(t, lambda s: s[..., :1] > 0)
    with pytest.raises(ValueError, match="oracle must give 0/1 vertices"):
        sparsemap(t, lambda s: s * 2)
    with pytest.raises(ValueError, match="init must have the shape of t"):
        sparsemap(t, bitvector_oracle, init=xp.zeros(3))


def test_vjp_of_a_dependent_support_is_an_error(xp):
    """A hand-built result whose vertices are affinely dependent: a clear error
    on every backend (CuPy's solve does not raise on a singular matrix)."""
    from refimpl import SparseMAPResult
    V = xp.asarray(np.array([[[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]]]))
    w = xp.asarray(np.array([[0.2, 0.3, 0.5]]))
    res = SparseMAPResult(vertices=V, weights=w, marginals=w[:, :2], n_iter=1)
    with pytest.raises(ValueError, match="affinely dependent"):
        sparsemap_vjp(res, xp.ones_like(w))
