"""SparseMAP by the active-set method, batched; and its backward pass.

    SparseMAP(t) = argmin_{ξ ∈ Δ^{|Z|}} ||A ξ - t||²            (paper §4.2, Eq. 1)

``A`` has one column ``a_z ∈ {0,1}^D`` per structure; it is never built: the
structure enters only through a maximization oracle ``z(t) = argmax_z <a_z, t>``
(:mod:`refimpl.oracles`).  The marginals ``μ = A ξ*`` are unique; ``ξ*`` is
not, and the solver returns a sparse one.  For the cube and the budget
polytope its support spans the minimal face of the marginal polytope that
contains ``μ`` (``SparseMAPResult.spans_face`` says where).
Derivation of the KKT system and of the backward pass: docs/derivations.md §4;
the solver's state and its exact arithmetic: :mod:`refimpl._active_set`.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._active_set import WorkingSet, solve_refined, step_back, tie_grid
from ._faces import first_vertices
from ._checks import check_grad, check_scores
from .backend import to_numpy, xp_of
from .oracles import budget_oracle
from ._types import Array, ArrayFunction as Oracle

__all__ = ["SparseMAPResult", "sparsemap", "sparsemap_vjp"]


@dataclass(frozen=True)
class SparseMAPResult:
    """Output of :func:`sparsemap`.

    vertices : (..., S, D) 0/1 active structures in ``t``'s dtype (padding rows 0).
    weights : (..., S) their probabilities ξ_S (> 0 on the support, 0 on padding).
    marginals : (..., D) ``μ = Σ_s weights_s vertices_s`` (for the cube and the
        budget polytope the closed-form projection, equal to it up to rounding).
    n_iter : active-set iterations taken by the slowest example.
    spans_face : (...,) bool, True where the support's affine hull has the
        dimension of the minimal face of the marginal polytope containing
        ``μ``, i.e. where :func:`sparsemap_vjp` is the exact derivative of the
        marginals (docs/derivations.md §4.3).  ``None`` when the oracle does
        not declare its faces (an oracle may carry a ``face_dim(vertices,
        support)`` function, as :func:`refimpl.bitvector_oracle` and
        :func:`refimpl.budget_oracle` do).
    """
    vertices: Array
    weights: Array
    marginals: Array
    n_iter: int
    spans_face: Optional[Array] = None

    @property
    def support(self) -> Array:
        """(..., S) bool: which rows of ``vertices`` carry probability."""
        return self.weights > 0


def _check_oracle(oracle):
    if oracle is budget_oracle:
        raise TypeError("oracle: budget_oracle is a factory; pass budget_oracle(B), the "
                        "oracle of the budget polytope with at most B bits on")
    if not callable(oracle):
        raise TypeError(f"oracle must be a function mapping scores (n, D) to one best 0/1 vertex "
                        f"per row (n, D), e.g. refimpl.bitvector_oracle or "
                        f"refimpl.budget_oracle(B); got {type(oracle).__name__} {oracle!r}")


def _first_vertex(oracle, t64, init):
    """The starting vertex of every row: ``oracle(t)`` or the given ``init``."""
    xp = xp_of(t64)
    z = oracle(t64) if init is None else init.reshape(t64.shape)
    name = "oracle" if init is None else "init"
    if not hasattr(z, "shape") or tuple(z.shape) != tuple(t64.shape):
        got = tuple(z.shape) if hasattr(z, "shape") else type(z).__name__
        raise ValueError(f"{name} must give one 0/1 vertex per row, shape {tuple(t64.shape)}; "
                         f"got {got}")
    z = z.astype(np.float64)
    if bool(xp.any((z != 0) & (z != 1))):
        raise ValueError(f"{name} must give 0/1 vertices; got entries other than 0 and 1")
    return z


def _iterate(ws, oracle, tol):
    """One active-set step for every running row.

    Computes, for all rows at once, both branches of the step (step back and
    drop where the new weights are infeasible; else ask the oracle for the
    most violated vertex and add it unless the gain is within tolerance),
    reads one small vector of flags on the host, and applies the branches
    that some row needs.  Returns the number of rows now converged.
    """
    xp = xp_of(ws.tp)
    D = ws.tp.shape[1]
    xi_new, tau = ws.solve()
    has_neg = ~ws.done & xp.any(ws.active & (xi_new < 0), axis=1)          # (n,)
    # most violated vertex at the new weights: z = oracle(t - μ)
    resid = ws.tp - (xi_new[:, None, :] @ ws.X)[:, 0, :]                    # t - μ, (n, D)
    touched = ws.count > 0                                                   # what differs
    z = oracle(tie_grid(resid, tol * _scale(ws.tabs, touched), D)).astype(resid.dtype)
    Xz, g, kcol, kzz, bz = ws.candidate(z)
    gain = bz - xp.sum(xi_new * g, axis=1) - tau                             # <a_z - a_s, t - μ>
    u = solve_refined(ws.K, ws.Kinv, kcol[:, :, None])[:, :, 0]
    sigma = kzz - xp.sum(kcol * u, axis=1)                                    # > 0: independent
    improves = (gain > tol * _scale(ws.tabs, touched | (Xz != 0))) & (sigma > 1e-9 * kzz)
    full = xp.all(ws.active, axis=1)
    can_grow = ws.slots < ws.max_slots
    add = ~ws.done & ~has_neg & improves & (~full | can_grow)
    ws.done = ws.done | (~has_neg & ~add)
    flags = to_numpy(xp.stack([xp.any(has_neg), xp.any(add), xp.any(add & full),
                               xp.sum(ws.done)]))                          # the one host sync
    any_neg, any_add, grow, n_done = (int(f) for f in flags)
    if grow:                                       # one more chunk of slots
        ws.grow()
        u, kcol, xi_new = (_pad(a, ws.slots) for a in (u, kcol, xi_new))
    xi_old = ws.xi                                 # the feasible weights of this step's start
    ws.xi = xi_new
    if any_add:
        slot = xp.argmin(ws.active, axis=1)                                   # first free slot
        ws.insert(add, slot, Xz, kcol, kzz, bz, u, sigma)
    if any_neg:
        xi_back, leave = step_back(xi_old, xi_new, ws.active)
        ws.xi = xp.where(has_neg[:, None], xi_back, ws.xi)
        ws.remove(has_neg, leave)
    return n_done


def _pad(a, P):
    """Zero-pad the slot axis (axis 1) of ``a`` (n, p) to ``P``."""
    xp = xp_of(a)
    return xp.concatenate([a, xp.zeros((a.shape[0], P - a.shape[1]), dtype=a.dtype)], axis=1)


def sparsemap(t: Array, oracle: Oracle, max_iter: Optional[int] = None, tol: float = 1e-10,
              init: Optional[Array] = None) -> SparseMAPResult:
    """Sparse structured distribution: SparseMAP by the active-set method.

    Solves ``argmin_{ξ ∈ Δ} ||A ξ - t||²`` (paper §4.2, Eq. 1) over the
    structures ``a_z ∈ {0,1}^D`` reachable by ``oracle``; equivalently the
    Euclidean projection ``μ`` of ``t`` onto the marginal polytope
    ``conv{a_z}``, written as a sparse convex combination of vertices.

    Each step solves the KKT system ``[[0, 1ᵀ], [1, G]] [τ; ξ_S] = [1; A_Sᵀ t]``
    on the active set S (``G = A_Sᵀ A_S``).  If some ``ξ_S < 0`` it steps back
    to the first zero and drops that vertex; otherwise it calls the oracle on
    ``t - μ`` and stops when the best vertex gains at most ``tol · (1 +
    max |t_i|)`` over the active ones, the max taken over the coordinates
    where the active vertices differ (so a huge coordinate that no structure
    changes does not loosen the test), else adds it.  All examples iterate
    together.  Where the oracle has a ``warm_start`` (the cube and the budget
    polytope) the active set starts from vertices spanning the face of the
    closed-form projection and is certified by that same stopping test in
    one iteration (docs/derivations.md §4.5); else it starts from
    ``oracle(t)`` or ``init``.

    Parameters
    ----------
    t : (..., D) finite float scores.
    oracle : callable ``(n, D) -> (n, D)`` 0/1 maximizer, e.g.
        :func:`refimpl.bitvector_oracle` or :func:`refimpl.budget_oracle` (B).
    max_iter : iteration cap (default ``20 (D + 2)``); ``RuntimeError`` if hit.
    tol : optimality tolerance (relative, see above).  Warm-started rows
        have the closed-form marginals and a support spanning μ's minimal
        face (except at ties between free coordinates); the plain active set
        has marginals within about ``tol`` and may stop short of the face
        (``spans_face`` says which rows).
    init : optional (..., D) 0/1 starting vertices, each a vertex of the
        polytope (not checked): run the plain active set from there (e.g. the
        authors' random initial vertex).  Default: the oracle's warm start, or
        ``oracle(t)``.

    Returns
    -------
    :class:`SparseMAPResult` with arrays in ``t``'s dtype and device (the
    solves run in float64).  Support rows come first; ``S`` is the largest
    support size in the batch.  The result depends on each row alone: the
    same ``t`` gives the same result bit for bit, and permuting the rows of
    a batch permutes the result.
    """
    xp = check_scores(t, "t", allow_neg_inf=False)
    _check_oracle(oracle)
    lead, D = t.shape[:-1], t.shape[-1]
    t64 = t.reshape(-1, D).astype(np.float64, copy=False)                              # (N, D)
    if init is not None and (not hasattr(init, "shape") or tuple(init.shape) != tuple(t.shape)):
        raise ValueError(f"init must have the shape of t {tuple(t.shape)}, got "
                         f"{tuple(init.shape) if hasattr(init, 'shape') else type(init).__name__}")
    max_iter = 20 * (D + 2) if max_iter is None else int(max_iter)
    warm = getattr(oracle, "warm_start", None)
    if init is None and warm is not None:
        V, w, mu = warm(t64)
        V, w = first_vertices(V, w / xp.sum(w, axis=1, keepdims=True))
        ok = _certified(t64, oracle, tol, V, mu)
        ws, n_iter = None, 1
        if bool(xp.all(ok)):                          # the usual case: no indexing
            parts = [(None, V, w, mu)]
        else:                                          # not certified: iterate from a vertex
            rest = ~ok
            parts = [(xp.nonzero(ok)[0], V[ok], w[ok], mu[ok])]
            ws = WorkingSet.start(t64[rest], V[rest, 0], V[rest, 0])
            ws.ids = xp.nonzero(rest)[0]
    else:
        parts, n_iter = [], 0
        origin = _first_vertex(oracle, t64, None)
        first = origin if init is None else _first_vertex(oracle, t64, init)
        ws = WorkingSet.start(t64, first, origin)
    if ws is not None:
        n_iter += _active_set(ws, oracle, tol, max_iter - n_iter, parts)
    return _result(parts, t64.shape[0], lead, t.dtype, n_iter, oracle)


def _certified(t, oracle, tol, V, mu):
    """(n,) bool: is the decomposition of ``μ`` over ``V`` optimal?  The active
    set's own stopping test with ``a_ref = V[:, 0]``: no vertex gains more than
    the tolerance, ``<a_z - a_ref, t - μ> <= tol (1 + max |t_i|)``, the max over
    the coordinates where the support or ``z`` differ (``0 < μ_i < 1``, or
    ``z_i != a_ref,i``)."""
    xp = xp_of(t)
    ref = V[:, 0]
    resid = t - mu
    tabs = xp.abs(t)
    touched = (mu > 0) & (mu < 1)
    z = oracle(tie_grid(resid, tol * _scale(tabs, touched), t.shape[1])).astype(t.dtype)
    dz = z - ref
    return xp.sum(dz * resid, axis=1) <= tol * _scale(tabs, touched | (dz != 0))


def _scale(tabs, where):
    """The tolerance's scale per row: ``1 + max |t_i|`` over the coordinates ``where`` (n, D)."""
    xp = xp_of(tabs)
    return 1 + xp.max(xp.where(where, tabs, 0), axis=1)


