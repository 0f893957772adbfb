"""Public gradient checkers: random-direction VJP checks in float64.

These are the tools an implementer of another library uses to check a
gradient, and the ones our own test-suite uses.  They follow two rules:

* **float64 only.**  Central differences in float32 are too coarse to tell a
  right Jacobian from a slightly wrong one; a float32 input is refused.
* **Never across a kink.**  The mappings here are piecewise smooth (sparsemax
  is piecewise linear).  Before differencing, the checker evaluates a
  *piece* signature (by default the zero pattern of the output, i.e. the
  support) at ``x``, ``x + eps v`` and ``x - eps v``; if it changes, the
  difference quotient means nothing and :class:`NondifferentiableError` is
  raised instead of a wrong verdict.

A check compares, for random directions ``v`` (input space) and ``u``
(output space), the directional derivative of ``<u, f(x)>`` along ``v``
computed by central differences with ``<vjp(x, u), v>``.  A failure raises
``AssertionError`` that prints both numbers.
"""
from typing import Callable, Optional

import numpy as np

from ._types import Array, ArrayFunction
from .backend import to_numpy, xp_of

__all__ = ["NondifferentiableError", "check_vjp", "numerical_jacobian",
           "check_against_enumeration", "zero_pattern"]


class NondifferentiableError(ValueError):
    """Raised when a finite difference would straddle a kink (a change of piece)."""


def zero_pattern(y: Array) -> np.ndarray:
    """Default piece signature: which outputs are exactly zero (the support)."""
    return to_numpy(y) == 0


def _require_float64(x, name="x"):
    if not hasattr(x, "dtype") or x.dtype != np.float64:
        dtype = getattr(x, "dtype", type(x).__name__)
        raise TypeError(
            f"{name} must be a float64 array for finite differences, got {dtype}; "
            f"convert it with x.astype('float64')")


def _same_piece(p0, p1):
    if isinstance(p0, tuple):
        return len(p0) == len(p1) and all(_same_piece(a, b) for a, b in zip(p0, p1))
    a, b = np.asarray(to_numpy(p0)), np.asarray(to_numpy(p1))
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _piece_of(f, piece):
    if piece is None:
        return lambda x: zero_pattern(f(x))
    return piece


def _refuse_kink(p0, piece_fn, x_plus, x_minus, where):
    """Raise :class:`NondifferentiableError` unless both steps stay on piece ``p0``."""
    for side, xs in (("+", x_plus), ("-", x_minus)):
        if not _same_piece(p0, piece_fn(xs)):
            raise NondifferentiableError(
                f"the piece (support) of f changes between x and the {side} step of {where}; "
                f"f is not differentiable there, so no finite difference is taken: pick a "
                f"point away from the kink or a smaller eps")


def _start(f, x, piece):
    """Check that ``x`` and ``f(x)`` are float64; return ``xp``, the piece function,
    ``y = f(x)`` and the piece of ``x``."""
    _require_float64(x)
    piece_fn = _piece_of(f, piece)
    y = f(x)
    _require_float64(y, "f(x)")
    return xp_of(x), piece_fn, y, piece_fn(x)


