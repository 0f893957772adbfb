"""Exact rational arithmetic for the golden values (:mod:`refimpl.golden`).

Every finite float is a dyadic rational, so the exact answer of each mapping
*at the given float inputs* is a rational number: computed here with
:class:`fractions.Fraction`, then correctly rounded (to nearest, ties to
even) to the case's dtype by :func:`round_to`.  Nothing here is fast; it is
meant to be obviously right.  Rows are Python lists of Fractions; ``-inf``
(a masked score) is represented by ``None``.

Conventions at kinks (the mappings are piecewise linear):

* sparsemax: the support is ``S = {i : p_i > 0}``; an entry exactly at the
  threshold has ``p_i = 0`` and is *not* in S (as ``u = 1[p > 0]`` in
  :func:`refimpl.sparsemax_vjp`, entmax and optax).
* marginal polytopes: a coordinate is free when ``0 < mu_i < 1`` strictly.
"""
import functools
from fractions import Fraction
from itertools import combinations

import numpy as np

__all__ = ["to_fractions", "round_to", "round_array", "sparsemax_row", "sparsemax_vjp_row",
           "topk_mask_row", "capped_simplex_row", "capped_simplex_vjp_row",
           "bits_marginals_vjp_row", "kbest_bruteforce", "kbest_row", "topk_bits_vjp_row",
           "exact_rows", "exact_output", "exact_vjp", "exact_jacobian", "slices"]


def to_fractions(row):
    """Float row -> list of Fractions (exact); ``-inf`` -> ``None``.

    Raises ``ValueError`` for NaN and ``+inf``."""
    out = []
    for v in np.asarray(row).tolist():
        if v == -np.inf:
            out.append(None)
        elif v != v or v == np.inf:
            raise ValueError(f"golden inputs must be finite or -inf, got {v}")
        else:
            out.append(Fraction(v))
    return out


def _ulp_neighbours(c, dtype):
    """``c`` and its two neighbours in ``dtype`` (finite ones only)."""
    c = dtype.type(c)
    up = np.nextafter(c, dtype.type(np.inf))
    down = np.nextafter(c, dtype.type(-np.inf))
    return [v for v in (down, c, up) if np.isfinite(v)]


def round_to(value, dtype):
    """Correctly round the Fraction ``value`` to ``dtype`` (nearest, ties to even).

    ``float(Fraction)`` is correctly rounded to float64 in CPython, but
    casting that to float32 can round twice; so the candidates (the float32
    cast and its two neighbours) are compared with ``value`` exactly.
    """
    dtype = np.dtype(dtype)
    best, best_err = None, None
    for cand in _ulp_neighbours(float(value), dtype):
        err = abs(Fraction(float(cand)) - value)
        even = int(cand.view(np.uint64 if dtype.itemsize == 8 else np.uint32)) % 2 == 0
        if best is None or err < best_err or (err == best_err and even):
            best, best_err = cand, err
    return best


def round_array(rows, dtype, shape):
    """Nested lists of Fractions -> ndarray of ``dtype`` and ``shape``, correctly rounded."""
    flat = np.asarray(rows, dtype=object).reshape(-1)
    out = np.array([round_to(v, dtype) for v in flat], dtype=dtype)
    return out.reshape(shape)


def sparsemax_row(s):
    """Exact sparsemax of one row of Fractions (``None`` = -inf) -> Fractions.

    ``tau = (Σ_{j<=k*} s_(j) - 1)/k*`` with ``k* = max{k : 1 + k s_(k) > Σ_{j<=k} s_(j)}``
    over the finite entries sorted descending; ``p = max(s - tau, 0)``.
    """
    finite = sorted((v for v in s if v is not None), reverse=True)
    if not finite:
        raise ValueError("sparsemax needs a finite entry in each slice")
    csum, k_star, csum_star = Fraction(0), 0, Fraction(0)
    for k, v in enumerate(finite, start=1):
        csum += v
        if 1 + k * v > csum:
            k_star, csum_star = k, csum
    tau = (csum_star - 1) / k_star
    return [Fraction(0) if v is None else max(v - tau, Fraction(0)) for v in s]


def sparsemax_vjp_row(p, g):
    """Exact ``u ⊙ (g - mean_S g)`` with ``u = 1[p > 0]``; p, g Fractions."""
    support = [i for i, v in enumerate(p) if v > 0]
    mean = sum((g[i] for i in support), Fraction(0)) / len(support)
    return [g[i] - mean if p[i] > 0 else Fraction(0) for i in range(len(p))]


def _clip01(v):
    return min(max(v, Fraction(0)), Fraction(1))


