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
    t' = (t + 1)/2, the authors' one-hot encoding), sparsemap_init ("oracle"
    default | "random": a random starting vertex from the call's rng, as the
    authors), sfe_plus_baseline ("detached" default | "authors": the second
    sample's loss keeps its gradient), baseline_decay (None = cumulative mean
    as the authors), solver options.

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

import numpy as np

from refimpl.numerics import check_positive_int

from .base import _REQUIRED, LATENTS, NAMES, Estimate, Estimator, NonFiniteLossError
from .deterministic import (DenseSoftmax, ExactBits, SparseMAP, Sparsemax, StructuredTopK,
                            TopKSparsemax)
from .sampling import SFE, GumbelSoftmax, SFEPlus, SumAndSample

__all__ = ["Estimate", "Estimator", "NonFiniteLossError", "make_estimator", "NAMES", "OPTIONS", "USES",
           "DenseSoftmax", "Sparsemax", "TopKSparsemax", "StructuredTopK", "SparseMAP",
           "ExactBits", "SFE", "SFEPlus", "SumAndSample", "GumbelSoftmax"]


# ================================================================== factory
def _check_k(value):
    return check_positive_int(value, "option k")


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
    return check_positive_int(value, "option max_iter")


def _check_tol(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not float(value) > 0:
        raise ValueError(f"option tol must be a positive number, got {value!r}")
    return float(value)


_OPTION_CHECKS = {
    "k": _check_k, "budget": _check_budget, "temperature": _check_temperature,
    "baseline": _check_choice(("mean", "none")), "baseline_decay": _check_decay,
    "sparsemap_encoding": _check_choice(("binary", "onehot")),
    "sparsemap_init": _check_choice(("oracle", "random")),
    "sfe_plus_baseline": _check_choice(("detached", "authors")),
    "max_iter": _check_max_iter, "tol": _check_tol,
}

_SOLVER = {"sparsemap_encoding": "binary", "sparsemap_init": "oracle", "max_iter": None,
           "tol": None}
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
    _SPECS[(_latent, "sfe-plus")] = (SFEPlus, {"sfe_plus_baseline": "detached"})
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
