"""sparsemax: the Euclidean projection onto the probability simplex.

    sparsemax(s) = argmin_{p in Δ^K} ||p - s||²          (paper §3, Eq. 3)

Closed form (Martins & Astudillo 2016): ``p = [s - tau]_+`` with the threshold
``tau = (Σ_{j<=k*} s_(j) - 1) / k*`` over the sorted scores
``s_(1) >= s_(2) >= ...`` and ``k* = max{k : 1 + k s_(k) > Σ_{j<=k} s_(j)}``.
Derivation of the forward map and of its Jacobian: docs/derivations.md §1.
"""
import numpy as np

from ._types import Array
from ._checks import check_array, check_axis, check_grad, check_row_maxima
from .backend import xp_of

__all__ = ["sparsemax", "sparsemax_vjp", "sparsemax_jacobian"]

# The textbook formula (full sort, cumulative sum) is the default on every
# backend.  NumPy only, and only where benchmarks/mappings.py ("sparsemax
# paths") measured it faster under 1 and 2 BLAS threads, long rows search the
# threshold among the candidates z_i >= max(z) - 1 (an O(K) partition first).
# tests/test_sparsemax.py checks each path equal to the textbook one.
_PARTITION_MIN_K = 256
PATHS = ("textbook", "partition")


def _threshold_sorted(z_desc):
    """``tau : (N, 1)`` from rows sorted in descending order, row maxima 0.

    z_desc : (N, m), may hold -inf (masked) entries after the finite ones.
    ``k* = max{k : 1 + k z_(k) > Σ_{j<=k} z_(j)}`` (the condition holds on a
    prefix), ``tau = (Σ_{j<=k*} z_(j) - 1) / k*``.
    """
    xp = xp_of(z_desc)
    ks = xp.arange(1, z_desc.shape[-1] + 1, dtype=z_desc.dtype)
    csum = xp.cumsum(z_desc, axis=-1)          # -inf entries: -inf > -inf is False, never NaN
    k_star = xp.sum(1 + ks * z_desc > csum, axis=-1, keepdims=True)     # (N, 1), >= 1
    csum_k = xp.take_along_axis(csum, k_star - 1, axis=-1)
    return (csum_k - 1) / k_star.astype(z_desc.dtype)


def _default_path(xp, K):
    return "partition" if xp is np and K >= _PARTITION_MIN_K else "textbook"


def _sparsemax_rows(s, scores=None, path=None):
    """sparsemax of each row of ``s : (N, K)``; returns probs (N, K).

    ``scores`` (the caller's array) given: validate from the row maxima (NaN,
    +inf or an all -inf row raise; one host sync on a GPU).  ``scores=None``:
    the caller has validated already (internal calls skip repeated checks).

    path "textbook": sort each row whole.  path "partition" (NumPy): ``tau >=
    max(z) - 1`` (the top entry gets probability at most 1), so only entries
    with ``z_i >= -1`` can be in the support: only the ``m`` largest entries
    are sorted, ``m`` the largest candidate count in the batch, found with an
    O(K) partition.  Both give the same numbers (the same sorted prefix).
    """
    xp = xp_of(s)
    K = s.shape[-1]
    path = _default_path(xp, K) if path is None else path
    if path == "partition":
        top = xp.max(s, axis=-1, keepdims=True)
        if scores is not None:
            check_row_maxima(scores, top)                            # NaN, +inf, all -inf
        z = s - top
        m = int(xp.max(xp.sum(z >= -1, axis=-1)))                    # a host sync: NumPy only
        cand = xp.partition(z, K - m, axis=-1)[:, K - m:] if 4 * m < K else z
        z_desc = xp.sort(cand, axis=-1)[:, ::-1]
    else:
        s_desc = xp.sort(s, axis=-1)[:, ::-1]                        # NaN sorts last: top = NaN
        top = s_desc[:, :1]
        if scores is not None:
            check_row_maxima(scores, top)
        z_desc = s_desc - top
    return xp.maximum((s - top) - _threshold_sorted(z_desc), 0)      # shift first: exact for huge s


