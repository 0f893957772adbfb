"""Maximization oracles over sets of bit-vectors: ``argmax_z <a_z, t>``.

SparseMAP (paper §4.2) touches the structure only through such an oracle.
Each oracle maps scores ``t : (..., D)`` to one best vertex per slice,
``z : (..., D)`` with 0/1 entries in ``t``'s dtype.
"""
import numpy as np

from .backend import xp_of

__all__ = ["bitvector_oracle", "budget_oracle"]


def bitvector_oracle(t):
    """Best vertex of ``{0,1}^D``: ``z_i = 1[t_i > 0]`` (O(D); paper §5.3).

    Ties (``t_i = 0``) switch the bit off.
    """
    return (t > 0).astype(t.dtype)


def budget_oracle(B):
    """Oracle over ``{z ∈ {0,1}^D : Σ z <= B}`` (paper App. A).

    The returned function switches on the (at most ``B``) largest entries of
    ``t`` among the positive ones: O(D log D) by sorting.  Ties between equal
    scores go to the lower index.
    """
    if isinstance(B, bool) or not isinstance(B, (int, np.integer)):
        raise TypeError(f"budget B must be an integer, got {type(B).__name__} {B!r}")
    if B < 0:
        raise ValueError(f"budget B must be non-negative, got {B}")
    B = int(B)

    def oracle(t):
        xp = xp_of(t)
        order = xp.argsort(-t, axis=-1, kind="stable")           # (..., D) best first
        rank = xp.argsort(order, axis=-1)                         # rank of each entry
        return ((t > 0) & (rank < B)).astype(t.dtype)

    oracle.budget = B
    oracle.__name__ = f"budget_oracle({B})"
    return oracle
