"""Top-k sparsemax (paper §4.1) and the k best bit-vectors.

    sparsemax_k(s) = argmin_{p ∈ Δ, ||p||_0 <= k} ||p - s||² = sparsemax(top_k(s))

``top_k`` keeps the k largest scores and sets the others to ``-inf``.  For
bit-vector latents the scores ``s_z = <a_z, t>`` of all 2^D assignments are
never built: :func:`kbest_bitvectors` finds the k largest directly.
Derivations: docs/derivations.md §2–3.
"""
from typing import Tuple

import numpy as np

from ._types import Array
from ._checks import check_array, check_axis, check_k, check_row_maxima, check_scores
from .backend import xp_of
from .sparsemax import _sparsemax_last, sparsemax, sparsemax_vjp

__all__ = ["topk_sparsemax", "topk_sparsemax_vjp", "kbest_bitvectors"]


def _topk_mask(scores, k):
    """``(..., K)`` bool: the k largest entries of each last-axis slice
    (ties go to the lower index, as in a stable descending sort)."""
    xp = xp_of(scores)
    order = xp.argsort(-scores, axis=-1, kind="stable")[..., :k]   # (..., k)
    mask = xp.zeros(scores.shape, dtype=bool)
    xp.put_along_axis(mask, order, True, axis=-1)
    return mask


def topk_sparsemax(scores: Array, k: int, axis: int = -1) -> Array:
    """Sparse projection onto the simplex with at most k nonzeros (paper §4.1).

    Solves ``argmin_{p ∈ Δ^K, ||p||_0 <= k} ||p - scores||²``, a non-convex
    problem whose solution is ``sparsemax(top_k(scores))`` (Kyrillidis et al.
    2013): all but the k largest scores (ties: lower index first) are set to
    ``-inf`` before sparsemax.  ``k >= K`` gives plain sparsemax.

    scores : (..., K) float, ``-inf`` allowed (masked); k : int >= 1.
    Returns probs (..., K), same dtype and device.  If fewer than k entries
    are positive, the result equals ``sparsemax(scores)`` (a certificate).
    """
    xp = check_array(scores)
    k = check_k(k, None, "K")
    axis = check_axis(scores, axis)
    if k >= scores.shape[axis]:
        return sparsemax(scores, axis=axis)
    s = xp.moveaxis(scores, axis, -1)
    # One validation at this boundary (a NaN anywhere makes its slice maximum
    # NaN, even where top_k would drop it); the inner sparsemax skips its own.
    check_row_maxima(scores, xp.max(s, axis=-1))
    masked = xp.where(_topk_mask(s, k), s, xp.asarray(-np.inf, dtype=s.dtype))
    return xp.moveaxis(_sparsemax_last(masked, validate=False), -1, axis)


def topk_sparsemax_vjp(probs: Array, grad: Array, axis: int = -1) -> Array:
    """VJP of top-k sparsemax, from its output.

    ``top_k`` has Jacobian ``diag(m)`` (m the top-k indicator) and the
    sparsemax support S lies inside the top-k set, so the chain rule gives the
    sparsemax Jacobian unchanged: ``J = diag(u) - u uᵀ/|S|``, ``u = 1[probs > 0]``.
    """
    return sparsemax_vjp(probs, grad, axis=axis)