def _active_set(ws, oracle, tol, max_iter, parts):
    """Iterate ``ws`` to convergence, appending ``(ids, vertices, weights)``
    of the finished rows to ``parts``; returns the iterations taken."""
    xp = xp_of(ws.tp)
    n_iter = 0
    while len(ws):
        if n_iter >= max_iter:
            rows = to_numpy(ws.ids[~ws.done])
            raise RuntimeError(f"sparsemap did not converge in max_iter={max_iter} active-set "
                               f"iterations: {len(rows)} rows left (batch rows "
                               f"{rows[:8].tolist()}{' ...' if len(rows) > 8 else ''}); "
                               f"raise max_iter or tol")
        n_done = _iterate(ws, oracle, tol)
        n_iter += 1
        if 2 * n_done >= len(ws):                    # compact once half have finished
            done = ws.take(ws.done)
            V = (done.X + done.v[:, None, :]) * done.active[:, :, None]
            w = xp.where(done.active, done.xi, 0)
            parts.append((done.ids, V, w, _mix(V, w)))
            ws = ws.take(~ws.done)
    return n_iter


def _result(parts, N, lead, dtype, n_iter, oracle):
    """Gather the finished rows; support slots first, ``S`` = the largest support."""
    xp = xp_of(parts[0][1])
    compact = parts[0][0] is None                     # the warm start, every row in order
    parts = [p for p in parts if p[0] is None or len(p[0])]
    if len(parts) == 1 and (compact or len(parts[0][0]) == N):
        V, xi, mu = parts[0][1:]
    else:
        P, D = max(p[1].shape[1] for p in parts), parts[0][1].shape[2]
        V, xi, mu = xp.zeros((N, P, D)), xp.zeros((N, P)), xp.zeros((N, D))
        for ids, Vp, wp, mp in parts:
            V[ids, :Vp.shape[1]], xi[ids, :Vp.shape[1]], mu[ids] = Vp, wp, mp
    keep = xi > 0
    n_support = xp.sum(keep, axis=1)                                          # (N,)
    if compact:                      # the warm start's first_vertices put the support first
        weights, vertices = xi * keep, V
    else:
        vertices, weights = first_vertices(V * keep[:, :, None], xi * keep)   # (N, S, D), (N, S)
        keep = weights > 0
    S, D = vertices.shape[1], vertices.shape[2]
    spans = _spans_face(oracle, vertices, keep, n_support)
    shape = lead + (S,)
    return SparseMAPResult(
        vertices=vertices.astype(dtype, copy=False).reshape(shape + (D,)),
        weights=weights.astype(dtype, copy=False).reshape(shape),
        marginals=mu.astype(dtype, copy=False).reshape(lead + (D,)),
        n_iter=n_iter,
        spans_face=None if spans is None else spans.reshape(lead))


