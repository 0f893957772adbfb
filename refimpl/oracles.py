"""Maximization oracles over sets of bit-vectors: ``argmax_z <a_z, t>``.

SparseMAP (paper §4.2) touches the structure only through such an oracle.
Each oracle maps scores ``t : (..., D)`` to one best vertex per slice,
``z : (..., D)`` with 0/1 entries in ``t``'s dtype.

The two built-in oracles also carry what is known in closed form about
their polytopes (:mod:`refimpl._faces`): ``face_dim(vertices, support)``,
the dimension of the minimal face containing a support's marginals, and
``warm_start(t)``, vertices spanning the face of the projection of ``t``.
A user oracle may define either; :func:`refimpl.sparsemap` uses them when
present.
"""
import numpy as np

from ._types import Array, ArrayFunction
from ._faces import budget_face_dim, budget_warm_start, cube_face_dim, cube_warm_start
from .backend import xp_of

__all__ = ["bitvector_oracle", "budget_oracle"]


def bitvector_oracle(t: Array) -> Array:
    """Best vertex of ``{0,1}^D``: ``z_i = 1[t_i > 0]`` (O(D); paper §5.3).

    Ties (``t_i = 0``) switch the bit off.
    """
    return (t > 0).astype(t.dtype)


bitvector_oracle.face_dim = cube_face_dim            # type: ignore[attr-defined]
bitvector_oracle.warm_start = cube_warm_start        # type: ignore[attr-defined]


def budget_oracle(B: int) -> ArrayFunction:
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

    def oracle(t: Array) -> Array:
        xp = xp_of(t)
        order = xp.argsort(-t, axis=-1, kind="stable")           # (..., D) best first
        rank = xp.argsort(order, axis=-1)                         # rank of each entry
        return ((t > 0) & (rank < B)).astype(t.dtype)

    oracle.budget = B                                # type: ignore[attr-defined]
    oracle.face_dim = budget_face_dim(B)             # type: ignore[attr-defined]
    oracle.warm_start = budget_warm_start(B)         # type: ignore[attr-defined]
    oracle.__name__ = f"budget_oracle({B})"
    return oracle