def _k_smallest_subset_sums(costs, k):
    """The k smallest subset sums of ``costs : (N, m)`` (ascending in each row).

    Returns ``sums : (N, k')`` ascending and ``subsets : (N, k', m)`` bool with
    ``k' = min(k, 2^m)``.  Exact order among equal sums: the subset that is
    smaller as a binary number (column r worth 2^r) comes first.

    Adds one element at a time (the authors' O(kD) merge): the k best subsets
    of the first r+1 elements are among the k best of the first r, with and
    without element r.  A *stable* sort of ``[L, L + c_r]`` keeps, among equal
    sums, subsets without element r (binary value < 2^r) ahead of those with
    it, and the previous order within each half: so it realises the order
    above exactly.  The loop runs over the m elements, never over examples.
    """
    xp = xp_of(costs)
    N, m = costs.shape
    sums = xp.zeros((N, 1), dtype=costs.dtype)                     # (N, L)
    subsets = xp.zeros((N, 1, m), dtype=bool)                      # (N, L, m)
    for r in range(m):
        with_r = subsets.copy()
        with_r[:, :, r] = True
        cand_sums = xp.concatenate([sums, sums + costs[:, r:r + 1]], axis=1)   # (N, 2L)
        cand_subsets = xp.concatenate([subsets, with_r], axis=1)               # (N, 2L, m)
        keep = xp.argsort(cand_sums, axis=1, kind="stable")[:, :k]             # (N, L')
        sums = xp.take_along_axis(cand_sums, keep, axis=1)
        subsets = xp.take_along_axis(cand_subsets, keep[:, :, None], axis=1)
    return sums, subsets


def kbest_bitvectors(t: Array, k: int) -> Tuple[Array, Array]:
    """The k highest-scoring bit-vectors ``z ∈ {0,1}^D`` under ``s_z = <a_z, t>``.

    Parameters
    ----------
    t : (..., D) finite float scores of the bits.
    k : int, ``1 <= k <= 2^D``.

    Returns
    -------
    bits : (..., k, D) bool, best first.
    scores : (..., k) in ``t``'s dtype, non-increasing: ``scores[j] = <bits[j], t>``,
        computed as ``<z*, t> - Σ_{i flipped} |t_i|`` (equal up to rounding).

    Method (paper §4.1; docs/derivations.md §3).  The best vector is
    ``z* = 1[t > 0]``; flipping the bits in a set F costs ``Σ_{i∈F} |t_i|``,
    so the k best vectors are the k smallest subset sums of ``|t|``.  Only
    the ``m = min(k-1, D)`` smallest ``|t_i|`` can be flipped in any of them:
    the empty set and the m single flips are m+1 >= k subsets no worse than
    any set flipping another bit.  Cost O(k m log k) per example, batched.

    Order and ties (documented, deterministic).  Rank the bits by ``|t_i|``
    ascending, equal values by lower index.  Vectors are ordered by their
    score, and among equal scores the flip set F (bits flipped from ``z*``)
    with the smaller ``Σ_{i∈F} 2^rank(i)`` comes first.  The comparison uses
    the flip costs ``Σ_{i∈F} |t_i|`` as computed in ``t``'s dtype: when those
    sums are exact (e.g. small dyadic rationals) the order is exactly the one
    above; otherwise vectors whose exact scores differ by less than the
    rounding of their costs may come in either order (still deterministically).
    Bits with ``t_i = 0`` are off in ``z*``.
    """
    check_scores(t, "t", allow_neg_inf=False)
    return _kbest_bitvectors(t, k)


def _kbest_bitvectors(t, k):
    """:func:`kbest_bitvectors` for callers that validated ``t`` (finite, float,
    at least one axis) themselves: ``k`` is still checked (on the host), no host sync."""
    D = t.shape[-1]
    k = check_k(k, 2 ** D if D < 63 else None, "2^D")
    xp = xp_of(t)
    lead = t.shape[:-1]
    t2 = t.reshape(-1, D)                                          # (N, D)
    best = t2 > 0                                                  # z*
    cost = xp.abs(t2)
    m = min(k - 1, D)
    cheapest = xp.argsort(cost, axis=-1, kind="stable")[:, :m]     # (N, m) bits by rank
    sums, subsets = _k_smallest_subset_sums(xp.take_along_axis(cost, cheapest, axis=-1), k)
    flips = xp.zeros((t2.shape[0], k, D), dtype=bool)
    xp.put_along_axis(flips, xp.broadcast_to(cheapest[:, None, :], subsets.shape), subsets, axis=-1)
    bits = best[:, None, :] ^ flips                                # (N, k, D)
    top = xp.sum(xp.where(best, t2, 0), axis=-1, keepdims=True)    # <z*, t>, (N, 1)
    scores = (top - sums).astype(t.dtype, copy=False)
    return bits.reshape(lead + (k, D)), scores.reshape(lead + (k,))
