"""SparseMAP by the active-set method, batched; and its backward pass.

    SparseMAP(t) = argmin_{ξ ∈ Δ^{|Z|}} ||A ξ - t||²            (paper §4.2, Eq. 1)

``A`` has one column ``a_z ∈ {0,1}^D`` per structure; it is never built: the
structure enters only through a maximization oracle ``z(t) = argmax_z <a_z, t>``
(:mod:`refimpl.oracles`).  The marginals ``μ = A ξ*`` are unique; the
active-set method returns a sparse ``ξ*`` (support <= D + 1).
Derivation of the KKT system and of the backward pass: docs/derivations.md §4.
"""
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import check_grad, check_scores
from .backend import xp_of

__all__ = ["SparseMAPResult", "sparsemap", "sparsemap_vjp"]


@dataclass(frozen=True)
class SparseMAPResult:
    """Output of :func:`sparsemap`.

    vertices : (..., S, D) 0/1 active structures in ``t``'s dtype (padding rows 0).
    weights : (..., S) their probabilities ξ_S (> 0 on the active set, 0 on padding).
    marginals : (..., D) ``μ = Σ_s weights_s vertices_s``.
    n_iter : active-set iterations taken by the slowest example.
    """
    vertices: Any
    weights: Any
    marginals: Any
    n_iter: int

    @property
    def support(self):
        """(..., S) bool: which rows of ``vertices`` carry probability."""
        return self.weights > 0


def _bordered(G, active):
    """The bordered KKT matrix ``[[0, 1ᵀ], [1, G]]`` over each active set.

    G : (N, P, P) Gram matrix of the slots, active : (N, P) bool.  Inactive
    slots get a decoupled unit diagonal, so their solution entries are 0 and
    every example has the same matrix size.  Returns (N, P+1, P+1).
    """
    xp = xp_of(G)
    N, P = active.shape
    a = active.astype(G.dtype)
    M = xp.zeros((N, P + 1, P + 1), dtype=G.dtype)
    M[:, 0, 1:] = a
    M[:, 1:, 0] = a
    M[:, 1:, 1:] = G * a[:, :, None] * a[:, None, :] + xp.eye(P, dtype=G.dtype) * (1 - a)[:, None, :]
    return M


def _solve(M, active, top, rhs):
    """Solve ``M [τ; ξ] = [top; rhs]`` for bordered matrices ``M`` (N, P+1, P+1).

    Not ``G⁻¹``: G is singular whenever the zero vector is active.
    Returns ``τ : (N,)`` and ``ξ : (N, P)`` (0 on inactive slots).
    """
    xp = xp_of(M)
    b = xp.concatenate([xp.full((M.shape[0], 1), top, dtype=M.dtype),
                        xp.where(active, rhs, 0)], axis=1)        # (N, P+1)
    sol = xp.linalg.solve(M, b[:, :, None])[:, :, 0]
    return sol[:, 0], sol[:, 1:] * active


_FIELDS = ("t", "V", "Vt", "M", "xi", "active", "ids")