def _sparsemax_last(scores, validate=True, path=None):
    """sparsemax along the last axis of ``scores`` (..., K); ``validate=False``
    for callers that checked the scores themselves."""
    K = scores.shape[-1]
    with np.errstate(over="ignore"):                              # s - top may overflow to -inf: fine
        probs = _sparsemax_rows(scores.reshape(-1, K), scores if validate else None, path)
    return probs.reshape(scores.shape)


def sparsemax(scores: Array, axis: int = -1) -> Array:
    """Sparse probability distribution: the Euclidean projection onto the simplex.

    Solves ``argmin_{p ∈ Δ^K} ||p - scores||²`` along ``axis`` (paper §3, Eq. 3).

    Parameters
    ----------
    scores : (..., K) float array (NumPy or CuPy).  ``-inf`` entries are allowed
        and get probability 0 (masked); each slice needs a finite entry.
    axis : the axis of the K categories.

    Returns
    -------
    probs : same shape, dtype and device as ``scores``; each slice sums to 1,
        with exact zeros outside the support.

    Shifting by the slice maximum first makes the result exact for huge
    magnitudes.  NaN, ``+inf`` or an all-``-inf`` slice raise ``ValueError``.
    """
    xp = check_array(scores)
    axis = check_axis(scores, axis)
    if axis == scores.ndim - 1:
        return _sparsemax_last(scores)
    probs = _sparsemax_last(xp.moveaxis(scores, axis, -1))
    return xp.moveaxis(probs, -1, axis)


def sparsemax_vjp(probs: Array, grad: Array, axis: int = -1) -> Array:
    """Vector-Jacobian product of sparsemax, from its output.

    ``J = diag(u) - u uᵀ / |S|`` with ``u = 1[probs > 0]`` the support
    indicator and ``|S| = Σ u`` (paper §3; Martins & Astudillo 2016 Eq. 12), so

        Jᵀ g = u ⊙ (g - (Σ_{i∈S} g_i) / |S|).

    J is symmetric; the same formula is the JVP.

    Parameters
    ----------
    probs : (..., K) the output of :func:`sparsemax` (or of top-k sparsemax).
    grad : (..., K) cotangent, same shape.

    Returns ``(..., K)``, zero outside the support, dtype of ``grad``.
    """
    check_grad(grad, probs)
    axis = check_axis(probs, axis)
    _check_support(probs, axis)
    return _sparsemax_vjp(probs, grad, axis)


def _sparsemax_vjp(probs, grad, axis=-1):
    """:func:`sparsemax_vjp` for callers passing a forward output they computed
    (shapes already checked, a non-empty support guaranteed): no host sync."""
    xp = xp_of(probs, grad)
    u = (probs > 0).astype(grad.dtype)                          # support indicator
    size = xp.sum(u, axis=axis, keepdims=True)                  # |S|
    return u * (grad - xp.sum(u * grad, axis=axis, keepdims=True) / size)


def _check_support(probs, axis):
    """An empty support (a slice with no positive entry) is not a sparsemax output."""
    xp = xp_of(probs)
    if not bool(xp.all(xp.any(probs > 0, axis=axis))):
        raise ValueError("probs has a slice with no positive entry, so it is not a sparsemax "
                         "output; pass the probabilities returned by sparsemax")


def sparsemax_jacobian(probs: Array, axis: int = -1) -> Array:
    """Dense Jacobian ``J = diag(u) - u uᵀ / |S|`` of sparsemax, for audits.

    probs : (..., K) along ``axis``; returns ``(..., K, K)`` with the two
    category axes last (``J[..., i, j] = ∂p_i / ∂s_j``).
    """
    xp = check_array(probs, "probs")
    axis = check_axis(probs, axis)
    _check_support(probs, axis)
    u = (xp.moveaxis(probs, axis, -1) > 0).astype(probs.dtype)   # (..., K)
    size = xp.sum(u, axis=-1)[..., None, None]
    eye = xp.eye(u.shape[-1], dtype=probs.dtype)
    return eye * u[..., None, :] - u[..., :, None] * u[..., None, :] / size
