"""Softmax family, likelihoods, entropy, KL and the sparsemax loss: each forward
with its VJP right under it.

Same conventions as :mod:`nets.ops` (outputs keep the inputs' dtype and device;
VJPs never write into their cotangent), whose namespace also carries these
names.  The array math (logsumexp, softplus, sigmoid, Bernoulli entropy,
one-hot) comes from :mod:`refimpl.numerics`, its one home.
"""

import refimpl
from refimpl.backend import xp_of
from refimpl.numerics import bernoulli_entropy as _bernoulli_entropy
from refimpl.numerics import logsumexp as _lse
from refimpl.numerics import one_hot
from refimpl.numerics import sigmoid as _sigmoid
from refimpl.numerics import softplus as _softplus

from ._helpers import _axis, _constant, _pair
from .autodiff import as_tensor, make_output

__all__ = ["logsumexp", "log_softmax", "softmax", "cross_entropy",
           "bernoulli_log_likelihood", "bernoulli_entropy", "gaussian_kl", "sparsemax_loss"]


# ---------------------------------------------------------- softmax family
def _logsumexp(x, axis):
    """:func:`refimpl.numerics.logsumexp` over ``axis`` with ``keepdims``."""
    return _lse(x, axis=axis, keepdims=True)


def _softmax_from(x, lse):
    """``exp(x - lse)``: exact zeros where ``x = -inf``, also in an all-``-inf`` slice
    (there ``lse = -inf`` is replaced by 0, so no ``-inf - -inf`` is formed)."""
    xp = xp_of(x)
    return xp.exp(x - xp.where(xp.isfinite(lse), lse, xp.zeros_like(lse)))


def logsumexp(a, axis=-1, keepdims=False):
    """``log Σ_axis exp(a)``, stable; ``-inf`` entries allowed (their gradient is 0)."""
    a = as_tensor(a)
    axis = _axis(axis, a.ndim, "logsumexp")
    lse = _logsumexp(a.data, axis)

    def vjp(g):
        """J = pᵀ along ``axis``, p = softmax(a): the cotangent is spread as g p."""
        g = g if keepdims else a.xp.expand_dims(g, axis)
        return (g * _softmax_from(a.data, lse),)

    return make_output(lse if keepdims else lse.squeeze(axis), (a,), vjp, "logsumexp")


def log_softmax(a, axis=-1):
    """``a - logsumexp(a)`` along ``axis``; ``-inf`` entries give ``-inf`` and a finite gradient.

    Each slice needs at least one finite entry.
    """
    a = as_tensor(a)
    axis = _axis(axis, a.ndim, "log_softmax")
    lse = _logsumexp(a.data, axis)
    p = _softmax_from(a.data, lse)

    def vjp(g):
        """J = I - 1 pᵀ (p = softmax(a)), so Jᵀ g = g - p Σ g."""
        return (g - p * g.sum(axis=axis, keepdims=True),)

    return make_output(a.data - lse, (a,), vjp, "log_softmax")


def softmax(a, axis=-1):
    """``exp(a) / Σ exp(a)`` along ``axis``, stable; ``-inf`` entries get probability 0."""
    a = as_tensor(a)
    axis = _axis(axis, a.ndim, "softmax")
    p = _softmax_from(a.data, _logsumexp(a.data, axis))

    def vjp(g):
        """J = diag(p) - p pᵀ, so Jᵀ g = p * (g - <p, g>)."""
        return (p * (g - (p * g).sum(axis=axis, keepdims=True)),)

    return make_output(p, (a,), vjp, "softmax")


def cross_entropy(logits, targets, axis=-1):
    """Per-example ``-log softmax(logits)[target]``, no reduction.

    logits : (..., K, ...) Tensor with the K classes along ``axis``.
    targets : integer array shaped like ``logits`` without ``axis``, values in [0, K).
    Returns a Tensor of ``targets``' shape.
    """
    logits = as_tensor(logits)
    xp = logits.xp
    axis = _axis(axis, logits.ndim, "cross_entropy")
    targets = _constant(targets, logits, "targets", "cross_entropy")
    K = logits.shape[axis]
    expected = logits.shape[:axis] + logits.shape[axis + 1:]
    if targets.dtype.kind not in "iu" or tuple(targets.shape) != expected:
        raise ValueError(f"cross_entropy: targets must be an integer array of shape {expected} "
                         f"(logits without axis {axis}), got dtype {targets.dtype} and shape "
                         f"{tuple(targets.shape)}")
    if targets.size and bool(xp.any((targets < 0) | (targets >= K))):     # one host sync
        raise ValueError(f"cross_entropy: targets must lie in [0, {K}), got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")
    x = logits.data
    t = xp.expand_dims(targets, axis)
    lse = _logsumexp(x, axis)
    out = (lse - xp.take_along_axis(x, t, axis=axis)).squeeze(axis)

    def vjp(g):
        """J = pᵀ - e_targetᵀ (p = softmax(logits)), so Jᵀ g = g (p - onehot)."""
        shape = [1] * x.ndim
        shape[axis] = K
        onehot = xp.arange(K).reshape(shape) == t
        return (xp.expand_dims(g, axis) * (_softmax_from(x, lse) - onehot),)

    return make_output(out, (logits,), vjp, "cross_entropy")


