"""Adapter: entmax's bisection solver at alpha = 2 (sparsemax) for the cross-checker.

``entmax.entmax_bisect`` is iterative: its forward is accurate to the bisection's
tolerance, not to a few ulps, so check it with a forward tolerance of your choice
and the VJP under its exact budget:

    python -m refimpl.crosscheck --mapping sparsemax --framework torch \
        --impl docs/examples/entmax_bisect_adapter.py:sparsemax_bisect --fwd-atol 1e-6
"""
import entmax


def sparsemax_bisect(x, dim=-1):
    """``x : (..., K)`` -> sparsemax along ``dim`` by bisection (entmax with alpha = 2)."""
    return entmax.entmax_bisect(x, alpha=2, dim=dim)
