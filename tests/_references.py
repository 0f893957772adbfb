"""Independent references shared by the test files (never refimpl's code)."""
from fractions import Fraction

import numpy as np

from refimpl.gradcheck import NondifferentiableError, check_vjp

NEG_INF = float("-inf")


def exact_sparsemax_row(row):
    """Exact sparsemax of a 1-D sequence of floats or Fractions (``-inf`` allowed).

    Sort descending; ``k* = max{k : 1 + k s_(k) > Σ_{j<=k} s_(j)}`` (the condition
    holds exactly on a prefix); ``tau = (Σ_{j<=k*} s_(j) - 1) / k*``; ``p = [s - tau]_+``.
    Floats convert exactly (``Fraction(float)``), so there is no rounding at all.
    """
    vals = [v if isinstance(v, Fraction) else float(v) for v in row]
    finite = sorted((Fraction(v) for v in vals if v != NEG_INF), reverse=True)
    assert finite, "reference needs a finite entry"
    csum, k_star, csum_star = Fraction(0), 0, None
    for k, x in enumerate(finite, 1):
        csum += x
        if 1 + k * x > csum:
            k_star, csum_star = k, csum
        else:
            break
    tau = (csum_star - 1) / k_star
    tau_f = float(tau)
    # a float below float(tau) is below tau exactly: a cheap exact zero for long rows
    out = [Fraction(0) if (v == NEG_INF or (isinstance(v, float) and v < tau_f))
           else max(Fraction(v) - tau, Fraction(0)) for v in vals]
    assert sum(out) == 1
    return out


def qualifies(f, vjp, t, piece):
    """Run ``check_vjp`` at ``t``; False when ``t`` is too close to a kink to difference."""
    try:
        check_vjp(f, vjp, t, piece=piece)
    except NondifferentiableError:
        return False
    return True


# ----------------------------------------------------------------- exact comparison
THRESHOLD_C = 4


def threshold_tolerance(row, exact, eps):
    """How far a float sparsemax of ``row`` may be from ``exact`` (its exact value, Fractions).

    Only the threshold is computed with rounding: ``tau = (Σ_S z - 1)/|S|`` with
    ``z = s - max s`` (the shift is exact enough: Sterbenz), and a sum of |S|
    terms carries an error that grows like ``√|S| · eps · Σ_S |z|``.  So

        tol = C · eps · (1 + Σ_S |z_i|) · (1 + √|S|) / |S|,      C = 4,

    a few units in the last place of tau, independent of K (the zeros outside
    the support add nothing).  At K = 65536 in float32 with a uniform row it
    is about 5e-7 (``8 K eps`` was 0.06).
    """
    finite = [float(v) for v in row if float(v) != NEG_INF]
    top = max(finite)
    support = [i for i, p in enumerate(exact) if p > 0]
    abs_sum = sum(abs(float(row[i]) - top) for i in support)
    n = len(support)
    return THRESHOLD_C * eps * (1 + abs_sum) * (1 + n ** 0.5) / n


def assert_rows_match_exact(ours, rows, exact_rows, eps):
    """Every row of ``ours`` (float) against its exact sparsemax (Fractions).

    Checks (1) every entry within :func:`threshold_tolerance`; (2) the support:
    an entry whose exact distance from tau exceeds the tolerance (so rounding
    cannot decide it) is positive in ``ours`` iff it is in the exact support,
    and -inf entries are exactly 0; (3) k* = |support| exactly, whenever no
    entry lies within the tolerance of tau.
    """
    for r, (o, row, exact) in enumerate(zip(ours, rows, exact_rows)):
        tol = threshold_tolerance(row, exact, eps)
        ref = [float(v) for v in exact]
        err = max(abs(float(a) - b) for a, b in zip(o, ref))
        assert err <= tol, f"row {r}: max |ours - exact| = {err:.3g} > tolerance {tol:.3g}"
        i_top = max(range(len(exact)), key=lambda j: exact[j])
        tau = Fraction(float(row[i_top])) - exact[i_top]
        undecided = 0
        for i, (v, a) in enumerate(zip(row, o)):
            if float(v) == NEG_INF:
                assert a == 0, f"row {r}: a -inf entry got {a}"
                continue
            if abs(float(Fraction(float(v)) - tau)) <= tol:
                undecided += 1
                continue
            assert (a > 0) == (exact[i] > 0), (
                f"row {r}, entry {i}: support differs (ours {a}, exact {float(exact[i])})")
        if not undecided:
            k_star = sum(1 for p in exact if p > 0)
            assert int((np.asarray(o) > 0).sum()) == k_star, f"row {r}: k* differs"
