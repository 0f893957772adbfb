"""How ``E_{π(z|x)}[ℓ(x, z)]`` becomes a training signal: one interface for every strategy.

CONTRACT (fixed; the experiments are written against it)
--------------------------------------------------------
``make_estimator(name, latent, **options) -> Estimator``

latent : "categorical" (scores ``(B, K)``, z is one of K classes) or "bits"
    (scores ``(B, D)``, z ∈ {0,1}^D).
name : one of
    categorical: "dense" (softmax, all K), "sparsemax", "topk" (option k),
                 "sfe", "sfe-plus", "sum-and-sample" (option k, default 1),
                 "gumbel", "st-gumbel" (option temperature)
    bits:        "topk" (option k, default 10), "sparsemap", "sparsemap-budget"
                 (option budget), "sfe", "sfe-plus", "gumbel", "st-gumbel",
                 "exact" (D <= 12: the Gibbs/Bernoulli distribution q(z) ∝ exp<z, t>
                 summed over all 2^D; a test oracle)
options : k, budget, temperature (mutable attribute ``estimator.temperature``
    for schedules), sparsemap_encoding ("binary" default | "onehot":
    t' = (t + 1)/2, the authors' one-hot encoding), baseline_decay (None =
    cumulative mean as the authors), solver options.

``estimator(scores, loss_fn, rng) -> Estimate``

scores : Tensor (B, K) or (B, D).
loss_fn : callable ``(idx, z) -> Tensor (n,)``, the downstream loss
    ``ℓ(x_idx, z)`` of n (example, assignment) pairs.  ``idx`` : int array (n,)
    of example indices into the batch; ``z`` : (n, K) one-hot (categorical) or
    (n, D) 0/1 bits, in the scores' dtype: a constant xp array for exact,
    sparse and sampling methods, a Tensor for the relaxed ones (gumbel:
    relaxed sample; st-gumbel: hard sample with the relaxed gradient).
    It is called ONCE per step, on the flattened pairs (never in a Python
    loop over examples or assignments).  It must return a finite Tensor of
    shape (n,): otherwise a ValueError names the estimator and what was wrong.
rng : numpy.random.Generator (sampling methods draw their noise from it with
    numpy, then move it to the scores' device: runs are reproducible across
    backends).

Estimate (NamedTuple):
    surrogate : scalar Tensor, the batch MEAN of per-example surrogates whose
        gradient (w.r.t. the encoder and the decoder) is the estimator's
        gradient of mean_b E_π[ℓ].
    loss : xp array (B,), the value reported for E_π[ℓ(x_b, z)] (exact for the
        deterministic methods, the sampled loss for MC methods).
    calls : xp int array (B,), decoder calls per example (= pairs evaluated).
    entropy : Tensor (B,), the entropy H(π(·|x_b)) of the method's
        distribution, differentiable (sparse: -Σ_{π>0} π log π; softmax/Gibbs,
        Bernoulli(σ(t)) product, categorical softmax for SFE/Gumbel: closed form).
        Experiments add ``-entropy`` (or a KL) themselves.
    probs : Tensor (B, S) or None, the weights of the evaluated assignments
        (deterministic methods); ``support`` : constant (B, S, ·) assignments or None.

``Estimator.state_dict()`` / ``load_state_dict(d)``: the running baseline
(SFE), so a resumed run continues exactly.

STRATEGIES (per-class docstrings give the details)
--------------------------------------------------
Notation: s (B, K) categorical scores, t (B, D) bit scores, A the 0/1 matrix
whose rows are assignments, ℓ_bz = loss_fn(b, z), sg(·) = stop-gradient.

* Deterministic ("dense", "sparsemax", "topk", "sparsemap", "sparsemap-budget",
  "exact"): a distribution π(·|x_b) with an explicit support; the loss is
  evaluated on the pairs (b, z) with π_bz > 0 only (ONE loss_fn call on the
  flattened pairs), and
      surrogate = (1/B) Σ_b Σ_{z: π_bz > 0} π_bz ℓ_bz,      calls_b = |{z: π_bz > 0}|.
  dense: π = softmax(s); sparsemax: π = sparsemax(s); topk (categorical):
  π = sparsemax(top_k(s)); topk (bits): π = sparsemax over the k best
  <a_z, t>; sparsemap: π = SparseMAP(t) over {0,1}^D (budget: Σz ≤ budget;
  "onehot" encoding: SparseMAP((t + 1)/2)); exact: π = softmax(A t) over all
  2^D (= Π_i Bernoulli(z_i; σ(t_i))).
  Entropy: sparse π: -Σ_{π>0} π log π; softmax: logsumexp(s) - <softmax(s), s>;
  exact: Σ_i softplus(t_i) - σ(t_i) t_i.
* "sfe": z ~ q (categorical softmax(s) by Gumbel-max; bits z_i = 1[t_i + L_i > 0],
  L ~ Logistic, i.e. z_i ~ Bernoulli(σ(t_i))),
      surrogate_b = ℓ(z) + (sg ℓ(z) - β) log q(z|x_b),
  β the running mean of batch-mean losses (updated after use), or 0.
* "sfe-plus": z1, z2 ~ q independent (one call, 2B pairs),
      surrogate_b = ℓ(z1) + (sg ℓ(z1) - sg ℓ(z2)) log q(z1|x_b).
* "sum-and-sample": C = top-k of π = softmax(s), z' ~ π(·|not C),
      surrogate_b = Σ_{z∈C} π_z ℓ_z + m ℓ(z') + sg(m) (sg ℓ(z') - β) log π(z'|not C),
  m = 1 - π(C) (see :class:`SumAndSample` for the derivation).
* "gumbel": y = softmax((s + g)/τ), g ~ Gumbel(0, 1) (bits: y = σ((t + L)/τ));
  "st-gumbel": z = hard + (y - sg y) (forward exactly the one-hot argmax /
  1[t + L > 0], gradient of y); surrogate = mean_b ℓ(z_b).  Biased.
  Entropy of the underlying categorical / Bernoulli distribution.

Options whose value is None count as not given.  Every option listed above
(and ``baseline``: "mean" | "none", ``max_iter``, ``tol``) may be passed to
every estimator, so one set of CLI options serves all methods: those the named
estimator does not use are ignored (see :data:`USES`); any other keyword is a
ValueError that lists the valid ones.  "sparsemap-budget" without ``budget``
uses D // 2 (the authors' setting).  The running baseline is
updated only by calls made with gradients enabled (not under
:func:`nets.no_grad`), unless ``update_baseline=`` says otherwise.
"""
import math
import numbers
from typing import Any, NamedTuple

