"""The working state of the batched active-set SparseMAP solver.

Every row (example) keeps its own active set S of vertices, padded to a
common number of slots P.  The arithmetic is arranged so that it is exact
where it can be and independent of the other rows:

* **Translated vertices.**  Each row subtracts its starting vertex ``v`` from
  every vertex and from the scores: ``X_s = a_s - v ∈ {-1, 0, 1}^D`` and
  ``t' = t - v``.  The QP ``min_{ξ ∈ Δ} ||A ξ - t||²`` is translation
  invariant, and coordinates on which all vertices agree with ``v`` drop out
  of every score ``<X_s, t'>``: a coordinate of ``t`` of size 1e300 that the
  structures never change cannot swamp the O(1) ones.
* **Integer Gram matrix.**  ``K = X_S X_Sᵀ + 11ᵀ`` has small integer entries
  (exact in floating point) and is positive definite exactly when S is
  affinely independent.  The KKT system ``[[0, 1ᵀ], [1, G]] [τ; ξ] = [1; b]``
  becomes ``K ξ = b + (1 - τ) 1`` with ``1ᵀξ = 1`` (docs/derivations.md §4.1).
* **Kept inverse.**  ``K⁻¹`` is updated by a rank-one (bordering) formula
  when a vertex enters or leaves, O(P²) per row; every solve is refined once
  against the exact ``K``, so rounding in the kept inverse does not build up.

Slots are reused after a drop; inactive slots are zero in ``X``, ``b``,
``K`` and ``K⁻¹``.  Nothing here reads a device value on the host: the
solver in :mod:`refimpl.sparsemap` takes one small host copy of flags per
iteration.
"""
import numpy as np

from ._types import Array
from .backend import xp_of

SLOT_CHUNK = 8          # slots are added 8 at a time

_FIELDS = ("ids", "v", "tp", "tabs", "X", "b", "K", "Kinv", "xi", "active", "count", "done")


def solve_refined(K, Kinv, R):
    """``K⁻¹ R`` for ``R : (n, P, m)``, by the kept inverse plus one step of
    iterative refinement against the exact ``K`` (n, P, P)."""
    U = Kinv @ R
    return U + Kinv @ (R - K @ U)


