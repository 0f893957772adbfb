"""Brute-force enumeration of bit-vectors: references for tests and checkers.

Everything here is exponential in D and deliberately simple, so that it can
serve as an *independent* reference for the fast structured algorithms
(``kbest_bitvectors``, ``sparsemap``).  Keep D small (D <= 16).
"""
from typing import Any

import numpy as np

from ._types import Array
from .numerics import bit_codes

__all__ = ["all_bitvectors", "bitvector_index", "bitvector_scores"]

_MAX_D = 20


def all_bitvectors(D: int, dtype: Any = bool) -> np.ndarray:
    """All 2^D bit-vectors as rows of a ``(2^D, D)`` array.

    Row ``j`` is the binary expansion of ``j`` with bit ``i`` (column ``i``)
    worth ``2^i``: row 1 is ``[1, 0, ..., 0]``.
    """
    if not 0 <= D <= _MAX_D:
        raise ValueError(f"D must be between 0 and {_MAX_D} for enumeration, got {D}")
    j = np.arange(2 ** D)[:, None]
    return ((j >> np.arange(D)[None, :]) & 1).astype(dtype)


def bitvector_index(bits: Array) -> np.ndarray:
    """Inverse of :func:`all_bitvectors`: ``(..., D)`` bits -> ``(...,)`` int64 row indices."""
    bits = np.asarray(bits)
    if bits.shape[-1] > 32:
        raise ValueError(f"bitvector_index: D = {bits.shape[-1]} > 32 has no single int64 index; "
                         f"use refimpl.numerics.bit_codes")
    return bit_codes(bits)[..., 0]


def bitvector_scores(t: Array) -> np.ndarray:
    """Scores ``s_z = <a_z, t>`` of every bit-vector: ``t (..., D)`` -> ``(..., 2^D)``."""
    t = np.asarray(t)
    return t @ all_bitvectors(t.shape[-1], dtype=t.dtype).T
