"""Faces of the two built-in marginal polytopes, and a spanning decomposition.

The cube ``[0,1]^D`` (all bit-vectors) and the budget polytope
``{μ ∈ [0,1]^D : Σμ <= B}`` have projections in closed form, so their
oracles can tell the solver more than an argmax:

* ``face_dim``: the dimension of the minimal face containing the marginals
  of a support, read off the support vertices exactly (``spans_face``);
* ``warm_start``: the projection ``μ`` of ``t`` and an affinely independent
  set of vertices, with weights, that spans its face and mixes to ``μ``.  The
  solver certifies it with the active set's own stopping test (one oracle
  call); a row that fails iterates from a vertex.

Why a warm start: from a single vertex, the active-set path at D = 128
approaches ``μ`` to ~1e-11 with about 55 vertices while the face needs ~88;
the weights of the vertices still missing fall geometrically below rounding,
so no tolerance lets the path reach the face (docs/derivations.md §4.5).
"""
from .backend import xp_of

#: segments of the decomposition shorter than this are ties: skipped
TIE = 1e-12


def cube_face_dim(vertices, support):
    """Face dimension of ``μ`` for the cube: coordinates where the support
    vertices disagree (there ``0 < μ_i < 1``).  (N, S, D), (N, S) -> (N,)."""
    xp = xp_of(vertices)
    keep = support.astype(vertices.dtype)
    on = (keep[:, None, :] @ vertices)[:, 0, :]                           # support vertices with a_i = 1
    return xp.sum((on > 0) & (on < xp.sum(keep, axis=1, keepdims=True)), axis=1)


def budget_face_dim(B):
    """Face dimension for the budget polytope: the cube's, less one where
    every support vertex has exactly ``B`` ones (the budget binds)."""
    def face_dim(vertices, support):
        xp = xp_of(vertices)
        free = cube_face_dim(vertices, support)
        ones = (vertices @ xp.ones((vertices.shape[2], 1), dtype=vertices.dtype))[:, :, 0]
        tight = xp.all(~support | (ones == B), axis=1)
        return free - (tight & (free > 0))
    return face_dim


def capped_projection(t, B):
    """Projection of ``t`` (n, D) onto ``{μ ∈ [0,1]^D, Σμ <= B}``.

    ``μ = clip(t - λ, 0, 1)`` with ``λ = 0`` if that fits, else the λ with
    ``h(λ) = Σ clip(t_i - λ, 0, 1) = B``.  ``h`` is continuous, decreasing and
    linear between the breakpoints ``{t_i} ∪ {t_i - 1}``.  With the
    breakpoints sorted in decreasing order, the coordinates before position
    ``j`` are the positive ones (a ``t_i``) and the ones at 1 (a ``t_i - 1``)
    just above ``b_j``, so prefix counts and sums give ``h(b_j)`` for all j at
    once; on the first piece where ``h`` reaches B,
    ``λ = (|O| + Σ_P t_i - Σ_O t_i - B) / (|P| - |O|)`` exactly.
    (Ties between breakpoints do not matter: ``h`` is continuous.)
    """
    xp = xp_of(t)
    n, D = t.shape
    mu = xp.clip(t, 0, 1)
    if B >= D:
        return mu
    # λ ∈ [t_(B+1) - 1, t_(B+1)] (t_(B+1) the (B+1)-th largest: below, B + 1
    # entries would be 1; above, at most B are positive), so clipping t to
    # [t_(B+1) - 2, t_(B+1) + 2] changes no μ_i, and keeps huge entries out of the sums
    kth = xp.sort(t, axis=1)[:, D - B - 1:D - B]
    t = xp.clip(t, kth - 2, kth + 2)
    vals = xp.concatenate([t, t - 1], axis=1)                              # (n, 2D) breakpoints
    order = xp.argsort(-vals, axis=1, kind="stable")
    b = xp.take_along_axis(vals, order, axis=1)                            # decreasing
    upper = (order < D).astype(t.dtype)                                    # a t_i: i enters P
    score = xp.take_along_axis(xp.concatenate([t, t], axis=1), order, axis=1)

    def before(x):                                                         # exclusive prefix sums
        c = xp.cumsum(x, axis=1)
        return c - x

    nP, sP = before(upper), before(upper * score)
    nO, sO = before(1 - upper), before((1 - upper) * score)
    h = nO + (sP - sO) - b * (nP - nO)                                     # h(b_j), increasing in j
    j = xp.argmax(h >= B, axis=1)[:, None]                                 # first piece reaching B
    pick = [xp.take_along_axis(a, j, axis=1)[:, 0] for a in (nP, sP, nO, sO, b)]
    nP, sP, nO, sO, bj = pick
    slope = nP - nO
    lam = xp.where(slope > 0, (nO + sP - sO - B) / xp.where(slope > 0, slope, 1), bj)
    over = xp.sum(mu, axis=1) > B
    return xp.where(over[:, None], xp.clip(t - lam[:, None], 0, 1), mu)


