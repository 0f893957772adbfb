"""The public gradient checkers check themselves: they accept right VJPs, reject
wrong ones (a 1 % scale error, a forgotten mean subtraction), refuse float32,
and refuse to difference across a kink."""
import numpy as np
import pytest

from refimpl import sparsemax, sparsemax_vjp
from refimpl.backend import to_numpy
from refimpl.enumeration import all_bitvectors, bitvector_index, bitvector_scores
from refimpl.gradcheck import (NondifferentiableError, check_against_enumeration, check_vjp,
                               numerical_jacobian)


def smooth_point(rng, shape):
    """A sparsemax input with support of size >= 2 and no entry near the threshold."""
    while True:
        x = rng.standard_normal(shape) * 0.5
        p = sparsemax(x)
        tau = (x - p)[p > 0]                              # equal to tau on the support
        t = tau.reshape(-1)[0]
        if shape == (x.size,) and (p > 0).sum() >= 2 and np.min(np.abs(x - t)) > 1e-3:
            return x


def right_vjp(x, u):
    return sparsemax_vjp(sparsemax(x), u)


def test_accepts_the_right_vjp(xp, rng):
    for _ in range(5):
        x = xp.asarray(smooth_point(rng, (7,)))
        check_vjp(sparsemax, right_vjp, x)


def test_rejects_vjp_scaled_by_1_01(xp, rng):
    x = xp.asarray(smooth_point(rng, (7,)))
    with pytest.raises(AssertionError, match="VJP mismatch"):
        check_vjp(sparsemax, lambda z, u: 1.01 * right_vjp(z, u), x)


def test_rejects_vjp_without_mean_subtraction(xp, rng):
    x = xp.asarray(smooth_point(rng, (7,)))

    def no_mean(z, u):
        return (sparsemax(z) > 0) * u

    with pytest.raises(AssertionError, match="VJP mismatch"):
        check_vjp(sparsemax, no_mean, x)


def test_rejects_vjp_with_wrong_support_or_shape(xp, rng):
    x = xp.asarray(smooth_point(rng, (7,)))

    def dense(z, u):                                       # mean over all K, not over S
        return u - xp.mean(u)

    with pytest.raises(AssertionError):
        check_vjp(sparsemax, dense, x)
    with pytest.raises(AssertionError, match="shape"):
        check_vjp(sparsemax, lambda z, u: right_vjp(z, u)[:-1], x)


def test_smooth_function_known_vjp(xp, rng):
    """An independent smooth map: f(x) = sin(x) * x[::-1] elementwise."""
    x = rng.standard_normal(6)

    def f(z):
        return xp.sin(z) * z[::-1]

    def vjp(z, u):
        return u * xp.cos(z) * z[::-1] + (u * xp.sin(z))[::-1]

    check_vjp(f, vjp, xp.asarray(x), piece=lambda z: 0)
    with pytest.raises(AssertionError):
        check_vjp(f, lambda z, u: u * xp.cos(z) * z[::-1], xp.asarray(x), piece=lambda z: 0)


def test_refuses_float32(xp, rng):
    x = smooth_point(rng, (5,))
    with pytest.raises(TypeError, match="float64"):
        check_vjp(sparsemax, right_vjp, xp.asarray(x.astype(np.float32)))
    with pytest.raises(TypeError, match="float64"):
        numerical_jacobian(sparsemax, xp.asarray(x.astype(np.float32)))
    with pytest.raises(TypeError, match="float64"):           # f returning float32
        check_vjp(lambda z: sparsemax(z).astype(np.float32), right_vjp, xp.asarray(x))


def kink_point():
    """sparsemax([1, 0, -1]) = [1, 0, 0] with tau = 0 = x[1]: entry 1 sits
    exactly on the threshold, so any move with v_1 != v_0 changes the support
    on one side."""
    return np.array([1.0, 0.0, -1.0])