class _ActiveSets:
    """Padded active sets of the examples still running.

    Per example (row): P slots, reused after a drop; P grows by 8 (up to
    D + 2) when a row needs another.  ``V`` (n, P, D) vertices, ``Vt`` (n, P)
    their scores ``<a_z, t>``, ``M`` (n, P+1, P+1) the bordered KKT matrix
    ``[[0, 1ᵀ], [1, G]]`` of :func:`_bordered` with inactive slots decoupled
    (one border row and column written per added or dropped vertex), ``xi``
    (n, P) weights, ``active`` (n, P), ``ids`` (n,) each row's index in the
    batch.
    """

    @classmethod
    def start(cls, t, first):
        """One active vertex ``first (n, D)`` with weight 1 per example."""
        xp = xp_of(t)
        n, D = t.shape
        self = cls()
        self.t, self.ids, self.max_slots = t, xp.arange(n), D + 2
        P = min(8, self.max_slots)
        self.V = xp.zeros((n, P, D), dtype=t.dtype)
        self.V[:, 0] = first
        self.Vt = xp.zeros((n, P), dtype=t.dtype)
        self.Vt[:, 0] = xp.sum(first * t, axis=-1)
        self.M = xp.broadcast_to(xp.eye(P + 1, dtype=t.dtype), (n, P + 1, P + 1)).copy()
        self.M[:, 0, 0] = 0
        self.M[:, 0, 1] = self.M[:, 1, 0] = 1
        self.M[:, 1, 1] = xp.sum(first * first, axis=-1)
        self.xi = xp.zeros((n, P), dtype=t.dtype)
        self.xi[:, 0] = 1
        self.active = xp.zeros((n, P), dtype=bool)
        self.active[:, 0] = True
        return self

    def __len__(self):
        return self.t.shape[0]

    def take(self, mask):
        """The rows selected by ``mask (n,)``, as a new (copied) object."""
        part = _ActiveSets()
        part.max_slots = self.max_slots
        for name in _FIELDS:
            setattr(part, name, getattr(self, name)[mask])
        return part

    def grow(self):
        """Add 8 inactive slots (at most D + 2 in all)."""
        xp = xp_of(self.V)
        n, P = self.active.shape
        P_new = min(P + 8, self.max_slots)
        for name in ("V", "Vt", "xi", "active"):
            old = getattr(self, name)
            new = xp.zeros((n, P_new) + old.shape[2:], dtype=old.dtype)
            new[:, :P] = old
            setattr(self, name, new)
        M = xp.broadcast_to(xp.eye(P_new + 1, dtype=self.M.dtype), (n, P_new + 1, P_new + 1)).copy()
        M[:, :P + 1, :P + 1] = self.M
        self.M = M

    def solve(self):
        """``τ (n,)`` and ``ξ (n, P)`` solving each row's KKT system."""
        return _solve(self.M, self.active, 1.0, self.Vt)

    def overlaps(self, z):
        """``<a_j, z>`` for every slot j: (n, P)."""
        return (self.V @ z[:, :, None])[:, :, 0]

    def contains(self, z, g):
        """(n,) bool: is ``z`` already active?  For 0/1 vectors ``a = z`` iff
        ``<a, z> = |z|² = |a|²``; ``g`` are the overlaps."""
        xp = xp_of(z)
        zz = xp.sum(z * z, axis=-1, keepdims=True)
        sq = xp.diagonal(self.M, axis1=1, axis2=2)[:, 1:]
        return xp.any(self.active & (g == zz) & (sq == zz), axis=-1)

    def insert(self, mask, z, g):
        """In the rows where ``mask (n,)`` holds, add vertex ``z`` (n, D) with
        overlaps ``g = <a_j, z>`` (n, P) at weight 0, in the first free slot."""
        xp = xp_of(z)
        if bool(xp.any(mask & xp.all(self.active, axis=1))):
            self.grow()
        rows = xp.nonzero(mask)[0]
        slot = xp.argmin(self.active[rows], axis=1)                # (m,)
        z, g = z[rows], g[rows] * self.active[rows, :g.shape[1]]
        border = xp.concatenate([xp.ones((len(rows), 1)), g,       # [1; <a_j, z>] over active j
                                 xp.zeros((len(rows), self.active.shape[1] - g.shape[1]))], axis=1)
        q = slot + 1
        border[xp.arange(len(rows)), q] = xp.sum(z * z, axis=-1)
        self.M[rows, q, :] = border
        self.M[rows, :, q] = border
        self.V[rows, slot] = z
        self.Vt[rows, slot] = xp.sum(z * self.t[rows], axis=-1)
        self.xi[rows, slot] = 0
        self.active[rows, slot] = True

    def drop(self, mask, slot):
        """Remove ``slot (n,)`` from the active sets of the rows in ``mask``."""
        xp = xp_of(self.V)
        rows = xp.nonzero(mask)[0]
        q = slot[rows] + 1
        self.M[rows, q, :] = 0
        self.M[rows, :, q] = 0
        self.M[rows, q, q] = 1
        self.active[rows, slot[rows]] = False
        self.xi[rows, slot[rows]] = 0


def _step_back(xi_old, xi_new, active):
    """Move from feasible ``xi_old`` towards ``xi_new`` until a weight hits 0.

    ``α = min_{i: ξ_new,i < 0} ξ_old,i / (ξ_old,i - ξ_new,i)``; returns the
    new weights (n, P) and the slot (n,) attaining the minimum, which leaves.
    """
    xp = xp_of(xi_old)
    neg = active & (xi_new < 0)
    ratio = xp.where(neg, xi_old / xp.where(neg, xi_old - xi_new, 1), xp.inf)
    leave = xp.argmin(ratio, axis=1)                               # (n,)
    alpha = xp.minimum(xp.take_along_axis(ratio, leave[:, None], axis=1), 1)
    xi = xp.where(active, xp.maximum(xi_old + alpha * (xi_new - xi_old), 0), 0)
    return xi, leave


