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
"""
