"""Deterministic estimators: the loss is summed exactly over the support of
π (dense softmax, sparsemax, top-k, SparseMAP, exact enumeration)."""
import numpy as np

import refimpl
from refimpl.enumeration import all_bitvectors

from .. import ops
from ..mappings import _structured_topk
from ..losses import bernoulli_entropy
from .base import MAX_EXACT_D, Estimate, Estimator, _softmax_entropy, _sparse_entropy


class _Deterministic(Estimator):
    """Exact marginalisation over an explicit support:

        surrogate = (1/B) Σ_b Σ_{z: π_bz > 0} π_bz ℓ(x_b, z),   calls_b = #{z: π_bz > 0}.

    The nonzero (b, z) pairs are found with a boolean mask, ``loss_fn`` runs
    once on them, π is gathered at the same pairs (Tensor integer indexing,
    whose VJP scatter-adds back), and the products are summed.  Its gradient
    is Σ π ∇ℓ + Σ ℓ ∇π: the exact gradient of E_π[ℓ] (π piecewise smooth).
    """

    deterministic = True

    def _distribution(self, scores, rng=None):
        """-> probs Tensor (B, S), assignments (S, ·) shared or (B, S, ·) per
        example, entropy Tensor (B,).  ``rng``: the call's generator (None allowed;
        only SparseMAP's random start uses it)."""
        raise NotImplementedError

    def _estimate(self, scores, loss_fn, rng):
        probs, assign, entropy = self._distribution(scores, rng)
        xp, dtype = scores.xp, scores.dtype
        B, S = probs.shape
        on = probs.data > 0                                        # (B, S)
        idx, j = xp.nonzero(on)                                    # row-major: idx sorted
        z = assign[j] if assign.ndim == 2 else assign[idx, j]      # (n, ·) constant
        loss = self._evaluate(loss_fn, idx, z, scores)
        p = probs[idx, j]                                          # (n,) Tensor
        surrogate = (p * loss).sum() / B
        dense = xp.zeros((B, S), dtype=dtype)
        dense[idx, j] = loss.data
        reported = (probs.data * dense).sum(axis=1)
        calls = on.sum(axis=1).astype(np.int64)
        support = assign if assign.ndim == 3 else xp.broadcast_to(assign, (B,) + assign.shape)
        return Estimate(surrogate, reported, calls, entropy, probs, support)


class DenseSoftmax(_Deterministic):
    """"dense" (categorical): π = softmax(s) over all K classes (every π_z > 0
    unless it underflows to exactly 0, which is skipped: its term and gradient
    are 0 anyway).  Entropy: H = logsumexp(s) - <π, s>."""

    def _distribution(self, s, rng=None):
        K = s.shape[1]
        return ops.softmax(s, axis=1), s.xp.eye(K, dtype=s.dtype), _softmax_entropy(s)


class Sparsemax(_Deterministic):
    """"sparsemax" (categorical): π = sparsemax(s) = [s - τ]_+ (Euclidean
    projection onto the simplex).  Entropy -Σ_{π>0} π log π."""

    def _distribution(self, s, rng=None):
        probs = ops.sparsemax(s, axis=1)
        return probs, s.xp.eye(s.shape[1], dtype=s.dtype), _sparse_entropy(probs)


class TopKSparsemax(_Deterministic):
    """"topk" (categorical, option k, required): π = sparsemax(top_k(s)), the
    k largest scores kept (ties to the lower index), the rest -inf; k >= K is
    plain sparsemax.  Entropy -Σ_{π>0} π log π."""

    def _distribution(self, s, rng=None):
        probs = ops.topk_sparsemax(s, self.options["k"], axis=1)
        return probs, s.xp.eye(s.shape[1], dtype=s.dtype), _sparse_entropy(probs)


