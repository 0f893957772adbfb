"""Shared pieces of the estimators: the result type, closed-form entropies,
noise, and the :class:`Estimator` base class (input checks, the one batched
``loss_fn`` call, the running baseline)."""
import math
from typing import Any, NamedTuple

import numpy as np

from refimpl.backend import xp_of

from .. import ops
from ..autodiff import Tensor, is_grad_enabled


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


def _sparse_entropy(probs):
    """-Σ_{π>0} π log π per row of a (B, S) Tensor with exact zeros off the support.

    The log is taken of ``where(π > 0, π, 1)``, so a zero weight never reaches
    log (its term is 0·log 1 = 0, and its gradient is 0 too)."""
    on = probs.data > 0
    return -(probs * ops.log(ops.where(on, probs, 1.0))).sum(axis=1)


def _noise(rng, kind, shape, like):
    """Gumbel(0,1) or Logistic(0,1) noise drawn with numpy ``rng`` (reproducible
    across backends), moved to ``like``'s device in its dtype."""
    draw = rng.gumbel(size=shape) if kind == "gumbel" else rng.logistic(size=shape)
    return like.xp.asarray(draw, dtype=like.dtype)


class NonFiniteLossError(ValueError):
    """The loss became NaN or infinite where an estimator evaluates it: ``loss_fn``
    returned such values (:meth:`Estimator._evaluate`), or the scores it is
    evaluated on contain them (a diverged encoder; :meth:`Estimator._check_scores`).

    A ``ValueError`` subclass; a training loop stops a run on it by catching the type."""


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
        try:
            return self._estimate(scores, loss_fn, rng)
        except NonFiniteLossError:
            raise
        except ValueError:      # e.g. a mapping refusing NaN scores: report it as NaN scores
            self._raise_if_scores_bad(scores)
            raise

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
        # NaN/inf scores are checked with the loss values in _evaluate: one host sync.

    def _raise_if_scores_bad(self, scores):
        if not bool(scores.xp.all(scores.xp.isfinite(scores.data))):
            raise NonFiniteLossError(f"{self._who}: scores contain NaN or infinite entries") from None

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
        # One host sync per call for both checks: the scores (deferred from
        # __call__; NaN scores are harmless until here) and the loss values.
        if bool(xp.any(bad) | ~xp.all(xp.isfinite(scores.data))):
            self._raise_if_scores_bad(scores)
            where = xp.nonzero(bad)[0]
            first = int(where[0])
            raise NonFiniteLossError(f"{self._who}: loss_fn returned non-finite values at "
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