def _mix(V, w):
    """``μ = a_r + Σ_s ξ_s (a_s - a_r)`` (Σ ξ = 1 over the active slots) with
    ``a_r = V[:, 0]``, the first slot: while it is active, ``μ_i`` is ``a_r,i``
    exactly where all active vertices agree; once the active set dropped it,
    ``a_r = 0`` and this is ``Σ_s ξ_s a_s`` (right, without that exactness).
    (n, P, D), (n, P) -> (n, D)."""
    ref = V[:, 0, :]
    diff = (V - ref[:, None, :]) * (w > 0)[:, :, None]
    return ref + (w[:, None, :] @ diff)[:, 0, :]


def _spans_face(oracle, vertices, support, n_support):
    """(N,) bool: affine rank of the support (= its size - 1: the solver keeps
    it affinely independent) equals the dimension of μ's minimal face."""
    face_dim = getattr(oracle, "face_dim", None)
    if face_dim is None:
        return None
    return n_support - 1 == face_dim(vertices, support)


def sparsemap_vjp(result: SparseMAPResult, grad_weights: Array) -> Array:
    """Gradient w.r.t. ``t`` of ``Σ_z ξ_z g_z`` through the active set.

    On the support S the KKT system ``[[0, 1ᵀ], [1, G]] [τ; ξ_S] = [1; A_Sᵀ t]``
    holds with S fixed, so ``∂ξ_S/∂t = Q A_Sᵀ`` with ``Q`` the lower-right
    block of ``[[0, 1ᵀ], [1, G]]⁻¹``.  With ``K = G + 11ᵀ`` (positive definite
    for an affinely independent S; any common translation of the vertices
    gives the same Q)

        Q = K⁻¹ - K⁻¹11ᵀK⁻¹ / (1ᵀK⁻¹1),      ∂L/∂t = A_S Q g_S.

    This is the derivative of SparseMAP restricted to conv(S).  It is the
    derivative of SparseMAP itself where S spans μ's minimal face
    (``result.spans_face``); then ``A_S Q A_Sᵀ`` is the projection onto the
    face's tangent space, i.e. ``∂μ/∂t`` (docs/derivations.md §4.3).

    result : :class:`SparseMAPResult`; grad_weights : (..., S) cotangent of
    ``result.weights`` (entries on padding rows are ignored).
    Returns ``(..., D)`` in the result's dtype.
    """
    check_grad(grad_weights, result.weights, "grad_weights")
    xp = xp_of(result.vertices, grad_weights)
    V, w = result.vertices, result.weights
    lead, (S, D) = V.shape[:-2], V.shape[-2:]
    V64 = V.reshape(-1, S, D).astype(np.float64, copy=False)                 # (N, S, D)
    support = (w.reshape(-1, S) > 0).astype(np.float64)
    g = grad_weights.reshape(-1, S).astype(np.float64) * support
    U = _solve_gram(V, support, xp.stack([g, support], axis=2))              # K⁻¹[g, 1]
    sigma = xp.sum(U[:, :, 0], axis=1) / xp.sum(U[:, :, 1], axis=1)
    y = (U[:, :, 0] - sigma[:, None] * U[:, :, 1]) * support                 # Q g_S
    grad_t = (y[:, None, :] @ V64)[:, 0, :]                                  # A_S Q g_S
    return grad_t.astype(w.dtype).reshape(lead + (D,))


