"""Cross-checker, part 3: refimpl's own functions in the checker's calling conventions
(``--impl refimpl``).

The SparseMAP adapters go through :func:`refimpl.sparsemap` and
:func:`refimpl.sparsemap_vjp`, and :func:`sparsemap_marginals` carries
``spans_face`` so the report says on which rows refimpl's active set does not
span the marginals' minimal face (where a VJP that holds the active set fixed
is not the derivative of the marginals).
"""
import numpy as np

__all__ = ["topk_bits", "topk_bits_vjp", "sparsemap_marginals", "sparsemap_marginals_vjp",
           "face_spanned", "REFERENCE"]


def topk_bits(t, k):
    """refimpl's top-k sparsemax over bit-vectors: ``(bits (N, k, D), probs (N, k))``."""
    from .sparsemax import sparsemax
    from .topk import kbest_bitvectors
    bits, scores = kbest_bitvectors(t, k)
    return bits, sparsemax(scores)


def topk_bits_vjp(y, g):
    """``Σ_j (J^T g)_j a_{z_j}`` from ``y = (bits, probs)``."""
    from .sparsemax import sparsemax_vjp
    bits, probs = y
    return np.einsum("nk,nkd->nd", sparsemax_vjp(probs, g), bits.astype(probs.dtype))


def _sparsemap(t, B=None):
    from .oracles import bitvector_oracle, budget_oracle
    from .sparsemap import sparsemap
    return sparsemap(t, bitvector_oracle if B is None else budget_oracle(B))


def sparsemap_marginals(t, B=None):
    """refimpl's SparseMAP marginals ``mu`` (bit-vectors, or with budget ``B``)."""
    return _sparsemap(t, B).marginals


def sparsemap_marginals_vjp(t, mu, g, B=None):
    """VJP of ``<mu, g>`` w.r.t. ``t`` through :func:`refimpl.sparsemap_vjp`:
    ``<mu, g> = Σ_z ξ_z <a_z, g>``, so ``grad_weights = A_S^T g``."""
    from .sparsemap import sparsemap_vjp
    res = _sparsemap(t, B)
    return sparsemap_vjp(res, np.einsum("nsd,nd->ns", res.vertices, g.astype(res.vertices.dtype)))


def face_spanned(vertices, weights, marginals, B=None, tol=None):
    """(N,) bool: does the affine hull of the active vertices have the dimension
    of the marginals' minimal face?

    vertices (N, S, D), weights (N, S) (active where > 0), marginals (N, D).
    Face dimension: the number of free coordinates ``0 < mu_i < 1`` (within
    ``tol``, default ``sqrt(eps)`` of the marginals' dtype), less one when the
    budget ``B`` binds (``Σ mu = B`` within ``D tol``)."""
    if tol is None:
        tol = float(np.sqrt(np.finfo(np.asarray(marginals).dtype).eps))
    V, w, mu = (np.asarray(a, dtype=np.float64) for a in (vertices, weights, marginals))
    free = (mu > tol) & (mu < 1 - tol)
    face = free.sum(-1)
    if B is not None:
        face = face - ((np.abs(mu.sum(-1) - B) <= tol * mu.shape[-1]) & (face > 0))
    out = np.empty(mu.shape[0], dtype=bool)
    for n in range(mu.shape[0]):
        act = V[n][w[n] > 0]
        hull = np.linalg.matrix_rank(act[1:] - act[0]) if len(act) > 1 else 0
        out[n] = hull == face[n]
    return out


def _spans_face(t, B=None):
    """``spans_face`` of refimpl's result (its cube and budget oracles always set it;
    :func:`face_spanned` is the independent check the tests hold it to)."""
    return np.asarray(_sparsemap(t, B).spans_face)


sparsemap_marginals.spans_face = _spans_face  # type: ignore[attr-defined]

REFERENCE = {
    "sparsemax": ("refimpl:sparsemax", "refimpl:sparsemax_vjp"),
    "topk_sparsemax": ("refimpl:topk_sparsemax", "refimpl:topk_sparsemax_vjp"),
    "topk_bits": (topk_bits, topk_bits_vjp),
    "sparsemap_bits": (sparsemap_marginals, sparsemap_marginals_vjp),
    "sparsemap_budget": (sparsemap_marginals, sparsemap_marginals_vjp),
}