class StructuredTopK(_Deterministic):
    """"topk" (bits, option k = 10): the k best bit-vectors under s_z = <z, t>
    (k capped at 2^D), π = sparsemax of their scores (:func:`nets.ops.structured_topk`;
    ∂/∂t = Σ_j (J_sparsemaxᵀ g)_j z_j).  Entropy -Σ_{π>0} π log π."""

    def _distribution(self, t, rng=None):
        D = t.shape[1]
        k = self.options["k"] if D >= 63 else min(self.options["k"], 2 ** D)
        bits, probs = _structured_topk(t, k, validate=False)   # t checked with the loss
        return probs, bits, _sparse_entropy(probs)


class SparseMAP(_Deterministic):
    """"sparsemap" / "sparsemap-budget" (bits): π = SparseMAP(t') = a sparse
    ξ* ∈ argmin_{ξ∈Δ} ||A ξ - t'||² over {0,1}^D (budget: {z : Σz <= budget},
    :func:`refimpl.budget_oracle`; default budget D // 2), found by the active-set method;
    ∂/∂t' = A_S Q g_S.  t' = t ("binary", default) or t' = (t + 1)/2
    ("onehot", the authors' encoding), a Tensor op so the chain rule includes
    the 1/2.  Options max_iter, tol go to the solver; ``sparsemap_init``:
    "oracle" (default: the active set starts at oracle(t')) or "random" (a
    uniformly random vertex per example, as the authors' code; drawn from the
    call's ``rng``, which is then required; with a budget B the random bits are
    cut to at most B ones).  The marginals do not depend on the start, but the
    returned weights can when the optimal face is not a simplex.
    Entropy -Σ_{π>0} π log π.
    """

    def _distribution(self, t, rng=None):
        o = self.options
        budget = None
        if self.name == "sparsemap-budget":
            budget = t.shape[1] // 2 if o["budget"] is None else o["budget"]
            oracle = refimpl.budget_oracle(budget)
        else:
            oracle = refimpl.bitvector_oracle
        tt = (t + 1.0) * 0.5 if o["sparsemap_encoding"] == "onehot" else t
        solver = {key: o[key] for key in ("max_iter", "tol") if o.get(key) is not None}
        if o.get("sparsemap_init") == "random":
            if not isinstance(rng, np.random.Generator):
                raise TypeError(f"{self._who} with sparsemap_init='random' draws its starting "
                                f"vertices: rng must be a numpy.random.Generator, got "
                                f"{type(rng).__name__}")
            solver["init"] = random_vertices(rng, t.shape, budget, t.xp, t.dtype)
        vertices, weights = ops.sparsemap(tt, oracle, **solver)
        return weights, vertices, _sparse_entropy(weights)


def random_vertices(rng, shape, budget, xp, dtype):
    """(B, D) uniformly random 0/1 vertices drawn with numpy ``rng``; with ``budget``
    each row keeps at most ``budget`` of its ones (a random subset): a vertex of
    {z : Σz <= budget}."""
    z = rng.random(shape) < 0.5
    if budget is not None:
        rank = np.argsort(np.argsort(np.where(z, rng.random(shape), np.inf), axis=1), axis=1)
        z &= rank < budget
    return xp.asarray(z.astype(dtype))


class ExactBits(_Deterministic):
    """"exact" (bits, D <= 12): all 2^D bit-vectors (refimpl.enumeration order),
    π = softmax(A t), i.e. Π_i Bernoulli(z_i; σ(t_i)).  Entropy in closed
    form Σ_i softplus(t_i) - σ(t_i) t_i.  A test oracle: 2^D calls per example."""

    def _distribution(self, t, rng=None):
        D = t.shape[1]
        if D > MAX_EXACT_D:
            raise ValueError(f"{self._who}: enumerates all 2^D bit-vectors, so D must be "
                             f"<= {MAX_EXACT_D}, got D = {D}")
        A = t.xp.asarray(all_bitvectors(D, dtype=np.float64), dtype=t.dtype)   # (2^D, D)
        probs = ops.softmax(ops.matmul(t, A.T), axis=1)
        return probs, A, bernoulli_entropy(t)


# ============================================================ score function