class WorkingSet:
    """Active sets of the rows still iterating (fields in the module docstring).

    ids (n,) batch index; v, tp = t - v, tabs = |t| : (n, D); X (n, P, D);
    b (n, P) = <X_s, t'>; K, Kinv (n, P, P); xi (n, P) feasible weights;
    active (n, P); count (n, D): how many active vertices differ from v at
    each coordinate; done (n,): converged (state final).
    """

    ids: Array
    v: Array
    tp: Array
    tabs: Array
    X: Array
    b: Array
    K: Array
    Kinv: Array
    xi: Array
    active: Array
    count: Array
    done: Array
    max_slots: int

    @classmethod
    def start(cls, t, first, origin):
        """One active vertex ``first`` (n, D) with weight 1 per row of ``t``,
        in coordinates translated by the vertex ``origin`` (n, D)."""
        xp = xp_of(t)
        n, D = t.shape
        self = cls()
        self.max_slots = D + 1                      # an affinely independent set
        P = min(SLOT_CHUNK, self.max_slots)
        self.ids = xp.arange(n)
        self.v, self.tp, self.tabs = origin, t - origin, xp.abs(t)
        X0 = first - origin
        self.X = xp.zeros((n, P, D), dtype=t.dtype)
        self.X[:, 0] = X0
        self.b = xp.zeros((n, P), dtype=t.dtype)
        self.b[:, 0] = xp.sum(X0 * self.tp, axis=1)
        self.K = xp.zeros((n, P, P), dtype=t.dtype)
        self.K[:, 0, 0] = xp.sum(X0 * X0, axis=1) + 1
        self.Kinv = xp.zeros((n, P, P), dtype=t.dtype)
        self.Kinv[:, 0, 0] = 1 / self.K[:, 0, 0]
        self.count = xp.abs(X0)                     # active vertices differing from v, per coordinate
        self.xi = xp.zeros((n, P), dtype=t.dtype)
        self.xi[:, 0] = 1
        self.active = xp.zeros((n, P), dtype=bool)
        self.active[:, 0] = True
        self.done = xp.zeros(n, dtype=bool)
        return self

    def __len__(self):
        return self.tp.shape[0]

    @property
    def slots(self):
        return self.active.shape[1]

    def take(self, mask):
        """The rows selected by ``mask (n,)`` as a new object (copies)."""
        part = WorkingSet()
        part.max_slots = self.max_slots
        for name in _FIELDS:
            setattr(part, name, getattr(self, name)[mask])
        return part

    def grow(self):
        """Add up to SLOT_CHUNK inactive slots (at most D + 1 in all)."""
        xp = xp_of(self.X)
        n, P = self.active.shape
        Q = min(P + SLOT_CHUNK, self.max_slots)
        for name in ("X", "b", "xi", "active"):
            old = getattr(self, name)
            new = xp.zeros((n, Q) + old.shape[2:], dtype=old.dtype)
            new[:, :P] = old
            setattr(self, name, new)
        for name in ("K", "Kinv"):
            new = xp.zeros((n, Q, Q), dtype=self.K.dtype)
            new[:, :P, :P] = getattr(self, name)
            setattr(self, name, new)

    # ---------------------------------------------------------- the solve
    def solve(self):
        """Weights and multiplier of the KKT system on each active set.

        ``ξ = K⁻¹b + c K⁻¹1`` with ``c = (1 - 1ᵀK⁻¹b) / 1ᵀK⁻¹1`` and
        ``τ' = 1 - c``, so that ``<X_s, t' - X_Sᵀξ> = τ'`` on S; evaluated as
        ``(K⁻¹1 + (K⁻¹b 1ᵀK⁻¹1 - K⁻¹1 1ᵀK⁻¹b)) / 1ᵀK⁻¹1``.
        Returns ``xi (n, P)`` (0 off S) and ``tau (n,)``.
        """
        xp = xp_of(self.X)
        act = self.active.astype(self.X.dtype)
        U = solve_refined(self.K, self.Kinv, xp.stack([self.b, act], axis=2))
        ub, u1 = U[:, :, 0], U[:, :, 1]
        sb, s1 = xp.sum(ub, axis=1)[:, None], xp.sum(u1, axis=1)[:, None]   # (n, 1)
        # ξ = u1/s1 + (ub s1 - u1 sb)/s1: the second part is invariant to adding
        # a constant to b (exactly 0 for one vertex, whatever the size of b)
        xi = (u1 + (ub * s1 - u1 * sb)) / s1
        return xi * act, (1 - (1 - sb[:, 0]) / s1[:, 0])

    # ---------------------------------------------------------- add a vertex
    def candidate(self, z):
        """What adding vertex ``z`` (n, D) would take, for every row.

        Returns ``Xz = z - v``, overlaps ``g_s = <X_s, Xz>`` (n, P), the new
        border column of K (n, P) with ``K_zz = |Xz|² + 1`` (n,) and
        ``bz = <Xz, t'>`` (n,).
        """
        xp = xp_of(z)
        Xz = z - self.v
        g = (self.X @ Xz[:, :, None])[:, :, 0]                    # (n, P)
        kcol = (g + 1) * self.active
        kzz = xp.sum(Xz * Xz, axis=1) + 1
        bz = xp.sum(Xz * self.tp, axis=1)
        return Xz, g, kcol, kzz, bz

    def insert(self, add, slot, Xz, kcol, kzz, bz, u, sigma):
        """Put vertex ``Xz`` into ``slot (n,)`` of the rows where ``add (n,)``.

        ``u = K⁻¹ kcol`` and ``σ = K_zz - kcolᵀu`` (> 0) give the bordered
        inverse: ``K⁻¹ += w wᵀ / σ`` with ``w = u - e_slot``.
        """
        xp = xp_of(Xz)
        n, P = self.active.shape
        rows = xp.arange(n)
        e = xp.arange(P)[None, :] == slot[:, None]                  # (n, P)
        w = u - e
        scale = xp.where(add, 1 / xp.where(add, sigma, 1), 0)
        self.Kinv = self.Kinv + (w * scale[:, None])[:, :, None] * w[:, None, :]
        border = xp.where(e, kzz[:, None], kcol)                   # row/column of K
        a = add[:, None]
        self.K[rows, slot, :] = xp.where(a, border, self.K[rows, slot, :])
        self.K[rows, :, slot] = xp.where(a, border, self.K[rows, :, slot])
        self.X[rows, slot] = xp.where(a, Xz, self.X[rows, slot])
        self.b[rows, slot] = xp.where(add, bz, self.b[rows, slot])
        self.active = self.active | (e & a)
        self.count = self.count + a * xp.abs(Xz)

    # ---------------------------------------------------------- drop a vertex
    def remove(self, drop, slot):
        """Take ``slot (n,)`` out of the active sets of the rows in ``drop``.

        Bordered inverse of the smaller matrix: ``K⁻¹ - k kᵀ / k_slot`` with
        ``k`` the slot's column of ``K⁻¹``; then the slot is zeroed.
        """
        xp = xp_of(self.X)
        n, P = self.active.shape
        rows = xp.arange(n)
        kc = self.Kinv[rows, :, slot]                               # (n, P)
        piv = kc[rows, slot]
        scale = xp.where(drop, 1 / xp.where(drop, piv, 1), 0)
        Kinv = self.Kinv - (kc * scale[:, None])[:, :, None] * kc[:, None, :]
        d = drop[:, None]
        self.count = self.count - d * xp.abs(self.X[rows, slot])
        for M in (Kinv, self.K):
            M[rows, slot, :] = xp.where(d, 0, M[rows, slot, :])
            M[rows, :, slot] = xp.where(d, 0, M[rows, :, slot])
        self.Kinv = Kinv
        self.X[rows, slot] = xp.where(d, 0, self.X[rows, slot])
        self.b[rows, slot] = xp.where(drop, 0, self.b[rows, slot])
        self.xi[rows, slot] = xp.where(drop, 0, self.xi[rows, slot])
        self.active[rows, slot] = self.active[rows, slot] & ~drop