import numpy as np

import refimpl
from refimpl.backend import xp_of
from refimpl.enumeration import all_bitvectors

from . import ops
from .autodiff import Tensor, is_grad_enabled

__all__ = ["Estimate", "Estimator", "make_estimator", "NAMES", "OPTIONS", "USES",
           "DenseSoftmax", "Sparsemax", "TopKSparsemax", "StructuredTopK", "SparseMAP",
           "ExactBits", "SFE", "SFEPlus", "SumAndSample", "GumbelSoftmax"]

LATENTS = ("categorical", "bits")
NAMES = {
    "categorical": ("dense", "sparsemax", "topk", "sfe", "sfe-plus", "sum-and-sample",
                    "gumbel", "st-gumbel"),
    "bits": ("topk", "sparsemap", "sparsemap-budget", "sfe", "sfe-plus", "gumbel",
             "st-gumbel", "exact"),
}
_REQUIRED = object()          # marks an option without a default
MAX_EXACT_D = 12              # "exact" enumerates all 2^D bit-vectors


class Estimate(NamedTuple):
    """What one estimator call returns (see the module docstring)."""
    surrogate: Any
    loss: Any
    calls: Any
    entropy: Any
    probs: Any = None
    support: Any = None


# ====================================================================== helpers
def _softmax_entropy(s):
    """H(softmax(s)) per row = logsumexp(s) - <softmax(s), s>: closed form, no log of 0."""
    return ops.logsumexp(s, axis=1) - (ops.softmax(s, axis=1) * s).sum(axis=1)


def _bernoulli_entropy(t):
    """Σ_i H(Bernoulli(σ(t_i))) per row; H = softplus(t) - σ(t) t, stable for any |t|
    (from H = p softplus(-t) + (1-p) softplus(t) and softplus(-t) = softplus(t) - t)."""
    return (ops.softplus(t) - ops.sigmoid(t) * t).sum(axis=1)


def _sparse_entropy(probs):
    """-Σ_{π>0} π log π per row of a (B, S) Tensor with exact zeros off the support.

    The log is taken of ``where(π > 0, π, 1)``, so a zero weight never reaches
    log (its term is 0·log 1 = 0, and its gradient is 0 too)."""
    on = probs.data > 0
    return -(probs * ops.log(ops.where(on, probs, 1.0))).sum(axis=1)