def capped_simplex_row(t, B):
    """Exact projection of ``t`` onto ``{mu ∈ [0,1]^D : Σ mu <= B}``.

    ``mu = clip(t - lam, 0, 1)`` with ``lam = 0`` when ``Σ clip(t, 0, 1) <= B``,
    else the ``lam > 0`` with ``h(lam) = Σ clip(t - lam, 0, 1) = B``.  ``h`` is
    piecewise linear and nonincreasing with breakpoints ``t_i`` and ``t_i - 1``,
    so ``lam`` is found exactly: bisection over the sorted breakpoints for the
    two that bracket ``B``, then linear interpolation between them.
    Returns ``(mu, lam)``.
    """
    def h(lam):
        return sum((_clip01(v - lam) for v in t), Fraction(0))

    B = Fraction(B)
    if h(Fraction(0)) <= B:
        return [_clip01(v) for v in t], Fraction(0)
    points = sorted({Fraction(0)} | {b for v in t for b in (v, v - 1) if b > 0})
    lo, hi = 0, len(points) - 1                           # h(points[lo]) > B >= h(points[hi])
    while hi - lo > 1:                                    # h is nonincreasing: bisect
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if h(points[mid]) > B else (lo, mid)
    a, b = points[lo], points[hi]
    h_a, h_b = h(a), h(b)                                 # h is linear on [a, b]
    lam = a + (h_a - B) * (b - a) / (h_a - h_b)
    return [_clip01(v - lam) for v in t], lam


def capped_simplex_vjp_row(t, mu, lam, g):
    """Exact VJP of the capped-simplex projection (``<mu, g>`` w.r.t. ``t``).

    Free set ``F = {0 < mu_i < 1}``.  With the budget inactive (``lam = 0``)
    ``J = diag(f)``; active, ``lam`` moves with ``Σ_F t_i / |F|`` and
    ``J = diag(f) - f fᵀ/|F|`` (the sparsemax form on F).
    """
    free = [i for i, v in enumerate(mu) if 0 < v < 1]
    mean = sum((g[i] for i in free), Fraction(0)) / len(free) if (lam > 0 and free) else 0
    return [g[i] - mean if 0 < mu[i] < 1 else Fraction(0) for i in range(len(mu))]


def bits_marginals_vjp_row(mu, g):
    """Exact VJP of ``mu = clip(t, 0, 1)``: ``g ⊙ 1[0 < mu < 1]``."""
    return [gi if 0 < m < 1 else Fraction(0) for m, gi in zip(mu, g)]


def kbest_bruteforce(t, k, flippable=None):
    """The k best bit-vectors by exhaustive search, in Fractions.

    t : list of Fractions (D,).  ``flippable`` (default: all bits) restricts
    the search to vectors that differ from ``z* = 1[t > 0]`` only on those
    bits (complete for the k best when it holds the k-1 smallest ``|t_i|``;
    docs/derivations.md §3).  Returns ``[(score, bits tuple)]`` sorted by score
    descending (ties: the order is unspecified; callers reject ties).
    """
    D = len(t)
    best = [v > 0 for v in t]
    idx = range(D) if flippable is None else flippable
    out = []
    for r in range(len(idx) + 1):
        for flip in combinations(idx, r):
            bits = list(best)
            for i in flip:
                bits[i] = not bits[i]
            out.append((sum((t[i] for i in range(D) if bits[i]), Fraction(0)), tuple(bits)))
    out.sort(key=lambda sb: sb[0], reverse=True)
    return out[:k]


def topk_mask_row(s, k):
    """Mask all but the k largest finite entries of ``s`` (``None`` = -inf).

    Ties at the k-th place go to the lower index (refimpl's convention).
    Raises ``ValueError`` when the sparsemax of the result would depend on
    that tie-break (golden cases must have a unique answer)."""
    def mask(order):
        keep = set(order[:k])
        return [v if i in keep else None for i, v in enumerate(s)]
    finite = [i for i, v in enumerate(s) if v is not None]
    low = sorted(finite, key=lambda i: (-s[i], i))
    high = sorted(finite, key=lambda i: (-s[i], -i))
    out = mask(low)
    if sparsemax_row(out) != sparsemax_row(mask(high)):
        raise ValueError("top-k sparsemax of this row depends on how ties are broken")
    return out


BRUTE_FORCE_MAX_D = 12