def test_raises_nondifferentiable_at_kink(xp):
    x = kink_point()
    assert np.array_equal(sparsemax(x), [1.0, 0.0, 0.0])
    with pytest.raises(NondifferentiableError, match="piece"):
        check_vjp(sparsemax, right_vjp, xp.asarray(x))
    with pytest.raises(NondifferentiableError):
        numerical_jacobian(sparsemax, xp.asarray(x))
    # a tie of two maxima inside the support is *not* a kink of the support
    check_vjp(sparsemax, right_vjp, xp.asarray(np.array([1.0, 1.0, -1.0])))


def test_nondifferentiable_at_kink_even_with_wrong_vjp(xp):
    """At a kink the checker refuses instead of judging (no AssertionError)."""
    with pytest.raises(NondifferentiableError):
        check_vjp(sparsemax, lambda z, u: 5 * u, xp.asarray(kink_point()))


def test_nondifferentiable_is_value_error():
    assert issubclass(NondifferentiableError, ValueError)


def test_custom_piece_tuple(xp, rng):
    """A tuple piece signature (as used for structured maps) is compared element-wise."""
    x = xp.asarray(smooth_point(rng, (6,)))

    def piece(z):
        p = to_numpy(sparsemax(z))
        return (tuple(np.flatnonzero(p > 0).tolist()), p > 0)

    check_vjp(sparsemax, right_vjp, x, piece=piece)
    with pytest.raises(NondifferentiableError):
        check_vjp(sparsemax, right_vjp, xp.asarray(kink_point()),
                  piece=lambda z: tuple(np.flatnonzero(to_numpy(sparsemax(z)) > 0).tolist()))
    # a piece that changes with x (here: the sign of x[0] - 0.3 at a point where it is 0)
    y = np.array([0.3, 0.1, 0.2])
    with pytest.raises(NondifferentiableError):
        check_vjp(sparsemax, right_vjp, xp.asarray(y), piece=lambda z: bool(to_numpy(z)[0] > 0.3))


def test_numerical_jacobian_of_linear_map(xp, rng):
    M = rng.standard_normal((3, 4))
    x = rng.standard_normal(4)
    J = to_numpy(numerical_jacobian(lambda z: xp.asarray(M) @ z, xp.asarray(x), piece=lambda z: 0))
    assert J.shape == (3, 4)
    np.testing.assert_allclose(J, M, atol=1e-8)
    X = rng.standard_normal((2, 3))
    J2 = to_numpy(numerical_jacobian(lambda z: z ** 2, xp.asarray(X), piece=lambda z: 0))
    assert J2.shape == (2, 3, 2, 3)
    np.testing.assert_allclose(J2, np.einsum("ij,ik,jl->ijkl", 2 * X, np.eye(2), np.eye(3)), atol=1e-7)


def test_check_against_enumeration(rng):
    D = 3
    t = rng.standard_normal((2, D))
    scores = bitvector_scores(t)                          # (2, 8)
    reference = np.stack([sparsemax(s) for s in scores])
    V = all_bitvectors(D, dtype=np.float64)
    # the dense distribution written sparsely, in a shuffled order with a padding row
    verts, weights = [], []
    for i in range(2):
        S = np.flatnonzero(reference[i] > 0)
        perm = rng.permutation(S)
        verts.append(np.vstack([V[perm], np.zeros((8 - len(S), D))]))
        weights.append(np.concatenate([reference[i, perm], np.zeros(8 - len(S))]))
    verts, weights = np.stack(verts), np.stack(weights)
    check_against_enumeration(t, verts, weights, reference)
    bad = weights.copy()
    bad[1, 0] += 1e-6
    with pytest.raises(AssertionError, match="batch row"):
        check_against_enumeration(t, verts, bad, reference)
    with pytest.raises(ValueError, match="reference"):
        check_against_enumeration(t, verts, weights, reference[:, :4])
    assert np.array_equal(bitvector_index(V > 0.5), np.arange(8))