def _one_hot(cols, K, xp, dtype):
    """(n,) class indices -> (n, K) one-hot rows in ``dtype``."""
    return (xp.arange(K)[None, :] == cols[:, None]).astype(dtype)


def _noise(rng, kind, shape, like):
    """Gumbel(0,1) or Logistic(0,1) noise drawn with numpy ``rng`` (reproducible
    across backends), moved to ``like``'s device in its dtype."""
    draw = rng.gumbel(size=shape) if kind == "gumbel" else rng.logistic(size=shape)
    return like.xp.asarray(draw, dtype=like.dtype)


def _positive_int(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# ================================================================== base class
class Estimator:
    """Base class: ``estimator(scores, loss_fn, rng) -> Estimate``.

    Attributes: ``name``, ``latent``, ``deterministic`` (no sampling: the
    gradient is exact for the method's distribution), ``temperature`` (None
    except for the Gumbel estimators).  Subclasses implement
    ``_estimate(scores, loss_fn, rng)``.
    """

    deterministic = False

    def __init__(self, name, latent, **options):
        self.name, self.latent = name, latent
        self.options = dict(options)
        self.temperature = None
        self._baseline_n = 0.0          # running-baseline state (SFE, sum-and-sample)
        self._baseline = 0.0

    def __repr__(self):
        opts = "".join(f", {k}={v!r}" for k, v in self.options.items())
        return f"make_estimator({self.name!r}, {self.latent!r}{opts})"

    @property
    def _who(self):
        return f"estimator {self.name!r} ({self.latent})"

    # -------------------------------------------------------------- call
    def __call__(self, scores, loss_fn, rng=None, *, update_baseline=None):
        """Estimate for a batch.  ``update_baseline`` (default: whether gradients
        are enabled) says whether this call advances the running baseline."""
        self._check_scores(scores)
        if not callable(loss_fn):
            raise TypeError(f"{self._who}: loss_fn must be callable (idx, z) -> Tensor (n,), "
                            f"got {type(loss_fn).__name__}")
        if not self.deterministic and not isinstance(rng, np.random.Generator):
            raise TypeError(f"{self._who} samples: rng must be a numpy.random.Generator "
                            f"(numpy.random.default_rng(seed)), got {type(rng).__name__}")
        self._update = is_grad_enabled() if update_baseline is None else bool(update_baseline)
        return self._estimate(scores, loss_fn, rng)

    def _estimate(self, scores, loss_fn, rng):
        raise NotImplementedError

    def _check_scores(self, scores):
        axis = "K" if self.latent == "categorical" else "D"
        if not isinstance(scores, Tensor):
            raise TypeError(f"{self._who}: scores must be a nets.Tensor of shape (B, {axis}), "
                            f"got {type(scores).__name__}; wrap an array with nets.Tensor(x)")
        if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
            raise ValueError(f"{self._who}: scores must be a 2-D Tensor of shape (B, {axis}) "
                             f"with B, {axis} >= 1, got shape {scores.shape}")
        if scores.dtype.kind != "f":
            raise TypeError(f"{self._who}: scores must be floating, got dtype {scores.dtype}")
        if not bool(scores.xp.all(scores.xp.isfinite(scores.data))):
            raise ValueError(f"{self._who}: scores contain NaN or infinite entries")

    def _evaluate(self, loss_fn, idx, z, scores):
        """Call ``loss_fn(idx, z)`` ONCE and check it returned a finite Tensor (n,)
        on the scores' backend.  A constant result of another dtype is cast to
        the scores' dtype; a differentiable one must already have it."""
        n = int(idx.shape[0])
        out = loss_fn(idx, z)
        if not isinstance(out, Tensor):
            raise ValueError(f"{self._who}: loss_fn must return a nets.Tensor of shape ({n},) "
                             f"(one loss per pair), got {type(out).__name__}")
        if out.shape != (n,):
            raise ValueError(f"{self._who}: loss_fn must return shape ({n},) (one loss per "
                             f"(example, assignment) pair), got shape {out.shape}")
        if xp_of(out.data) is not scores.xp:
            raise ValueError(f"{self._who}: loss_fn returned an array of another backend "
                             f"({type(out.data).__module__}) than the scores")
        if out.dtype != scores.dtype:
            if out.requires_grad:
                raise ValueError(f"{self._who}: loss_fn returned dtype {out.dtype}, but the "
                                 f"scores have dtype {scores.dtype}")
            out = Tensor(out.data.astype(scores.dtype))
        xp = scores.xp
        bad = ~xp.isfinite(out.data)
        if bool(xp.any(bad)):
            where = xp.nonzero(bad)[0]
            first = int(where[0])
            raise ValueError(f"{self._who}: loss_fn returned non-finite values at "
                             f"{int(where.shape[0])} of {n} pairs (first: {float(out.data[first])} "
                             f"at pair {first}, example {int(idx[first])})")
        return out

    # ---------------------------------------------------------- baseline
    def _baseline_value(self):
        return self._baseline

    def _update_baseline(self, batch_mean):
        """After use: n += 1; b += (ℓ̄ - b)/n (cumulative mean), or with
        ``baseline_decay`` β: b = β b + (1 - β) ℓ̄ (the first step sets b = ℓ̄)."""
        if not self._update:
            return
        decay = self.options.get("baseline_decay")
        self._baseline_n += 1.0
        if decay is None or self._baseline_n == 1.0:
            self._baseline += (batch_mean - self._baseline) / self._baseline_n
        else:
            self._baseline = decay * self._baseline + (1.0 - decay) * batch_mean

    def state_dict(self):
        """``{"baseline_n": float, "baseline": float}``: the running-baseline state."""
        return {"baseline_n": float(self._baseline_n), "baseline": float(self._baseline)}

    def load_state_dict(self, state):
        """Restore :meth:`state_dict` so a resumed run continues exactly."""
        keys = {"baseline_n", "baseline"}
        if set(state) != keys:
            raise KeyError(f"{self._who}.load_state_dict: expected keys {sorted(keys)}, got "
                           f"{sorted(state)}")
        n, b = float(state["baseline_n"]), float(state["baseline"])
        if not (math.isfinite(n) and n >= 0 and n == int(n)) or not math.isfinite(b):
            raise ValueError(f"{self._who}.load_state_dict: baseline_n must be a non-negative "
                             f"integer and baseline finite, got {n!r}, {b!r}")
        self._baseline_n, self._baseline = n, b


# ============================================================== deterministic
class _Deterministic(Estimator):
    """Exact marginalisation over an explicit support:

        surrogate = (1/B) Σ_b Σ_{z: π_bz > 0} π_bz ℓ(x_b, z),   calls_b = #{z: π_bz > 0}.

    The nonzero (b, z) pairs are found with a boolean mask, ``loss_fn`` runs
    once on them, π is gathered at the same pairs (Tensor integer indexing,
    whose VJP scatter-adds back), and the products are summed.  Its gradient
    is Σ π ∇ℓ + Σ ℓ ∇π: the exact gradient of E_π[ℓ] (π piecewise smooth).
    """

    deterministic = True

    def _distribution(self, scores):
        """-> probs Tensor (B, S), assignments (S, ·) shared or (B, S, ·) per
        example, entropy Tensor (B,)."""
        raise NotImplementedError

    def _estimate(self, scores, loss_fn, rng):
        probs, assign, entropy = self._distribution(scores)
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

    def _distribution(self, s):
        K = s.shape[1]
        return ops.softmax(s, axis=1), s.xp.eye(K, dtype=s.dtype), _softmax_entropy(s)


class Sparsemax(_Deterministic):
    """"sparsemax" (categorical): π = sparsemax(s) = [s - τ]_+ (Euclidean
    projection onto the simplex).  Entropy -Σ_{π>0} π log π."""

    def _distribution(self, s):
        probs = ops.sparsemax(s, axis=1)
        return probs, s.xp.eye(s.shape[1], dtype=s.dtype), _sparse_entropy(probs)


class TopKSparsemax(_Deterministic):
    """"topk" (categorical, option k, required): π = sparsemax(top_k(s)), the
    k largest scores kept (ties to the lower index), the rest -inf; k >= K is
    plain sparsemax.  Entropy -Σ_{π>0} π log π."""

    def _distribution(self, s):
        probs = ops.topk_sparsemax(s, self.options["k"], axis=1)
        return probs, s.xp.eye(s.shape[1], dtype=s.dtype), _sparse_entropy(probs)


class StructuredTopK(_Deterministic):
    """"topk" (bits, option k = 10): the k best bit-vectors under s_z = <z, t>
    (k capped at 2^D), π = sparsemax of their scores (:func:`nets.ops.structured_topk`;
    ∂/∂t = Σ_j (J_sparsemaxᵀ g)_j z_j).  Entropy -Σ_{π>0} π log π."""

    def _distribution(self, t):
        D = t.shape[1]
        k = self.options["k"] if D >= 63 else min(self.options["k"], 2 ** D)
        bits, probs = ops.structured_topk(t, k)
        return probs, bits, _sparse_entropy(probs)


class SparseMAP(_Deterministic):
    """"sparsemap" / "sparsemap-budget" (bits): π = SparseMAP(t') = a sparse
    ξ* ∈ argmin_{ξ∈Δ} ||A ξ - t'||² over {0,1}^D (budget: {z : Σz <= budget},
    :func:`refimpl.budget_oracle`; default budget D // 2), found by the active-set method;
    ∂/∂t' = A_S Q g_S.  t' = t ("binary", default) or t' = (t + 1)/2
    ("onehot", the authors' encoding), a Tensor op so the chain rule includes
    the 1/2.  Options max_iter, tol go to the solver.  Entropy -Σ_{π>0} π log π.
    """

    def _distribution(self, t):
        o = self.options
        if self.name == "sparsemap-budget":
            budget = t.shape[1] // 2 if o["budget"] is None else o["budget"]
            oracle = refimpl.budget_oracle(budget)
        else:
            oracle = refimpl.bitvector_oracle
        tt = (t + 1.0) * 0.5 if o["sparsemap_encoding"] == "onehot" else t
        solver = {key: o[key] for key in ("max_iter", "tol") if o.get(key) is not None}
        vertices, weights = ops.sparsemap(tt, oracle, **solver)
        return weights, vertices, _sparse_entropy(weights)


class ExactBits(_Deterministic):
    """"exact" (bits, D <= 12): all 2^D bit-vectors (refimpl.enumeration order),
    π = softmax(A t), i.e. Π_i Bernoulli(z_i; σ(t_i)).  Entropy in closed
    form Σ_i softplus(t_i) - σ(t_i) t_i.  A test oracle: 2^D calls per example."""

    def _distribution(self, t):
        D = t.shape[1]
        if D > MAX_EXACT_D:
            raise ValueError(f"{self._who}: enumerates all 2^D bit-vectors, so D must be "
                             f"<= {MAX_EXACT_D}, got D = {D}")
        A = t.xp.asarray(all_bitvectors(D, dtype=np.float64), dtype=t.dtype)   # (2^D, D)
        probs = ops.softmax(ops.matmul(t, A.T), axis=1)
        return probs, A, _bernoulli_entropy(t)


# ============================================================ score function
def _sample(scores, latent, rng, copies=1):
    """``copies`` independent samples per example from q: (copies·B,) class
    indices and (copies·B, ·) 0/1 assignments, sample c of example b at row c·B + b.

    categorical: Gumbel-max, z = argmax(s + g) ~ softmax(s);
    bits: z_i = 1[t_i + L_i > 0], L ~ Logistic(0, 1), so P(z_i = 1) = σ(t_i)."""
    xp = scores.xp
    B, K = scores.shape
    data = xp.concatenate([scores.data] * copies, axis=0)
    if latent == "categorical":
        cols = xp.argmax(data + _noise(rng, "gumbel", data.shape, scores), axis=1)
        return cols, _one_hot(cols, K, xp, scores.dtype)
    z = (data + _noise(rng, "logistic", data.shape, scores) > 0).astype(scores.dtype)
    return None, z


def _log_q(scores, latent, cols, z):
    """log q(z|x) per example (Tensor (B,)): categorical log_softmax(s)[z];
    bits Σ_i z_i t_i - softplus(t_i) = Σ_i z_i log σ(t_i) + (1-z_i) log σ(-t_i)."""
    if latent == "categorical":
        return ops.log_softmax(scores, axis=1)[scores.xp.arange(scores.shape[0]), cols]
    return ops.bernoulli_log_likelihood(scores, z).sum(axis=1)


def _entropy_q(scores, latent):
    return _softmax_entropy(scores) if latent == "categorical" else _bernoulli_entropy(scores)


class SFE(Estimator):
    """"sfe" (score function / REINFORCE).  z ~ q(·|x_b) (categorical softmax(s),
    bits Π Bernoulli(σ(t_i))), one call per example, and

        surrogate_b = ℓ(x_b, z) + (sg ℓ(x_b, z) - β) · log q(z|x_b),

    whose gradient ∇ℓ(z) + (ℓ(z) - β) ∇ log q(z) is unbiased for ∇ E_q[ℓ]
    since E_q[∇ log q] = 0 for any β constant in the step.  Option baseline:
    "mean" (default; β = the running mean of batch-mean losses, used THEN
    updated: n += 1, β += (ℓ̄ - β)/n, or β = decay β + (1 - decay) ℓ̄ with
    ``baseline_decay``) or "none" (β = 0).  Reported loss ℓ(z); entropy of q
    in closed form."""

    def _estimate(self, scores, loss_fn, rng):
        xp = scores.xp
        B = scores.shape[0]
        cols, z = _sample(scores, self.latent, rng)
        loss = self._evaluate(loss_fn, xp.arange(B), z, scores)
        log_q = _log_q(scores, self.latent, cols, z)
        use = self.options["baseline"] == "mean"
        beta = self._baseline_value() if use else 0.0
        surrogate = (loss + log_q * (loss.data - beta)).mean()
        if use:
            self._update_baseline(float(loss.data.mean()))
        return Estimate(surrogate, loss.data, xp.ones(B, dtype=np.int64),
                        _entropy_q(scores, self.latent))


class SFEPlus(Estimator):
    """"sfe-plus" (SFE with a self-critic baseline): z1, z2 ~ q(·|x_b)
    independent, both evaluated in ONE loss_fn call (2B pairs: rows b and B + b),

        surrogate_b = ℓ(z1) + (sg ℓ(z1) - sg ℓ(z2)) · log q(z1|x_b).

    Unbiased: z2 is independent of z1, so E[ℓ(z2) ∇ log q(z1)] = 0.  The
    decoder gradient comes from ℓ(z1) only.  2 calls per example; reported
    loss ℓ(z1); entropy of q in closed form."""

    def _estimate(self, scores, loss_fn, rng):
        xp = scores.xp
        B = scores.shape[0]
        cols, z = _sample(scores, self.latent, rng, copies=2)
        idx = xp.concatenate([xp.arange(B), xp.arange(B)])
        loss = self._evaluate(loss_fn, idx, z, scores)
        l1 = loss[:B]
        log_q = _log_q(scores, self.latent, None if cols is None else cols[:B], z[:B])
        surrogate = (l1 + log_q * (loss.data[:B] - loss.data[B:])).mean()
        return Estimate(surrogate, loss.data[:B], xp.full(B, 2, dtype=np.int64),
                        _entropy_q(scores, self.latent))


class SumAndSample(Estimator):
    """"sum-and-sample" (Liu et al. 2019, Rao-Blackwellised SFE), categorical,
    option k (default 1, capped at K), option baseline ("none" default | "mean").

    With π = softmax(s), C the k classes of largest score (ties to the lower
    index; C is piecewise constant in s, so fixed under differentiation) and
    m = 1 - π(C) = Σ_{z∉C} π_z:

        E_π[ℓ] = Σ_{z∈C} π_z ℓ_z + m E_{z'~π(·|¬C)}[ℓ_{z'}],  π(z'|¬C) = π_{z'}/m.

    Differentiating (product rule, score function for the inner expectation):

        ∇E_π[ℓ] = Σ_C (ℓ_z ∇π_z + π_z ∇ℓ_z) + ∇m · E[ℓ_{z'}]
                  + m E[∇ℓ_{z'} + (ℓ_{z'} - β) ∇ log π(z'|¬C)]

    (β any constant: E[∇ log π(z'|¬C)] = 0).  One sample z' ~ π(·|¬C) (Gumbel-max
    over the complement) gives the unbiased estimate; its surrogate is

        R̃_b = Σ_{z∈C} π_z ℓ_z + m ℓ(z') + sg(m) · (sg ℓ(z') - β) · log π(z'|¬C).

    ∇ of m ℓ(z') is ∇m ℓ(z') + m ∇ℓ(z') (mass and decoder terms); the last
    term is the REINFORCE term for the conditional sample.  The factor m there
    MUST be stop-gradient: otherwise ∇m (ℓ(z') - β) log π(z'|¬C), whose
    expectation is ∇m (E[ℓ log π(·|¬C)] - β E[log π(·|¬C)]) ≠ 0, biases it.
    Stable forms: m = exp(lse_{z∉C} s_z - lse_z s_z) and
    log π(z'|¬C) = s_{z'} - lse_{z∉C} s_z.  When k >= K the complement is
    empty: no sample, R̃ = Σ_z π_z ℓ_z (dense).  k + 1 calls per example (k if
    k = K), all in one loss_fn call.  Reported loss Σ_C π_z ℓ_z + m ℓ(z').
    The "mean" baseline is the running mean of the batch means of ℓ(z').
    Entropy of softmax(s) in closed form."""

    def _estimate(self, scores, loss_fn, rng):
        s, xp, dtype = scores, scores.xp, scores.dtype
        B, K = s.shape
        k = min(self.options["k"], K)
        top = xp.argsort(-s.data, axis=1, kind="stable")[:, :k]           # (B, k) = C
        rows = xp.arange(B)
        idx_c, col_c = xp.repeat(rows, k), top.reshape(-1)               # example-major
        sample = k < K
        if sample:
            in_c = xp.zeros((B, K), dtype=bool)
            in_c[rows[:, None], top] = True
            g = _noise(rng, "gumbel", (B, K), s)
            neg_inf = xp.asarray(-np.inf, dtype=dtype)
            z_out = xp.argmax(xp.where(in_c, neg_inf, s.data + g), axis=1)   # z' ~ π(·|¬C)
            idx, cols = xp.concatenate([idx_c, rows]), xp.concatenate([col_c, z_out])
        else:
            idx, cols = idx_c, col_c
        loss = self._evaluate(loss_fn, idx, _one_hot(cols, K, xp, dtype), s)
        pi = ops.softmax(s, axis=1)
        summed = (pi[idx_c, col_c] * loss[:B * k]).reshape(B, k).sum(axis=1)   # Σ_C π ℓ
        if sample:
            l_out = loss[B * k:]
            lse_out = ops.logsumexp(ops.where(in_c, -np.inf, s), axis=1)       # log Σ_{¬C} e^s
            m = ops.exp(lse_out - ops.logsumexp(s, axis=1))                     # 1 - π(C)
            log_cond = s[rows, z_out] - lse_out                                 # log π(z'|¬C)
            use = self.options["baseline"] == "mean"
            beta = self._baseline_value() if use else 0.0
            per = summed + m * l_out + log_cond * (m.data * (l_out.data - beta))
            reported = summed.data + m.data * l_out.data
            if use:
                self._update_baseline(float(l_out.data.mean()))
        else:
            per, reported = summed, summed.data
        calls = xp.full(B, k + int(sample), dtype=np.int64)
        return Estimate(per.mean(), reported, calls, _softmax_entropy(s))


class GumbelSoftmax(Estimator):
    """"gumbel" / "st-gumbel" (option temperature τ = 1.0; mutable
    ``estimator.temperature`` for schedules).

    categorical: g ~ Gumbel(0, 1), y = softmax((s + g)/τ), hard = onehot(argmax(s + g))
    (argmax(s + g) ~ softmax(s));  bits: L ~ Logistic(0, 1), y = σ((t + L)/τ),
    hard = 1[t + L > 0] (~ Bernoulli(σ(t))).  "gumbel" passes z = y;
    "st-gumbel" passes z = hard + (y - sg y): forward exactly hard, gradient
    that of y.  surrogate = mean_b ℓ(x_b, z_b) (a biased, reparameterised
    estimate); 1 call per example; reported loss ℓ(z); entropy of the
    underlying categorical / Bernoulli q in closed form."""

    def __init__(self, name, latent, **options):
        super().__init__(name, latent, **options)
        self.temperature = options["temperature"]

    def _estimate(self, scores, loss_fn, rng):
        tau = self.temperature
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real) \
                or not (math.isfinite(float(tau)) and float(tau) > 0):
            raise ValueError(f"{self._who}: temperature must be a positive finite number, "
                             f"got {tau!r}")
        tau = float(tau)
        xp = scores.xp
        B, K = scores.shape
        if self.latent == "categorical":
            noisy = scores + _noise(rng, "gumbel", (B, K), scores)
            y = ops.softmax(noisy / tau, axis=1)
            hard = _one_hot(xp.argmax(noisy.data, axis=1), K, xp, scores.dtype)
        else:
            noisy = scores + _noise(rng, "logistic", (B, K), scores)
            y = ops.sigmoid(noisy / tau)
            hard = (noisy.data > 0).astype(scores.dtype)
        z = y if self.name == "gumbel" else Tensor(hard) + (y - y.detach())
        loss = self._evaluate(loss_fn, xp.arange(B), z, scores)
        return Estimate(loss.mean(), loss.data, xp.ones(B, dtype=np.int64),
                        _entropy_q(scores, self.latent))