def _denoise(resid, t):
    """Round the residual to a grid far below the tolerance, so that entries
    equal up to rounding become exactly equal.

    Once ``μ_i = t_i`` the residual ``t_i - μ_i`` is zero in exact arithmetic,
    and entries of equal exact value differ only by rounding (``~1e-16``).
    An oracle such as ``1[r > 0]`` or "the B largest, ties to the lower index"
    would then pick its vertex by the sign or order of rounding errors, and
    the active-set path (hence the returned ξ) would jump under perturbations
    of t far below any tolerance.  Rounding to multiples of a power of two
    ``h ≈ 2^-36 (1 + ||t||_∞)`` (about 1.5e-11, far below ``tol``) maps such
    entries to the same value and the near-zero ones to 0; two values equal up
    to rounding straddle a grid line only with probability ~1e-5.
    """
    xp = xp_of(resid)
    scale = 1 + xp.max(xp.abs(t), axis=-1, keepdims=True)
    h = xp.exp2(xp.ceil(xp.log2(scale)) - 36)                      # (n, 1) power of two
    return xp.rint(resid / h) * h


def _iterate(sets, oracle, tol):
    """One active-set step for every running row; returns the (n,) mask of
    rows that have converged (their state is final)."""
    xp = xp_of(sets.t)
    tau, xi_new = sets.solve()
    has_neg = xp.any(sets.active & (xi_new < 0), axis=1)          # (n,)
    xi_old, sets.xi = sets.xi, xi_new
    if bool(xp.any(has_neg)):                                      # infeasible: step back, drop
        xi, leave = _step_back(xi_old, xi_new, sets.active)
        sets.xi = xp.where(has_neg[:, None], xi, xi_new)
        sets.drop(has_neg, leave)
    resid = sets.t - (sets.xi[:, None, :] @ sets.V)[:, 0, :]       # t - μ, (n, D)
    z = oracle(_denoise(resid, sets.t))                            # most violated vertex
    g = sets.overlaps(z)
    gain = xp.sum(z * resid, axis=-1) - tau                        # <a_z, t - μ> - τ
    converged = ~has_neg & ((gain <= tol * (1 + xp.max(xp.abs(sets.t), axis=-1)))
                            | sets.contains(z, g))
    add = ~has_neg & ~converged
    if bool(xp.any(add)):
        sets.insert(add, z, g)
    return converged


def sparsemap(t, oracle, max_iter=None, tol=1e-9, init=None):
    """Sparse structured distribution: SparseMAP by the active-set method.

    Solves ``argmin_{ξ ∈ Δ} ||A ξ - t||²`` (paper §4.2, Eq. 1) over the
    structures ``a_z ∈ {0,1}^D`` reachable by ``oracle``; equivalently the
    Euclidean projection ``μ`` of ``t`` onto the marginal polytope
    ``conv{a_z}``, written as a sparse convex combination of vertices.

    Each step solves the bordered KKT system ``[[0, 1ᵀ], [1, G]] [τ; ξ_S] =
    [1; A_Sᵀ t]`` on the active set S (``G = A_Sᵀ A_S``).  If some ``ξ_S < 0``
    it steps back to the first zero and drops that vertex; otherwise it calls
    the oracle on ``t - μ`` and stops when ``<a_ẑ, t - μ> <= τ + tol·(1 +
    ||t||_∞)`` (or ẑ is already active), else adds ẑ.  All examples iterate
    together; finished ones stay frozen until half the working set is done,
    then leave it.  Starts from ``oracle(t)``, or from ``init``.

    Parameters
    ----------
    t : (..., D) finite float scores.
    oracle : callable ``(n, D) -> (n, D)`` 0/1 maximizer, e.g.
        :func:`refimpl.bitvector_oracle` or :func:`refimpl.budget_oracle` (B).
    max_iter : iteration cap (default ``20 (D + 2)``); ``RuntimeError`` if hit.
    tol : optimality tolerance, relative to ``1 + ||t||_∞``.  The marginals
        are accurate to about ``1e-9 (1 + ||t||_∞)`` at the default: entries
        that differ by many orders of magnitude (say ``|t_i| >= 1e7`` beside
        O(1) entries) cannot be resolved by the solves, whose right-hand
        sides add them up (docs/derivations.md §4.2).
    init : None (start from ``oracle(t)``) or an (..., D) array of 0/1 starting
        vertices, one per example, each a vertex of the polytope (e.g. ``Σz <= B``
        for :func:`refimpl.budget_oracle`); the marginals do not depend on it.

    Returns
    -------
    :class:`SparseMAPResult` with arrays in ``t``'s dtype and device (the
    solves run in float64).  Support rows come first; ``S`` is the largest
    support size in the batch.
    """
    xp = check_scores(t, "t", allow_neg_inf=False)
    lead, D = t.shape[:-1], t.shape[-1]
    t64 = t.reshape(-1, D).astype(np.float64)                      # (N, D)
    max_iter = 20 * (D + 2) if max_iter is None else int(max_iter)
    if init is None:
        first = oracle(t64).astype(np.float64)
    else:
        if tuple(init.shape) != tuple(t.shape):
            raise ValueError(f"sparsemap: init must have t's shape {tuple(t.shape)} (one 0/1 "
                             f"starting vertex per example), got {tuple(init.shape)}")
        first = xp.asarray(init).reshape(-1, D).astype(np.float64)
    sets = _ActiveSets.start(t64, first)
    finished, n_iter = [], 0
    while len(sets):
        if n_iter >= max_iter:
            raise RuntimeError(f"sparsemap did not converge in max_iter={max_iter} active-set "
                               f"iterations ({len(sets)} examples left); raise max_iter or tol")
        converged = _iterate(sets, oracle, tol)
        n_iter += 1
        # A converged row stays converged (its state no longer changes), so the
        # working set is compacted only once half of it has finished.
        if 2 * int(xp.sum(converged)) >= len(sets):
            finished.append(sets.take(converged))
            sets = sets.take(~converged)
    return _result(finished, t64.shape[0], lead, t.dtype, n_iter)


