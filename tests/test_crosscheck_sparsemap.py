"""SparseMAP at D = 64 and 128 in the cross-checker: the golden marginal VJP is the
exact Jacobian of the marginals, so a VJP that holds an active set fixed passes
only where that set spans the marginals' minimal face.

The fakes below never call refimpl.sparsemap: their marginals are computed in
closed form (clip, and the capped-simplex shift from the exact free set), and
their active set is built by hand, either spanning the face or truncated to
half of it."""
import numpy as np
import pytest

from refimpl import crosscheck as cc
from refimpl import golden

LARGE = ["*/D64-*", "*/D128-*"]


def _capped_simplex(t, B):
    """Projection of each row onto {mu in [0,1]^D, sum mu <= B}, in float64:
    lam by bisection, then solved exactly on the free set it finds."""
    t = t.astype(np.float64)
    mu = np.clip(t, 0, 1)
    for n in np.flatnonzero(mu.sum(-1) > B):
        lo, hi = 0.0, float(t[n].max())
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if np.clip(t[n] - mid, 0, 1).sum() > B else (lo, mid)
        free = (t[n] - lo > 0) & (t[n] - lo < 1)
        ones = t[n] - lo >= 1
        lam = (t[n][free].sum() - (B - ones.sum())) / free.sum()
        mu[n] = np.clip(t[n] - lam, 0, 1)
    return mu


def _marginals64(t, B=None):
    return np.clip(t.astype(np.float64), 0, 1) if B is None else _capped_simplex(t, B)


def marginals(t, B=None):
    return _marginals64(t, B).astype(t.dtype)


def _active_set(mu, t, B, frac):
    """Vertices of the marginal polytope around ``mu`` (one row), a hand-built
    active set whose edges span a fraction ``frac`` of the free coordinates.

    bits: z0 = 1[mu >= 1/2] and z0 with one free bit flipped (edges e_i).
    budget (binding): z0 with ones on the fixed ones and the upper half of the
    free set; swaps of one free 0 and one free 1 (edges e_a - e_b), a spanning
    tree of the swap graph, so the edges are linearly independent."""
    free = np.flatnonzero((mu > 0) & (mu < 1))
    keep = free[: round(frac * len(free))]
    binding = B is not None and np.clip(t, 0, 1).sum() > B
    if not binding:
        z0 = (mu >= 0.5).astype(np.float64)
        flips = [z0.copy() for _ in keep]
        for z, i in zip(flips, keep):
            z[i] = 1 - z[i]
        return np.array([z0] + flips)
    order = keep[np.argsort(-mu[keep])]
    ones, zeros = order[: max(1, len(order) // 2)], order[max(1, len(order) // 2):]
    z0 = (mu >= 1).astype(np.float64)
    z0[ones] = 1
    swaps = []                       # a spanning tree of the swap graph: enough edges
    for a, b in [(a, ones[0]) for a in zeros] + [(zeros[0], b) for b in ones[1:] if len(zeros)]:
        z = z0.copy()
        z[a], z[b] = 1, 0
        swaps.append(z)
    return np.array([z0] + swaps)


def _fixed_set_vjp(vertices, g):
    """``P g`` with P the orthogonal projector onto the directions of aff(vertices):
    the marginal VJP of a solver that holds this active set fixed."""
    edges = (vertices[1:] - vertices[0]).T
    if edges.size == 0:
        return np.zeros_like(g)
    q, _ = np.linalg.qr(edges)                 # the edges are independent by construction
    return q @ (q.T @ g)


def make_impl(frac):
    """A SparseMAP implementation whose VJP holds an active set fixed (``frac`` of the face)."""
    def forward(t, B=None):
        return marginals(t, B)

    def vjp(t, mu, g, B=None):
        mu64 = _marginals64(t, B)
        out = [_fixed_set_vjp(_active_set(m, tn, B, frac), gi.astype(np.float64))
               for m, tn, gi in zip(mu64, t.astype(np.float64), g)]
        return np.array(out).astype(t.dtype)

    def spans_face(t, B=None):
        mu = _marginals64(t, B)
        sets = [_active_set(m, tn, B, frac) for m, tn in zip(mu, t.astype(np.float64))]
        S = max(len(s) for s in sets)
        V = np.zeros((len(sets), S, mu.shape[-1]))
        w = np.zeros((len(sets), S))
        for n, s in enumerate(sets):
            V[n, :len(s)], w[n, :len(s)] = s, 1 / len(s)
        return cc.face_spanned(V, w, mu, B)
    forward.spans_face = spans_face
    return forward, vjp


def test_large_cases_exist_with_exact_references():
    names = [c.name for c in golden.cases(patterns=LARGE)]
    for dt in ("f32", "f64"):
        for name in (f"sparsemap_bits/{dt}/D64-bitvae", f"sparsemap_bits/{dt}/D128-bitvae",
                     f"sparsemap_budget/{dt}/D64-B16-bitvae", f"sparsemap_budget/{dt}/D128-B32-bitvae"):
            assert name in names
    for c in golden.cases(patterns=LARGE):
        free = (c.arrays["y"] > 0) & (c.arrays["y"] < 1)
        assert free.sum(-1).min() >= c.arrays["x"].shape[-1] // 3     # large faces
        if c.mapping == "sparsemap_budget":                             # the budget binds
            np.testing.assert_allclose(c.arrays["y"].astype(np.float64).sum(-1), c.budget, rtol=1e-6)


@pytest.mark.parametrize("mapping", ["sparsemap_bits", "sparsemap_budget"])
def test_truncated_active_set_fails_and_spanning_one_passes(mapping):
    exact_f, exact_vjp = make_impl(1.0)
    good = cc.run(mapping, exact_f, vjp=exact_vjp, cases=LARGE)
    assert good.ok and len(good.results) == 4, good.table()
    assert all(r.face == "0/8" for r in good.results) and not good.hints
    short_f, short_vjp = make_impl(0.5)
    bad = cc.run(mapping, short_f, vjp=short_vjp, cases=LARGE)
    assert bad.failed == [r.name for r in bad.results], bad.table()
    assert all(r.reasons == ["vjp"] and r.face == "8/8" for r in bad.results)    # forward exact
    assert any("does not span the marginals' minimal face on 32/32 rows" in h for h in bad.hints)
    assert "active set misses the face on 8/8 rows" in bad.table()


def test_face_spanned_counts_dimensions():
    mu = np.array([[0.5, 0.25, 1.0, 0.0]])
    V = np.array([[[1, 0, 1, 0], [0, 0, 1, 0], [1, 1, 1, 0]]], dtype=float)
    assert cc.face_spanned(V, np.ones((1, 3)) / 3, mu).tolist() == [True]
    assert cc.face_spanned(V[:, :2], np.ones((1, 2)) / 2, mu).tolist() == [False]
    # budget B = 0.75 binds: the face has dimension |free| - 1 = 1
    mu_b = np.array([[0.5, 0.25, 0.0, 0.0]])
    Vb = np.array([[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]], dtype=float)
    assert cc.face_spanned(Vb[:, :2], np.ones((1, 2)) / 2, mu_b, B=0.75).tolist() == [True]
    assert cc.face_spanned(Vb, np.ones((1, 3)) / 3, mu_b, B=0.75).tolist() == [False]