def kbest_row(t_float, t, k):
    """The k best bit-vectors of one row: ``(bits [tuple], scores [Fraction])``.

    Taken from :func:`refimpl.kbest_bitvectors` and validated exactly against
    :func:`kbest_bruteforce` (over all 2^D vectors when D <= 12, else over the
    flips of the k-1 smallest ``|t_i|``, which contain the k best).  Raises
    ``ValueError`` when the top k+1 scores are not all distinct (the set and
    the order of the k best would then depend on tie-breaking)."""
    from .topk import kbest_bitvectors
    D = len(t)
    bits, _ = kbest_bitvectors(np.asarray(t_float)[None, :], k)
    bits = [tuple(bool(b) for b in row) for row in bits[0]]
    if D <= BRUTE_FORCE_MAX_D:
        ref = kbest_bruteforce(t, min(k + 1, 2 ** D))
    else:
        ref = kbest_bruteforce(t, k + 1, sorted(range(D), key=lambda i: abs(t[i]))[:k])
    scores = [sc for sc, _ in ref]
    if len(set(scores)) != len(scores) or 0 in t:
        raise ValueError("tied bit-vector scores among the k+1 best: pick another t")
    if [b for _, b in ref[:k]] != bits:
        raise AssertionError(f"refimpl.kbest_bitvectors disagrees with brute force for t={t_float}")
    return bits, scores[:k]


def topk_bits_vjp_row(p, bits, g):
    """Exact ``Σ_j (J_sparsemax^T g)_j a_{z_j}``: the VJP w.r.t. t of top-k over bit-vectors."""
    v = sparsemax_vjp_row(p, g)
    return [sum((v[j] for j in range(len(bits)) if bits[j][i]), Fraction(0))
            for i in range(len(bits[0]))]


def check_no_kink(t, mu, lam, B):
    """Raise ``ValueError`` when the capped-simplex projection is not
    differentiable at ``t`` (a coordinate exactly at 0 or 1 after the shift,
    or the budget exactly tight with lam = 0)."""
    if any(v - lam in (0, 1) for v in t) or (lam == 0 and sum(mu) == B):
        raise ValueError("capped-simplex case at a kink: pick another t")


def exact_rows(mapping, x_rows, params):
    """Exact solution of each row ``x_rows (N, K)`` (floats) for ``mapping``.

    Returns a list of ``(output Fractions, vjp: g row -> Fractions, bits or None)``."""
    out = []
    for row in x_rows:
        s = to_fractions(row)
        bits = None
        if mapping in ("sparsemax", "topk_sparsemax"):
            y = sparsemax_row(topk_mask_row(s, params["k"]) if mapping == "topk_sparsemax" else s)
            vjp = functools.partial(sparsemax_vjp_row, y)
        elif mapping == "topk_bits":
            bits, scores = kbest_row(row, s, params["k"])
            y = sparsemax_row(scores)
            vjp = functools.partial(topk_bits_vjp_row, y, bits)
        elif mapping == "sparsemap_bits":
            y = [_clip01(v) for v in s]
            vjp = functools.partial(bits_marginals_vjp_row, y)
        elif mapping == "sparsemap_budget":
            y, lam = capped_simplex_row(s, params["budget"])
            check_no_kink(s, y, lam, params["budget"])
            vjp = functools.partial(capped_simplex_vjp_row, s, y, lam)
        else:
            raise ValueError(f"unknown mapping {mapping!r}")
        out.append((y, vjp, bits))
    return out


def slices(a, axis):
    """``(..., K)`` slices of ``a`` along ``axis`` as an ``(N, K)`` array (C order)."""
    a = np.moveaxis(np.asarray(a), axis, -1)
    return a.reshape(-1, a.shape[-1])


def exact_output(rows, x, axis, dtype, n_out):
    """The rounded outputs of ``rows`` (from :func:`exact_rows`) in x's layout
    (``n_out`` outputs per slice replace the ``axis`` of ``x``)."""
    moved = np.moveaxis(x, axis, -1).shape[:-1] + (n_out,)
    return np.moveaxis(round_array([y for y, _, _ in rows], dtype, moved), -1, axis)


def exact_vjp(rows, g, x, axis, dtype):
    """The rounded VJP of the output-shaped cotangent ``g``, in x's layout."""
    res = [vjp(to_fractions(gr)) for (_, vjp, _), gr in zip(rows, slices(g, axis))]
    return np.moveaxis(round_array(res, dtype, np.moveaxis(x, axis, -1).shape), -1, axis)


def exact_jacobian(rows, n_out, dtype):
    """Dense ``(N, out, in)`` Jacobians: row i is the VJP of the unit cotangent e_i."""
    units = [[Fraction(int(i == j)) for j in range(n_out)] for i in range(n_out)]
    return round_array([[vjp(e) for e in units] for _, vjp, _ in rows], dtype,
                       (len(rows), n_out, -1))
