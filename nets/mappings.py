"""Tensor wrappers of the refimpl sparse mappings: forward and VJP from refimpl.

Each wrapper calls the refimpl function on the Tensor's array for the
forward, and the matching refimpl VJP for the backward, so the autodiff
layer adds no math of its own beyond the chain rule through the structure's
scores.  Re-exported from :mod:`nets.ops`.
"""
import refimpl
from refimpl.sparsemax import _sparsemax_last, _sparsemax_vjp   # checked-once internals
from refimpl.topk import _kbest_bitvectors

from .autodiff import Tensor, as_tensor, make_output

__all__ = ["sparsemax", "topk_sparsemax", "structured_topk", "sparsemap"]


def sparsemax(scores, axis=-1):
    """``refimpl.sparsemax`` along ``axis``: (..., K) -> (..., K) sparse probabilities."""
    scores = as_tensor(scores)
    probs = refimpl.sparsemax(scores.data, axis=axis)

    def vjp(g):
        """J = diag(u) - u uᵀ/|S|, u = 1[probs > 0] (``refimpl.sparsemax_vjp``)."""
        return (_sparsemax_vjp(probs, g, axis=axis),)     # probs: our forward output

    return make_output(probs, (scores,), vjp, "sparsemax")


def topk_sparsemax(scores, k, axis=-1):
    """``refimpl.topk_sparsemax``: sparsemax of the k largest scores (the rest get 0)."""
    scores = as_tensor(scores)
    probs = refimpl.topk_sparsemax(scores.data, k, axis=axis)

    def vjp(g):
        """J = diag(u) - u uᵀ/|S| with the support S inside the top-k set."""
        return (_sparsemax_vjp(probs, g, axis=axis),)     # = refimpl.topk_sparsemax_vjp

    return make_output(probs, (scores,), vjp, "topk_sparsemax")


def _require_tensor(t, op):
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: t must be a Tensor of bit scores, got {type(t).__name__}; "
                        f"wrap it with nets.Tensor(array)")
    return t


def structured_topk(t, k):
    """Top-k sparsemax over the 2^D bit-vectors scored by ``s_z = <z, t>`` (paper §4.1).

    t : Tensor (..., D) of bit scores; k : int, ``1 <= k <= 2^D``.
    Returns ``bits`` : constant array (..., k, D) of 0/1 in ``t``'s dtype (the
    k best bit-vectors, best first), and ``probs`` : Tensor (..., k) =
    sparsemax of their scores (zero beyond the support).
    """
    return _structured_topk(_require_tensor(t, "structured_topk"), k, validate=True)


def _structured_topk(t, k, validate):
    """:func:`structured_topk`; ``validate=False`` for callers that checked that
    ``t`` is finite themselves (the estimators): no host sync in the forward."""
    bits, scores = (refimpl.kbest_bitvectors if validate else _kbest_bitvectors)(t.data, k)
    bits = bits.astype(t.dtype)
    probs = _sparsemax_last(scores, validate=False)       # finite: kbest_bitvectors checked t

    def vjp(g):
        """J = J_sparsemax · A with A = bits (scores = A t, A fixed on the piece):
        Jᵀ g = Aᵀ (J_sparsemaxᵀ g) = Σ_j g_scores_j bits_j."""
        g_scores = _sparsemax_vjp(probs, g, axis=-1)                      # (..., k)
        return (t.xp.matmul(g_scores[..., None, :], bits)[..., 0, :],)     # (..., D)

    return bits, make_output(probs, (t,), vjp, "structured_topk")


def sparsemap(t, oracle, **solver_options):
    """SparseMAP over the vertices reachable by ``oracle`` (paper §4.2).

    t : Tensor (..., D); oracle : e.g. ``refimpl.bitvector_oracle`` or
    ``refimpl.budget_oracle(B)``; ``solver_options`` go to ``refimpl.sparsemap``
    (``max_iter``, ``tol``, ``init``).
    Returns ``vertices`` : constant array (..., S, D) in ``t``'s dtype and
    ``weights`` : Tensor (..., S), a distribution over the vertices (0 on padding).
    """
    t = _require_tensor(t, "sparsemap")
    result = refimpl.sparsemap(t.data, oracle, **solver_options)

    def vjp(g):
        """∂L/∂t = A_S Q g_S through the active set (``refimpl.sparsemap_vjp``)."""
        return (refimpl.sparsemap_vjp(result, g),)

    vertices = result.vertices.astype(t.dtype, copy=False)
    return vertices, make_output(result.weights, (t,), vjp, "sparsemap")