def step_back(xi_old, xi_new, active):
    """Move from feasible ``xi_old`` towards ``xi_new`` until a weight hits 0.

    ``α = min_{s: ξ_new,s < 0} ξ_old,s / (ξ_old,s - ξ_new,s)``; returns the
    new weights (n, P) and the slot (n,) attaining the minimum, which leaves.
    """
    xp = xp_of(xi_old)
    neg = active & (xi_new < 0)
    ratio = xp.where(neg, xi_old / xp.where(neg, xi_old - xi_new, 1), np.inf)
    leave = xp.argmin(ratio, axis=1)                                # (n,)
    alpha = xp.minimum(xp.take_along_axis(ratio, leave[:, None], axis=1), 1)
    xi = xp.where(active, xp.maximum(xi_old + alpha * (xi_new - xi_old), 0), 0)
    return xi, leave


def tie_grid(resid, tol_scale, D):
    """Round the residual to a power-of-two grid ``h`` so that entries equal
    up to rounding become exactly equal (and near-zero ones 0).

    An oracle such as ``1[r > 0]`` or "the B largest, ties to the lower
    index" would otherwise pick among equally good vertices by the sign or
    order of rounding errors (~1e-16), and the returned ξ would jump under
    perturbations of t far below the tolerance.  ``h`` is the largest power
    of two with ``D h <= tol_scale / 4``: the rounding moves ``<a_z, r>`` by
    at most ``D h / 2``, an eighth of the stopping tolerance, so it cannot
    stop the solver short.  Entries above ``2^52 h`` are multiples of ``h``
    already and are left alone (no overflow for huge scores).

    resid : (n, D); tol_scale : (n,) the stopping tolerance of each row.
    """
    xp = xp_of(resid)
    h = xp.exp2(xp.floor(xp.log2(tol_scale / (4 * D))))[:, None]   # (n, 1)
    small = xp.abs(resid) < h * 2.0 ** 52
    return xp.where(small, xp.rint(xp.where(small, resid, 0) / h) * h, resid)