# ================================================================== factory
def _check_k(value):
    return _positive_int(value, "option k")


def _check_budget(value):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"option budget must be a non-negative integer, got {value!r}")
    return int(value)


def _check_choice(choices):
    def check(value):
        if value not in choices:
            raise ValueError(f"must be one of {list(choices)}, got {value!r}")
        return value
    return check


def _check_decay(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"option baseline_decay must be None or a number in [0, 1), "
                         f"got {value!r}")
    return float(value)


def _check_temperature(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not (math.isfinite(float(value)) and float(value) > 0):
        raise ValueError(f"option temperature must be a positive finite number, got {value!r}")
    return float(value)


def _check_max_iter(value):
    return _positive_int(value, "option max_iter")


def _check_tol(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"option tol must be a positive number, got {value!r}")
    return float(value)


_OPTION_CHECKS = {
    "k": _check_k, "budget": _check_budget, "temperature": _check_temperature,
    "baseline": _check_choice(("mean", "none")), "baseline_decay": _check_decay,
    "sparsemap_encoding": _check_choice(("binary", "onehot")),
    "max_iter": _check_max_iter, "tol": _check_tol,
}

_SOLVER = {"sparsemap_encoding": "binary", "max_iter": None, "tol": None}
# (latent, name) -> (class, {option: default or _REQUIRED})
_SPECS = {
    ("categorical", "dense"): (DenseSoftmax, {}),
    ("categorical", "sparsemax"): (Sparsemax, {}),
    ("categorical", "topk"): (TopKSparsemax, {"k": _REQUIRED}),
    ("bits", "topk"): (StructuredTopK, {"k": 10}),
    ("bits", "sparsemap"): (SparseMAP, dict(_SOLVER)),
    ("bits", "sparsemap-budget"): (SparseMAP, dict(_SOLVER, budget=None)),
    ("bits", "exact"): (ExactBits, {}),
    ("categorical", "sum-and-sample"): (SumAndSample, {"k": 1, "baseline": "none",
                                                       "baseline_decay": None}),
}
for _latent in LATENTS:
    _SPECS[(_latent, "sfe")] = (SFE, {"baseline": "mean", "baseline_decay": None})
    _SPECS[(_latent, "sfe-plus")] = (SFEPlus, {})
    _SPECS[(_latent, "gumbel")] = (GumbelSoftmax, {"temperature": 1.0})
    _SPECS[(_latent, "st-gumbel")] = (GumbelSoftmax, {"temperature": 1.0})
assert set(_SPECS) == {(lat, n) for lat in LATENTS for n in NAMES[lat]}
OPTIONS = tuple(_OPTION_CHECKS)                 # every option make_estimator knows
USES = {key: frozenset(spec) for key, (_, spec) in _SPECS.items()}   # those each one uses


def make_estimator(name, latent, **options):
    """The estimator ``name`` for ``latent`` ("categorical" | "bits"); see the
    module docstring for the names and options.  Options set to None count as
    not given; known options the estimator does not use are ignored.  Raises
    ValueError (listing the valid choices) for an unknown latent, name or
    option, a missing required option, or a bad value of an option it uses."""
    if latent not in LATENTS:
        raise ValueError(f"latent must be one of {list(LATENTS)}, got {latent!r}")
    if name not in NAMES[latent]:
        other = [lat for lat in LATENTS if name in NAMES[lat]]
        hint = f" ({name!r} exists only for latent {other[0]!r})" if other else ""
        raise ValueError(f"unknown estimator {name!r} for latent {latent!r}{hint}; valid "
                         f"names: {list(NAMES[latent])}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for make_estimator({name!r}, {latent!r}); "
                         f"valid options: {list(OPTIONS)} (this estimator uses "
                         f"{sorted(USES[(latent, name)]) or 'none'})")
    cls, spec = _SPECS[(latent, name)]
    given = {key: value for key, value in options.items() if value is not None}
    resolved = {}
    for key, default in spec.items():
        if key not in given or given[key] is None:
            if default is _REQUIRED:
                raise ValueError(f"estimator {name!r} ({latent}) needs option {key!r}")
            resolved[key] = default
            continue
        try:
            resolved[key] = _OPTION_CHECKS[key](given[key])
        except ValueError as exc:
            raise ValueError(f"estimator {name!r} ({latent}): option {key!r}: {exc}") from None
    return cls(name, latent, **resolved)
