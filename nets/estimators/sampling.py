"""Monte Carlo estimators: SFE, SFE+, sum-and-sample, Gumbel-softmax and
straight-through Gumbel."""
import math
import numbers

import numpy as np

from refimpl.numerics import one_hot

from .. import ops
from ..autodiff import Tensor
from ..losses import _bernoulli_log_likelihood, bernoulli_entropy
from .base import Estimate, Estimator, _noise, _softmax_entropy


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
        return cols, one_hot(cols, K, xp, scores.dtype)
    z = (data + _noise(rng, "logistic", data.shape, scores) > 0).astype(scores.dtype)
    return None, z


def _log_q(scores, latent, cols, z):
    """log q(z|x) per example (Tensor (B,)): categorical log_softmax(s)[z];
    bits Σ_i z_i t_i - softplus(t_i) = Σ_i z_i log σ(t_i) + (1-z_i) log σ(-t_i)."""
    if latent == "categorical":
        return ops.log_softmax(scores, axis=1)[scores.xp.arange(scores.shape[0]), cols]
    return _bernoulli_log_likelihood(scores, z).sum(axis=1)    # z is 0/1: no range check


def _entropy_q(scores, latent):
    return _softmax_entropy(scores) if latent == "categorical" else bernoulli_entropy(scores)


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
        beta = xp.asarray(self._baseline_value(), dtype=loss.dtype) if use else 0.0
        surrogate = (loss + log_q * (loss.data - beta)).mean()
        if use:
            self._update_baseline(loss.data.mean().astype(np.float64))   # on the device: no sync
        return Estimate(surrogate, loss.data, xp.ones(B, dtype=np.int64),
                        _entropy_q(scores, self.latent))


class SFEPlus(Estimator):
    """"sfe-plus" (SFE with a self-critic baseline): z1, z2 ~ q(·|x_b)
    independent, both evaluated in ONE loss_fn call (2B pairs: rows b and B + b),

        surrogate_b = ℓ(z1) + (sg ℓ(z1) - sg ℓ(z2)) · log q(z1|x_b).

    Unbiased: z2 is independent of z1, so E[ℓ(z2) ∇ log q(z1)] = 0.  The
    decoder gradient comes from ℓ(z1) only.  2 calls per example; reported
    loss ℓ(z1); entropy of q in closed form.

    Option ``sfe_plus_baseline``: "detached" (default, the formula above) or
    "authors" (the authors' code, which does not stop the baseline's gradient):

        surrogate_b = ℓ(z1) + (sg ℓ(z1) - ℓ(z2)) · log q(z1|x_b),

    so the decoder also receives -log q(z1|x_b) ∇ℓ(z2).  Its expectation is
    -E[log q(z1)] E[∇ℓ(z2)] = H(q) ∇E_q[ℓ] ≠ 0: a biased decoder gradient (the
    encoder's gradient is the same as "detached")."""

    def _estimate(self, scores, loss_fn, rng):
        xp = scores.xp
        B = scores.shape[0]
        cols, z = _sample(scores, self.latent, rng, copies=2)
        idx = xp.concatenate([xp.arange(B), xp.arange(B)])
        loss = self._evaluate(loss_fn, idx, z, scores)
        l1 = loss[:B]
        log_q = _log_q(scores, self.latent, None if cols is None else cols[:B], z[:B])
        if self.options.get("sfe_plus_baseline") == "authors":
            surrogate = (l1 + log_q * (Tensor(loss.data[:B]) - loss[B:])).mean()
        else:
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
        loss = self._evaluate(loss_fn, idx, one_hot(cols, K, xp, dtype), s)
        pi = ops.softmax(s, axis=1)
        summed = (pi[idx_c, col_c] * loss[:B * k]).reshape(B, k).sum(axis=1)   # Σ_C π ℓ
        if sample:
            l_out = loss[B * k:]
            lse_out = ops.logsumexp(ops.where(in_c, -np.inf, s), axis=1)       # log Σ_{¬C} e^s
            m = ops.exp(lse_out - ops.logsumexp(s, axis=1))                     # 1 - π(C)
            log_cond = s[rows, z_out] - lse_out                                 # log π(z'|¬C)
            use = self.options["baseline"] == "mean"
            beta = xp.asarray(self._baseline_value(), dtype=dtype) if use else 0.0
            per = summed + m * l_out + log_cond * (m.data * (l_out.data - beta))
            reported = summed.data + m.data * l_out.data
            if use:
                self._update_baseline(l_out.data.mean().astype(np.float64))
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
            hard = one_hot(xp.argmax(noisy.data, axis=1), K, xp, scores.dtype)
        else:
            noisy = scores + _noise(rng, "logistic", (B, K), scores)
            y = ops.sigmoid(noisy / tau)
            hard = (noisy.data > 0).astype(scores.dtype)
        z = y if self.name == "gumbel" else Tensor(hard) + (y - y.detach())
        loss = self._evaluate(loss_fn, xp.arange(B), z, scores)
        return Estimate(loss.mean(), loss.data, xp.ones(B, dtype=np.int64),
                        _entropy_q(scores, self.latent))