def _result(finished, N, lead, dtype, n_iter):
    """Gather the finished rows and compact them: support rows first,
    ``S`` = the largest support in the batch."""
    xp = xp_of(finished[0].V)
    P, D = max(part.V.shape[1] for part in finished), finished[0].V.shape[2]
    V, xi = xp.zeros((N, P, D)), xp.zeros((N, P))
    for part in finished:
        p = part.V.shape[1]
        V[part.ids, :p], xi[part.ids, :p] = part.V, xp.where(part.active, part.xi, 0)
    keep = xi > 0                                                  # (N, P)
    S = max(int(xp.max(xp.sum(keep, axis=1))), 1)
    order = xp.argsort(~keep, axis=1, kind="stable")[:, :S]       # support slots first
    rows = xp.arange(N)[:, None]
    keep = keep[rows, order]                                       # (N, S)
    weights = xi[rows, order] * keep
    vertices = V[rows, order] * keep[:, :, None]                   # (N, S, D)
    marginals = (weights[:, None, :] @ vertices)[:, 0, :]
    return SparseMAPResult(vertices=vertices.astype(dtype).reshape(lead + (S, D)),
                           weights=weights.astype(dtype).reshape(lead + (S,)),
                           marginals=marginals.astype(dtype).reshape(lead + (D,)),
                           n_iter=n_iter)


def sparsemap_vjp(result, grad_weights):
    """Gradient w.r.t. ``t`` of ``Σ_z ξ_z g_z`` through the active set.

    On the support S the KKT system ``[[0, 1ᵀ], [1, G]] [τ; ξ_S] = [1; A_Sᵀ t]``
    holds with S fixed, so ``∂ξ_S/∂t = Q A_Sᵀ`` with ``Q`` the lower-right
    block of ``[[0, 1ᵀ], [1, G]]⁻¹`` (``= G⁻¹ - G⁻¹11ᵀG⁻¹/(1ᵀG⁻¹1)`` when G is
    invertible; design.md §3).  Hence the VJP

        ∂L/∂t = A_S Q g_S,

    computed by solving the bordered system with right-hand side ``[0; g_S]``.

    result : :class:`SparseMAPResult`; grad_weights : (..., S) cotangent of
    ``result.weights`` (entries on padding rows are ignored).
    Returns ``(..., D)`` in the result's dtype.
    """
    check_grad(grad_weights, result.weights, "grad_weights")
    xp = xp_of(result.vertices, grad_weights)
    V, w = result.vertices, result.weights
    lead, (S, D) = V.shape[:-2], V.shape[-2:]
    V64 = V.reshape(-1, S, D).astype(np.float64)                   # (N, S, D)
    support = w.reshape(-1, S) > 0
    G = xp.einsum("nsd,nrd->nsr", V64, V64)
    _, y = _solve(_bordered(G, support), support, 0.0,
                  grad_weights.reshape(-1, S).astype(np.float64))
    grad_t = xp.einsum("ns,nsd->nd", y, V64)                       # A_S Q g_S
    return grad_t.astype(w.dtype).reshape(lead + (D,))
