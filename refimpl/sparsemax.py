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

# Above this many entries per slice, the threshold is searched among the
# candidates z_i >= max(z) - 1 only (see _threshold); below it a full sort is
# cheaper and needs no host synchronisation on a GPU.
_FULL_SORT_MAX_K = 64


def _row_sums(a, cumulative=False):
    """Sums (N, 1), or cumulative sums (N, m), along the last axis of ``a : (N, m)``.

    Short rows (m <= _FULL_SORT_MAX_K) go through one matrix product with a
    column of ones (or an upper-triangular matrix of ones): NumPy's reductions
    along a short last axis are 5-10x slower.  Long rows use the (pairwise,
    more accurate) reductions.
    """
    xp = xp_of(a)
    m = a.shape[-1]
    if m > _FULL_SORT_MAX_K:
        return xp.cumsum(a, axis=-1) if cumulative else xp.sum(a, axis=-1, keepdims=True)
    ones = xp.triu(xp.ones((m, m), dtype=a.dtype)) if cumulative else xp.ones((m, 1), dtype=a.dtype)
    return a @ ones


def _threshold_sorted(z_desc):
    """``tau : (N, 1)`` from rows sorted in descending order, row maxima 0.

    z_desc : (N, m), may hold -inf (masked) entries after the finite ones.
    ``k*`` is the length of the prefix where ``1 + k z_(k) > Σ_{j<=k} z_(j)``.
    """
    xp = xp_of(z_desc)
    ks = xp.arange(1, z_desc.shape[-1] + 1, dtype=z_desc.dtype)
    finite = xp.isfinite(z_desc[:, -1:]).all()
    # -inf entries (masked) must not meet a 0 in the product with ones: NaN.
    csum = _row_sums(z_desc, cumulative=True) if finite else xp.cumsum(z_desc, axis=-1)
    # -inf entries give -inf > -inf: False, never NaN (only additions of -inf).
    in_support = (1 + ks * z_desc > csum).astype(z_desc.dtype)         # a prefix of each row
    k_star = _row_sums(in_support)                                     # (N, 1), >= 1
    csum_k = xp.take_along_axis(csum, k_star.astype(np.int64) - 1, axis=-1)
    return (csum_k - 1) / k_star


def _max_and_threshold(s, scores):
    """Row maxima ``top`` and threshold ``tau`` of ``s - top``: both (N, 1).

    ``scores`` (the caller's array) is only used to explain invalid input.

    Short rows are sorted whole (the maximum is the last sorted entry).
    Long rows use ``tau >= max(z) - 1 = -1`` (the top entry gets probability
    at most 1): only entries with ``z_i >= -1`` can be in the support, so
    only the ``m`` largest entries are sorted, ``m`` the largest candidate
    count in the batch, found with an O(K) partition.
    """
    xp = xp_of(s)
    K = s.shape[-1]
    if K > _FULL_SORT_MAX_K:
        top = xp.max(s, axis=-1, keepdims=True)
        check_row_maxima(scores, top)                               # NaN, +inf, all -inf
        z = s - top
        m = int(xp.max(xp.sum(z >= -1, axis=-1)))
        if 4 * m < K:
            cand = xp.partition(z, K - m, axis=-1)[:, K - m:]      # (N, m) the m largest
            return top, _threshold_sorted(xp.sort(cand, axis=-1)[:, ::-1])
        return top, _threshold_sorted(xp.sort(z, axis=-1)[:, ::-1])
    s_desc = xp.sort(s, axis=-1)[:, ::-1]                           # NaN sorts first: top = NaN
    top = s_desc[:, :1]
    check_row_maxima(scores, top)
    return top, _threshold_sorted(s_desc - top)


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
    s = scores if axis == scores.ndim - 1 else xp.moveaxis(scores, axis, -1)
    lead, K = s.shape[:-1], s.shape[-1]
    s = s.reshape(-1, K)                                          # (N, K)
    with np.errstate(over="ignore"):                              # s - top may overflow to -inf: fine
        top, tau = _max_and_threshold(s, scores)                  # (N, 1) each
        probs = xp.maximum((s - top) - tau, 0).reshape(lead + (K,))  # shift first: exact for huge s
    return probs if axis == scores.ndim - 1 else xp.moveaxis(probs, -1, axis)


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
    xp = xp_of(probs, grad)
    axis = check_axis(probs, axis)
    last = axis == probs.ndim - 1
    p, g = (probs, grad) if last else (xp.moveaxis(probs, axis, -1), xp.moveaxis(grad, axis, -1))
    K = p.shape[-1]
    u = (p > 0).astype(grad.dtype).reshape(-1, K)                # (N, K)
    g = g.reshape(-1, K)
    out = (u * (g - _row_sums(u * g) / _support_size(u))).reshape(p.shape)
    return out if last else xp.moveaxis(out, -1, axis)


def _support_size(u):
    """``|S|`` per row (N, 1) of ``u : (N, K)``; an empty support is not a sparsemax output."""
    xp = xp_of(u)
    size = _row_sums(u)
    if not bool(xp.all(size)):
        raise ValueError("probs has a slice with no positive entry, so it is not a sparsemax "
                         "output; pass the probabilities returned by sparsemax")
    return size


def sparsemax_jacobian(probs: Array, axis: int = -1) -> Array:
    """Dense Jacobian ``J = diag(u) - u uᵀ / |S|`` of sparsemax, for audits.

    probs : (..., K) along ``axis``; returns ``(..., K, K)`` with the two
    category axes last (``J[..., i, j] = ∂p_i / ∂s_j``).
    """
    xp = check_array(probs, "probs")
    axis = check_axis(probs, axis)
    u = (xp.moveaxis(probs, axis, -1) > 0).astype(probs.dtype)   # (..., K)
    size = _support_size(u.reshape(-1, u.shape[-1])).reshape(u.shape[:-1] + (1, 1))
    eye = xp.eye(u.shape[-1], dtype=probs.dtype)
    return eye * u[..., None, :] - u[..., :, None] * u[..., None, :] / size