def _solve_gram(V, support, R):
    """``K⁻¹ R`` on the support, ``K = X Xᵀ + 11ᵀ`` with X the vertices
    less the first one, ``X Xᵀ = A Aᵀ - c1ᵀ - 1cᵀ + <a_1, a_1>`` (c = A a_1):
    integer entries, exact in float32 (counts of at most D ones), solved in
    float64 (LU, partial pivoting; a refinement step in the same precision
    made the marginal VJP at D = 128 less accurate, 265 -> 1040 ulps); padding
    slots are decoupled (identity)."""
    xp = xp_of(R)
    N, S = support.shape
    A = V.reshape(N, S, -1).astype(np.float32)                       # 0/1: exact
    v = A[:, :1, :]                                                   # translate by a_1
    c = (A @ v.transpose(0, 2, 1))[:, :, 0]                           # <a_s, a_1>
    # einsum, not a stacked matmul: multithreaded OpenBLAS took 0.5 s for this
    # (64, 89, 128) float32 batch on 2 cores, einsum's loop 2 ms (benchmarks.mappings)
    G = xp.einsum("nsd,nrd->nsr", A, A) - c[:, :, None] - c[:, None, :] + c[:, :1, None]
    mask = support[:, :, None] * support[:, None, :]
    K = (G.astype(np.float64) + 1) * mask + xp.eye(S) * (1 - support)[:, None, :]
    try:
        U = xp.linalg.solve(K, R)
    except np.linalg.LinAlgError:                   # NumPy raises; CuPy returns NaN instead
        U = xp.full(R.shape, np.nan)
    if not bool(xp.all(xp.isfinite(U))):
        raise ValueError("sparsemap_vjp: the support vertices are affinely dependent (singular "
                         "KKT system); pass a result of refimpl.sparsemap")
    return U