def check_vjp(f: ArrayFunction, vjp: Callable[[Array, Array], Array], x: Array, *,
              piece: Optional[ArrayFunction] = None, n_directions: int = 4, eps: float = 1e-6,
              rtol: float = 1e-6, atol: float = 1e-9, seed: int = 0) -> None:
    """Check ``vjp`` against central differences of ``f`` at ``x``.

    Parameters
    ----------
    f : callable, ``x -> y`` (arrays, float64).
    vjp : callable, ``(x, u) -> J(x)^T u``, an array shaped like ``x``.
    x : float64 array, the point.
    piece : callable ``x -> signature`` or None.  The check refuses to
        difference when ``piece(x + eps v)`` or ``piece(x - eps v)`` differ
        from ``piece(x)``.  Default: the zero pattern of ``f(x)``.
    n_directions : number of random (v, u) pairs.
    eps, rtol, atol : step and tolerances; a direction passes when
        ``|numeric - analytic| <= atol + rtol * max(|numeric|, |analytic|, scale)``
        with ``scale`` the largest absolute entry of the VJP.

    Raises ``AssertionError`` (with both numbers) on a mismatch,
    ``NondifferentiableError`` when a step crosses a kink, ``TypeError`` for
    non-float64 input.
    """
    xp, piece_fn, y, p0 = _start(f, x, piece)
    rng = np.random.default_rng(seed)
    for d in range(n_directions):
        v = xp.asarray(rng.standard_normal(x.shape))
        u = xp.asarray(rng.standard_normal(y.shape))
        x_plus, x_minus = x + eps * v, x - eps * v
        _refuse_kink(p0, piece_fn, x_plus, x_minus, f"x ± eps*v (eps={eps:g}, direction {d})")
        numeric = float(xp.sum(u * (f(x_plus) - f(x_minus)))) / (2 * eps)
        g = vjp(x, u)
        if tuple(g.shape) != tuple(x.shape):
            raise AssertionError(f"vjp returned shape {tuple(g.shape)}, expected {tuple(x.shape)}")
        analytic = float(xp.sum(g * v))
        scale = float(xp.max(xp.abs(g))) if g.size else 0.0
        tol = atol + rtol * max(abs(numeric), abs(analytic), scale)
        if not abs(numeric - analytic) <= tol:
            raise AssertionError(
                f"VJP mismatch in direction {d}: finite differences give {numeric:.12g}, "
                f"the VJP gives {analytic:.12g} (abs err {abs(numeric - analytic):.3g}, "
                f"tolerance {tol:.3g}, eps={eps:g})")


def numerical_jacobian(f: ArrayFunction, x: Array, eps: float = 1e-6, *,
                       piece: Optional[ArrayFunction] = None) -> Array:
    """Dense central-difference Jacobian, shape ``f(x).shape + x.shape`` (float64).

    Meant for small inputs (one pair of evaluations per input entry).
    Raises ``NondifferentiableError`` when a step crosses a kink (see
    :func:`check_vjp`).
    """
    xp, piece_fn, y, p0 = _start(f, x, piece)
    jac = xp.zeros(y.shape + x.shape, dtype=np.float64)
    flat = jac.reshape(y.shape + (x.size,))
    for i in range(x.size):
        e = xp.zeros(x.size, dtype=np.float64)
        e[i] = eps
        e = e.reshape(x.shape)
        _refuse_kink(p0, piece_fn, x + e, x - e, f"input entry {i} ± {eps:g}")
        flat[..., i] = (f(x + e) - f(x - e)) / (2 * eps)
    return jac


def check_against_enumeration(t: Array, vertices: Array, weights: Array,
                              reference: Array, *, atol: float = 1e-9) -> None:
    """Check a sparse structured distribution against a dense reference over all 2^D.

    Parameters
    ----------
    t : (..., D) bit scores (only its shape is used).
    vertices : (..., S, D) 0/1 assignments with ``weights : (..., S)`` on them
        (padding rows carry weight 0).
    reference : (..., 2^D) dense distribution over every bit-vector, in the
        order of :func:`refimpl.enumeration.all_bitvectors` (e.g. the full
        sparsemax over ``A^T t`` computed by brute force).

    Scatters ``weights`` onto the enumeration and raises ``AssertionError``
    (naming the batch row, bit-vector and both probabilities) where they
    differ by more than ``atol``.
    """
    from .enumeration import bitvector_index
    t, vertices, weights, reference = (to_numpy(a) for a in (t, vertices, weights, reference))
    D = t.shape[-1]
    batch = t.shape[:-1]
    if reference.shape != batch + (2 ** D,):
        raise ValueError(f"reference must have shape {batch + (2 ** D,)}, got {reference.shape}")
    idx = bitvector_index(vertices > 0.5)                      # (..., S)
    dense = np.zeros(batch + (2 ** D,), dtype=np.float64)
    np.add.at(dense.reshape(-1, 2 ** D),
              (np.arange(int(np.prod(batch, dtype=int)))[:, None], idx.reshape(-1, idx.shape[-1])),
              weights.reshape(-1, weights.shape[-1]).astype(np.float64))
    err = np.abs(dense - reference)
    if err.size and err.max() > atol:
        flat = int(np.argmax(err))
        row, z = np.unravel_index(flat, err.shape)[:-1], flat % (2 ** D)
        raise AssertionError(
            f"distribution differs from the enumeration at batch row {tuple(int(r) for r in row)}, "
            f"bit-vector #{z}: ours {dense.reshape(-1)[flat]:.12g}, reference "
            f"{reference.reshape(-1)[flat]:.12g} (max abs err {err.max():.3g} > atol {atol:g})")
