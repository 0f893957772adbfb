"""Independent references shared by the test files (never refimpl's code)."""
from fractions import Fraction

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