# ------------------------------------------------------- likelihoods, KL, where
def bernoulli_log_likelihood(logits, x):
    """Elementwise ``log Bernoulli(x; sigmoid(logits)) = x l - softplus(l)``.

    logits : Tensor; x : constant array of the same shape with values in [0, 1]
    (fractional x gives the usual continuous relaxation of the same formula).
    """
    logits = as_tensor(logits)
    xp = logits.xp
    x = _constant(x, logits, "x", "bernoulli_log_likelihood").astype(logits.dtype, copy=False)
    if tuple(x.shape) != logits.shape:
        raise ValueError(f"bernoulli_log_likelihood: x has shape {tuple(x.shape)}, expected the "
                         f"logits' shape {logits.shape}")
    if bool(xp.any((x < 0) | (x > 1))):
        raise ValueError("bernoulli_log_likelihood: x must lie in [0, 1]")
    return _bernoulli_log_likelihood(logits, x)


def _bernoulli_log_likelihood(logits, x):
    """:func:`bernoulli_log_likelihood` for x known to lie in [0, 1] (0/1 samples
    drawn by an estimator, shape and dtype of ``logits``): no host sync."""
    lg = logits.data

    def vjp(g):
        """J = diag(x - sigmoid(l))."""
        return (g * (x - _sigmoid(lg)),)

    return make_output(x * lg - _softplus(lg), (logits,), vjp, "bernoulli_log_likelihood")


def gaussian_kl(mu, logvar):
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` summed over the last axis.

    ``0.5 Σ (exp(logvar) + mu² - 1 - logvar)``; mu, logvar : (..., H) -> (...,).
    """
    mu, logvar = _pair(mu, logvar, "gaussian_kl")
    if mu.shape != logvar.shape or mu.ndim == 0:
        raise ValueError(f"gaussian_kl: mu and logvar must have one shape with at least one "
                         f"axis, got {mu.shape} and {logvar.shape}")
    var = logvar.xp.exp(logvar.data)
    out = 0.5 * (var + mu.data * mu.data - 1 - logvar.data).sum(axis=-1)

    def vjp(g):
        """J_mu = muᵀ, J_logvar = ½ (exp(logvar) - 1)ᵀ, per row."""
        g = g[..., None]
        return g * mu.data, g * (0.5 * (var - 1))

    return make_output(out, (mu, logvar), vjp, "gaussian_kl")


def bernoulli_entropy(t):
    """``Σ_i H(Bernoulli(σ(t_i)))`` over the last axis: Tensor (..., D) -> (...).

    ``H = softplus(t) - σ(t) t`` (:func:`refimpl.numerics.bernoulli_entropy`).
    """
    t = as_tensor(t)

    def vjp(g):
        """J = -(σ(t) σ(-t) t)ᵀ per row: dH/dt = σ - (σ'(t) t + σ) with σ' = σ(t) σ(-t)."""
        xp = t.xp
        slope = xp.exp(-_softplus(t.data) - _softplus(-t.data))          # σ(t) σ(-t), exact
        return (-(g[..., None] * slope * t.data),)

    return make_output(_bernoulli_entropy(t.data), (t,), vjp, "bernoulli_entropy")


def sparsemax_loss(scores, targets):
    """Per-example sparsemax loss (Martins & Astudillo 2016), no reduction.

    ``L(s, y) = -s_y + 1/2 Σ_{j ∈ S} (s_j² - τ²) + 1/2`` with ``p = sparsemax(s) =
    [s - τ]_+`` and S its support, computed as ``1/2 ||s - e_y||² - 1/2 ||s - p||²``
    (the same number; >= 0, and 0 iff p = e_y).

    scores : Tensor (B, K); targets : integer array (B,) in [0, K).  Returns Tensor (B,).
    """
    scores = as_tensor(scores)
    xp = scores.xp
    s = scores.data
    targets = xp.asarray(targets)
    if s.ndim != 2 or targets.shape != s.shape[:1] or targets.dtype.kind not in "iu":
        raise ValueError(f"sparsemax_loss: need scores (B, K) and integer targets (B,), got "
                         f"{s.shape} and {targets.dtype} {tuple(targets.shape)}")
    p = refimpl.sparsemax(s, axis=-1)
    onehot = one_hot(targets, s.shape[1], xp, s.dtype)
    out = 0.5 * (((s - onehot) ** 2).sum(-1) - ((s - p) ** 2).sum(-1))

    def vjp(g):
        """J = (p - e_y)ᵀ per row: the gradient of the loss is sparsemax(s) - onehot(y)."""
        return (g[:, None] * (p - onehot),)

    return make_output(out, (scores,), vjp, "sparsemax_loss")