def systematic_vertices(mu, m):
    """Vertices of a spanning decomposition of ``μ`` (n, D) with at most
    ``m`` (n,) ones among the free coordinates (``0 < μ_i < 1``).

    Lay a slack interval of length ``m - Σ_F μ_i`` and then the free ``μ_i``
    end to end on ``[0, m)``; for ``θ ∈ [0, 1)`` select the coordinates
    whose interval contains a point of ``θ + ℤ``.  Each ``μ_i < 1``, so a
    coordinate is selected at most once and every selection has ``m`` ones
    (slack included).  The selection is constant between the breakpoints
    (the fractional parts of the interval ends); each segment gives one
    vertex (the coordinates with ``μ_i = 1`` always on), with weight its
    length, and their mixture is exactly ``μ``.  Returns vertices
    (n, D + 2, D) in ``mu``'s dtype and the mask (n, D + 2) of segments
    longer than ``TIE``, and their weights (n, D + 2), 0 off the mask.
    """
    xp = xp_of(mu)
    n, D = mu.shape
    free = (mu > 0) & (mu < 1)
    f = xp.where(free, mu, 0)
    slack = xp.clip(m - xp.sum(f, axis=1), 0, 1)
    slack = xp.where(slack < TIE, 0, slack)
    lengths = xp.concatenate([slack[:, None], f], axis=1)                  # (n, D + 1)
    ends = xp.cumsum(lengths, axis=1)
    starts = ends - lengths
    cuts = xp.where(lengths > 0, ends - xp.floor(ends), 0)
    theta = xp.sort(xp.concatenate([xp.zeros((n, 1)), cuts], axis=1), axis=1)   # (n, D + 2)
    after = xp.concatenate([theta[:, 1:], xp.ones((n, 1))], axis=1)
    valid = after - theta > TIE
    mid = ((theta + after) / 2)[:, :, None]                                # (n, D + 2, 1)
    # θ + q ∈ [start, start + length) for an integer q: with f = frac(start) and
    # e = f + length (< 2), θ ∈ [f, e) or, wrapping around, θ < e - 1
    f = (starts - xp.floor(starts))[:, None, 1:]                           # drop the slack
    e = f + lengths[:, None, 1:]
    chosen = ((mid >= f) & (mid < e)) | (mid < e - 1)
    chosen = (chosen | (mu >= 1)[:, None, :]) & valid[:, :, None]
    return chosen.astype(mu.dtype), xp.where(valid, after - theta, 0)


def staircase_vertices(mu):
    """Vertices of the staircase decomposition of ``μ`` (n, D) over the cube.

    With the free coordinates sorted, ``μ_(1) >= ... >= μ_(f)``, vertex ``k``
    (``k = 0..f``) switches on the coordinates at 1 and the ``k`` largest
    free ones, with weight ``μ_(k) - μ_(k+1)`` (``μ_(0) = 1``,
    ``μ_(f+1) = 0``).  The ``f + 1`` vertices are nested, hence affinely
    independent, and span the face; their mixture is ``μ``.  Returns
    vertices (n, D + 2, D) and weights (n, D + 2), 0 for ties (< ``TIE``).
    """
    xp = xp_of(mu)
    n, D = mu.shape
    free = (mu > 0) & (mu < 1)
    order = xp.argsort(xp.where(free, -mu, 1), axis=1, kind="stable")    # free, descending
    rank = xp.argsort(order, axis=1)                                      # (n, D)
    top = xp.take_along_axis(xp.where(free, mu, 0), order, axis=1)
    upper = xp.concatenate([xp.ones((n, 1)), top, xp.zeros((n, 1))], axis=1)     # (n, D + 2)
    lower = xp.concatenate([top, xp.zeros((n, 2))], axis=1)
    weights = upper - lower
    valid = weights > TIE
    k = xp.arange(D + 2)[None, :, None]
    chosen = ((rank[:, None, :] < k) & free[:, None, :]) | (mu >= 1)[:, None, :]
    return (chosen & valid[:, :, None]).astype(mu.dtype), xp.where(valid, weights, 0)


def cube_warm_start(t):
    """Spanning vertices for the cube: the staircase of ``μ = clip(t, 0, 1)``.
    Returns vertices (n, D + 2, D), weights (n, D + 2) and ``μ`` (n, D)."""
    xp = xp_of(t)
    mu = xp.clip(t, 0, 1)
    return (*staircase_vertices(mu), mu)


def budget_warm_start(B):
    """Spanning vertices for the budget polytope.  Where the budget binds,
    systematic sampling with ``m = B - |O|`` ones among the free coordinates;
    else the staircase where even its fullest vertex fits (``|O| + |F| <= B``),
    and otherwise systematic sampling with ``m = ⌈Σ_F μ⌉ <= B - |O|``."""
    def warm_start(t):
        xp = xp_of(t)
        mu = capped_projection(t, B)
        free = (mu > 0) & (mu < 1)
        s = xp.sum(xp.where(free, mu, 0), axis=1)
        room = B - xp.sum(mu >= 1, axis=1)
        binds = s > room - 1e-9
        V, w = systematic_vertices(mu, xp.where(binds, room, xp.ceil(s)))
        stair = ~binds & (xp.sum(free, axis=1) <= room)
        Vs, ws = staircase_vertices(mu)
        return (xp.where(stair[:, None, None], Vs, V), xp.where(stair[:, None], ws, w), mu)
    return warm_start


def first_vertices(vertices, weights):
    """Compact the weighted rows first: (n, P, D), (n, P) with P the largest count."""
    xp = xp_of(vertices)
    valid = weights > 0
    P = max(int(xp.max(xp.sum(valid, axis=1))), 1)
    order = xp.argsort(~valid, axis=1, kind="stable")[:, :P]
    rows = xp.arange(vertices.shape[0])[:, None]
    return vertices[rows, order], weights[rows, order]


__all__ = ["cube_face_dim", "budget_face_dim", "capped_projection", "systematic_vertices",
           "staircase_vertices",
           "cube_warm_start", "budget_warm_start", "first_vertices"]
