"""The bit-vector VAE of paper §5.3: model, fused decoder head, and its evaluation math.

* :func:`pixel_categorical_nll` -- the decoder's hot path as ONE differentiable op:
  the per-pixel 256-way cross-entropy of the shared ``Linear(5 -> 256)`` head,
  summed over the pixels of each row, with a handwritten VJP.
* :class:`BitVAE` -- encoder ``Linear(784->128) ReLU Linear(128->D)`` (scores t),
  decoder ``Linear(D->128) ReLU Linear(128->784*5)``, reshape (784, 5), shared
  head ``Linear(5->256)``: each pixel a categorical over its raw byte
  (docs/authors.md, "Bit-vector VAE").
* :func:`importance_nll` / :func:`authors_nll` -- log p(x) estimates for the
  test set (see their docstrings and docs/results.md).

Everything takes its array namespace from the arrays (NumPy or CuPy).
"""
import math

import numpy as np

from nets import MLP, Linear, Module, Tensor, no_grad, ops
from nets.autodiff import as_tensor, is_grad_enabled, make_output
from experiments.runfiles import progress
from refimpl.backend import to_numpy, xp_of
from refimpl.numerics import bernoulli_entropy, bit_codes, logsumexp
from refimpl.numerics import log_sigmoid as _log_sigmoid

__all__ = ["pixel_categorical_nll", "pixel_categorical_nll_reference", "BitVAE", "bit_codes",
           "draw_bernoulli", "log_bernoulli", "bernoulli_entropy", "importance_nll", "authors_nll",
           "effective_sample_size", "NLL_UNIFORM",
           "logsumexp", "evaluate", "HEAD_CHUNK_PIXELS"]

N_PIXELS, CHANNELS, LEVELS = 784, 5, 256
# Pixels (rows x P) whose 256 logits are materialised at once by the fused head.  CPU:
# 4 images' worth (3 MB) stays in the L2/L3 cache; GPU: large for occupancy (200 MB).
HEAD_CHUNK_PIXELS = {"numpy": 4 * N_PIXELS, "cupy": 256 * N_PIXELS}
# The unshifted exp is used when the per-pixel sum of exps lies in [LO, HI]: no overflow
# (each term <= HI) and no total underflow; other pixels are redone with the max shift.
_SUM_LO, _SUM_HI = 1e-20, 1e20


# =========================================================================== fused head
def _head_chunk(ha, Wa2, WT1, need_grad, shift, buf):
    """Per-pixel log-normaliser of one chunk of rows, and the pieces of the VJP.

    ha : (r, P, C+1) head inputs with a ones column; Wa2 : (C+1, L) = [W; b]·log2(e)
    (base-2 logits: ``exp2`` is twice as fast as ``exp`` in NumPy and gives the
    same E = exp(logits)); WT1 : (L, C+1) = [Wᵀ | 1]; buf : scratch (≥ r·P, L).
    Returns lse (r, P), and with ``need_grad`` R = E Wᵀ / s (r, P, C) and
    M = (ha / s)ᵀ E (r, C+1, L), E = exp(logits - m), s = Σ_l E (m = 0 or the max).
    Four passes over the (r·P, L) buffer: matmul, exp2, E @ [Wᵀ|1], batched (ha/s)ᵀ E;
    None when ``shift`` is False and some s leaves [_SUM_LO, _SUM_HI].
    """
    xp = xp_of(ha)
    r, P, C1 = ha.shape
    L = Wa2.shape[1]
    lg = buf[:r * P]
    xp.matmul(ha.reshape(r * P, C1), Wa2, out=lg)                    # logits / ln 2
    m = lg.max(axis=1, keepdims=True) if shift else None
    if shift:
        lg -= m
    xp.exp2(lg, out=lg)                                              # E
    if need_grad:
        red = lg @ WT1                                               # (rP, C+1): [E Wᵀ, s]
        s = red[:, C1 - 1]
    else:
        red, s = None, lg.sum(axis=1)
    if not shift and not bool(xp.all((s > _SUM_LO) & (s < _SUM_HI))):
        return None                                                  # redo with the shift
    lse = xp.log(s) if m is None else xp.log(s) + m[:, 0] * ha.dtype.type(math.log(2.0))
    if not need_grad:
        return lse.reshape(r, P), None, None
    inv = (1.0 / s).astype(ha.dtype, copy=False)
    R = (red[:, :C1 - 1] * inv[:, None]).reshape(r, P, C1 - 1)
    M = xp.matmul((ha * inv.reshape(r, P, 1)).transpose(0, 2, 1), lg.reshape(r, P, L))
    return lse.reshape(r, P), R, M


def _scatter_add_rows(index, values, L, use_bincount=None):
    """``out[l] = Σ_{m: index[m] = l} values[m]``: index (m,) in [0, L), values (m, K) -> (L, K).

    ``use_bincount`` (default: on NumPy) K bincounts, fast on the CPU; else ``add.at``
    (atomic adds on CuPy, no host sync -- ``cupy.bincount`` reads the max index back)."""
    xp = xp_of(values)
    if (xp is np) if use_bincount is None else use_bincount:
        return xp.stack([xp.bincount(index, weights=values[:, c], minlength=L)
                         for c in range(values.shape[1])], axis=1).astype(values.dtype, copy=False)
    out = xp.zeros((L, values.shape[1]), dtype=values.dtype)
    xp.add.at(out, index.astype(np.int64), values)
    return out


def pixel_categorical_nll(h, weight, bias, targets, *, chunk_rows=None, shift=None):
    """Σ_p -log softmax(h[n, p] @ weight + bias)[targets[n, p]]: per-row NLL, fused.

    The decoder's head (docs/authors.md, Bit-vector VAE): every pixel p of every row n has a
    C-vector ``h[n, p]`` (C = 5) mapped by ONE shared ``Linear(C -> L)``
    (L = 256) to the logits of a categorical over the pixel's byte value.

    Parameters
    ----------
    h : Tensor (n, P, C); weight : Tensor (C, L); bias : Tensor (L,), one dtype.
    targets : integer array (n, P), values in [0, L) (uint8 bytes are fine).
    chunk_rows : rows whose (P, L) logits are materialised at once (default
        :data:`HEAD_CHUNK_PIXELS` of the backend // P): memory O(chunk_rows · P · L).
    shift : None (default: False on NumPy, True on CuPy), True (subtract each
        pixel's max logit before exp, the textbook stable form) or False (exp of
        the raw logits; a chunk whose per-pixel sum of exps leaves [1e-20, 1e20]
        is redone with the shift, so the result is always the stable one -- this
        saves two passes over memory and costs one host check per chunk).

    Returns Tensor (n,).

    Math.  With ``ha = [h, 1]``, ``Wa = [W; b]``, logits ``a = ha Wa``,
    ``E = exp(a)`` (computed as ``exp2(a / ln 2)``), ``s = Σ_l E``, ``P = E/s``
    and ``Y`` the one-hot targets: ``nll_n = Σ_p log s_np - a_np[y_np]``, and the
    VJP for a cotangent g (n,) is

        ∂/∂h_n = g_n (P_n - Y_n) Wᵀ = g_n (E_n Wᵀ / s_n - W[:, y_n]ᵀ)
        ∂/∂Wa  = Σ_n g_n ha_nᵀ (P_n - Y_n) = Σ_n g_n M_n - Σ_{n,p} g_n ha_np ⊗ e_{y_np}

    with ``M_n = (ha_n / s_n)ᵀ E_n``.  The cotangent of a per-row loss only
    scales rows, so the forward computes the g-free pieces ``E Wᵀ / s`` (n, P, C)
    and ``M`` (n, C+1, L) while the (P, L) block is in cache, and the backward
    is a scaling, one (n)·(n, (C+1)L) product and one scatter-add over the
    targets.  Nothing of size (n, P, L) outlives its chunk.
    """
    h, weight, bias = as_tensor(h), as_tensor(weight), as_tensor(bias)
    xp = h.xp
    if h.ndim != 3 or weight.ndim != 2 or bias.ndim != 1 or h.shape[2] != weight.shape[0] \
            or weight.shape[1] != bias.shape[0]:
        raise ValueError(f"pixel_categorical_nll: need h (n, P, C), weight (C, L), bias (L,), "
                         f"got {h.shape}, {weight.shape}, {bias.shape}")
    if not (h.dtype == weight.dtype == bias.dtype):
        raise TypeError(f"pixel_categorical_nll: dtypes differ: h {h.dtype}, weight "
                        f"{weight.dtype}, bias {bias.dtype}")
    targets = xp.asarray(targets.data if isinstance(targets, Tensor) else targets)
    n, P, C = h.shape
    L = weight.shape[1]
    if targets.shape != (n, P) or targets.dtype.kind not in "iu":
        raise ValueError(f"pixel_categorical_nll: targets must be an integer array of shape "
                         f"{(n, P)}, got {targets.dtype} {tuple(targets.shape)}")
    if not (targets.dtype == np.uint8 and L >= 256) and targets.size \
            and (int(targets.min()) < 0 or int(targets.max()) >= L):     # uint8 needs no check
        raise ValueError(f"pixel_categorical_nll: targets must lie in [0, {L})")
    backend = "numpy" if xp is np else "cupy"
    chunk = int(chunk_rows or max(1, HEAD_CHUNK_PIXELS[backend] // P))
    shift = (xp is not np) if shift is None else bool(shift)
    need_grad = is_grad_enabled() and (h.requires_grad or weight.requires_grad
                                       or bias.requires_grad)
    dtype = h.dtype
    ha = xp.empty((n, P, C + 1), dtype=dtype)
    ha[..., :C] = h.data
    ha[..., C] = 1
    Wa = xp.concatenate([weight.data, bias.data[None, :]], axis=0)             # (C+1, L)
    WT1 = xp.concatenate([weight.data.T, xp.ones((L, 1), dtype=dtype)], axis=1)  # (L, C+1)
    target_logit = (ha * Wa.T[targets]).sum(axis=2)                             # (n, P)
    Wa2 = Wa * dtype.type(1.0 / math.log(2.0))                                  # base-2 logits
    lse = xp.empty((n, P), dtype=dtype)
    R = xp.empty((n, P, C), dtype=dtype) if need_grad else None
    M = xp.empty((n, C + 1, L), dtype=dtype) if need_grad else None
    buf = xp.empty((min(chunk, max(n, 1)) * P, L), dtype=dtype)
    for i in range(0, n, chunk):
        j = min(i + chunk, n)
        with np.errstate(over="ignore", invalid="ignore"):     # overflow -> redone below
            out = _head_chunk(ha[i:j], Wa2, WT1, need_grad, shift, buf)
        if out is None:
            out = _head_chunk(ha[i:j], Wa2, WT1, need_grad, True, buf)
        lse[i:j] = out[0]
        if need_grad:
            R[i:j], M[i:j] = out[1], out[2]
    nll = (lse - target_logit).sum(axis=1)

    def vjp(g):
        """∂h = g (E Wᵀ/s - W[:, y]ᵀ); ∂[W; b] = gᵀ M - Σ g ha ⊗ e_y (docstring above)."""
        gh = gW = gb = None
        if h.requires_grad:
            gh = g[:, None, None] * (R - weight.data.T[targets])
        if weight.requires_grad or bias.requires_grad:
            dWa = (g @ M.reshape(n, -1)).reshape(C + 1, L)
            gha = (g[:, None, None] * ha).reshape(n * P, C + 1)                # (nP, C+1)
            dWa -= _scatter_add_rows(targets.reshape(-1), gha, L).T
            gW = dWa[:C] if weight.requires_grad else None
            gb = dWa[C] if bias.requires_grad else None
        return gh, gW, gb

    return make_output(nll, (h, weight, bias), vjp, "pixel_categorical_nll")


def pixel_categorical_nll_reference(h, weight, bias, targets):
    """The same value through generic :mod:`nets.ops` (matmul, cross_entropy, sum):
    the unfused baseline for tests and benchmarks (materialises (n, P, L) several times)."""
    logits = ops.matmul(h, weight) + bias                                      # (n, P, L)
    targets = targets.data if isinstance(targets, Tensor) else targets
    return ops.cross_entropy(logits, h.xp.asarray(targets).astype(np.int64), axis=-1).sum(axis=1)


# =========================================================================== model
class BitVAE(Module):
    """Encoder, decoder and shared pixel head of the bit-vector VAE (paper §5.3).

    Parameters: ``bits`` D; ``rng`` numpy Generator for the initialisation
    (PyTorch's ``nn.Linear`` default, :class:`nets.Linear`); ``hidden`` /
    ``dec_hidden`` the encoder / decoder hidden sizes (128 as the authors;
    smaller for tests); ``pixels`` (784), ``channels`` (5), ``levels`` (256).
    """

    def __init__(self, bits, rng, xp=np, dtype=np.float32, hidden=128, dec_hidden=128,
                 pixels=N_PIXELS, channels=CHANNELS, levels=LEVELS):
        self.bits, self.pixels, self.channels, self.levels = int(bits), pixels, channels, levels
        self.encoder = MLP([pixels, hidden, bits], rng, xp=xp, dtype=dtype)
        self.decoder = MLP([bits, dec_hidden, pixels * channels], rng, xp=xp, dtype=dtype)
        self.head = Linear(channels, levels, rng, xp=xp, dtype=dtype)
        self.xp, self.dtype = xp, np.dtype(dtype)

    def inputs(self, images):
        """uint8 images (B, P) (or (B, 28, 28)) -> float inputs ``x/255`` (B, P), not binarized."""
        return images.reshape(images.shape[0], -1).astype(self.dtype) / self.dtype.type(255)

    def encode(self, images):
        """uint8 images (B, P) -> bit scores t : Tensor (B, D)."""
        return self.encoder(Tensor(self.inputs(images)))

    def decode_nll(self, z, targets, fused=True):
        """-log p(x | z) per row: z (n, D) array or Tensor, targets uint8 (n, P) -> Tensor (n,).

        ``fused=False`` uses :func:`pixel_categorical_nll_reference` (tests, benchmarks)."""
        h = self.decoder(z if isinstance(z, Tensor) else Tensor(z.astype(self.dtype, copy=False)))
        h = h.reshape(h.shape[0], self.pixels, self.channels)
        head = pixel_categorical_nll if fused else pixel_categorical_nll_reference
        return head(h, self.head.weight, self.head.bias, targets.reshape(targets.shape[0], -1))

    def decode_nll_rows(self, z, targets, rows=4096):
        """``decode_nll`` without gradients in chunks of ``rows``: an xp array (n,)."""
        xp = xp_of(z)
        out = xp.empty(z.shape[0], dtype=self.dtype)
        with no_grad():
            for i in range(0, z.shape[0], rows):
                out[i:i + rows] = self.decode_nll(z[i:i + rows], targets[i:i + rows]).data
        return out


# =========================================================================== densities
def log_bernoulli(z, t):
    """log Π_i Bernoulli(z_i; σ(t_i)): z (..., D) 0/1, t broadcastable -> (...), float64."""
    t = t.astype(np.float64)
    return (z * _log_sigmoid(t) + (1 - z) * _log_sigmoid(-t)).sum(axis=-1)


# =========================================================================== NLL
def draw_bernoulli(t, n, rng):
    """(B, n, D) samples z_i ~ Bernoulli(σ(t_i)), noise drawn by numpy ``rng`` then moved."""
    xp = xp_of(t)
    u = xp.asarray(rng.random((t.shape[0], n, t.shape[1])))
    return (u < xp.exp(_log_sigmoid(t.astype(np.float64)))[:, None, :]).astype(t.dtype)


def _draw_support(probs, support, n, rng):
    """(B, n, D) samples z ~ π over each row's support (inverse CDF on numpy uniforms)."""
    xp = xp_of(probs)
    cdf = xp.cumsum(probs.astype(np.float64), axis=1)                    # (B, S)
    u = xp.asarray(rng.random((probs.shape[0], n))) * cdf[:, -1:]
    j = (u[:, :, None] >= cdf[:, None, :]).sum(axis=2)                   # first cdf > u
    j = xp.minimum(j, probs.shape[1] - 1)
    j = xp.where(xp.take_along_axis(probs, j, axis=1) > 0, j, xp.argmax(probs, axis=1)[:, None])
    return xp.take_along_axis(support, j[:, :, None], axis=1)


def _log_q_sparse(z, probs, support):
    """log π(z) for samples z (B, n, D) under a sparse π over ``support`` (B, S, D)
    (-inf off the support): codes compared exactly, float64."""
    xp = xp_of(z)
    match = (bit_codes(z)[:, :, None, :] == bit_codes(support)[:, None, :, :]).all(axis=-1)
    q = (match * probs.astype(np.float64)[:, None, :]).sum(axis=2)       # (B, n)
    with np.errstate(divide="ignore"):
        return xp.log(q)


NLL_UNIFORM = 1.0 / 3.0     # weight of the uniform-prior component of the NLL proposal


def _importance_weights(decode, targets, t, n_samples, rng, probs, support, uniform):
    """Draws z_s ~ r and their log importance weights log p(x|z_s) 2^-D / r(z_s): (B, S).

    r = γ·2^-D + (1-γ)·m(z), γ = ``uniform``, m = ½ π + ½ Π_i Bernoulli(σ(t_i)) for a
    sparse π over ``support`` (``probs`` given), m = Bernoulli(σ(t)) otherwise.  Each
    draw picks its component with one numpy uniform.  Returns (log_w (B, S) float64,
    -log p(x|z_s) (B, S))."""
    xp = xp_of(t)
    B, D = t.shape
    log2 = math.log(2.0)
    u = xp.asarray(rng.random((B, n_samples)))
    z = draw_bernoulli(t, n_samples, rng)                                # (B, S, D)
    if probs is not None:
        on_pi = u < (1.0 - uniform) / 2
        z = xp.where(on_pi[:, :, None], _draw_support(probs, support, n_samples, rng), z)
    if uniform > 0:
        flat = xp.asarray(rng.random((B, n_samples, D)) < 0.5).astype(t.dtype)
        z = xp.where((u >= 1.0 - uniform)[:, :, None], flat, z)
    log_m = log_bernoulli(z, t[:, None, :])
    if probs is not None:
        log_m = xp.logaddexp(_log_q_sparse(z, probs, support), log_m) - log2
    if uniform > 0:
        log_r = xp.logaddexp(math.log(uniform) - D * log2, math.log1p(-uniform) + log_m)
    else:
        log_r = log_m
    nll = decode(z.reshape(B * n_samples, D),
                 xp.repeat(targets, n_samples, axis=0)).reshape(B, n_samples)
    return -nll.astype(np.float64) - D * log2 - log_r, nll


def effective_sample_size(log_w):
    """Kish's ESS (Σ w)² / Σ w² per row of log weights (B, S), computed in log space."""
    xp = xp_of(log_w)
    return xp.exp(2 * logsumexp(log_w, axis=1) - logsumexp(2 * log_w, axis=1))


def importance_nll(decode, targets, t, n_samples, rng, probs=None, support=None,
                   uniform=NLL_UNIFORM):
    """Unbiased importance-sampling estimate of p(x), shared by every method.

    Proposal: the defensive mixture with a uniform-prior component,

        r(z) = γ 2^-D + (1 - γ) m(z),   γ = ``uniform`` (default 1/3),

    with m = ½ q + ½ Π_i Bernoulli(z_i; σ(t_i)) for the sparse methods (q = π over
    ``support``; so r = (q + Bernoulli + uniform)/3 by default) and m = q =
    Bernoulli(σ(t)) for SFE/Gumbel (``probs=None``).  With S = ``n_samples`` draws
    z_s ~ r and the uniform prior p(z) = 2^-D,

        log p̂(x) = logsumexp_s [log w_s] - log S,   w_s = p(x|z_s) 2^-D / r(z_s).

    p̂(x) is unbiased for p(x) (r > 0 everywhere), and log p̂ is a stochastic lower
    bound of log p(x) that tightens as S grows.  Bounded weights: x is discrete, so
    p(x|z) <= 1 and r(z) >= γ 2^-D give w_s <= 1/γ (= 3) for every z; the variance of
    p̂ is at most p(x)/(γ S).  ``uniform=0`` drops the component (unbounded weights).

    decode : ``(z (m, D), targets (m, P)) -> -log p(x|z)`` xp array (m,).
    targets : uint8 (B, P); t : encoder scores (B, D).
    Returns (log p̂ (B,) float64, ESS (B,) of the S weights (Kish), -log p(x|z_s) (B, S)).
    """
    if not 0.0 <= uniform < 1.0:
        raise ValueError(f"importance_nll: uniform must lie in [0, 1), got {uniform!r}")
    log_w, nll = _importance_weights(decode, targets, t, n_samples, rng, probs, support, uniform)
    return logsumexp(log_w, axis=1) - math.log(n_samples), effective_sample_size(log_w), nll


def authors_nll(decode, targets, support_nll, n_samples, rng, bits, t=None):
    """The authors' estimate for sparse methods (docs/authors.md, Bit-vector VAE), as their code computes it:

        log p̂(x) = log[ 2^-D Σ_{z ∈ supp} p(x|z) + (1/S) Σ_s p(x|z_s) ],  z_s ~ uniform.

    support_nll : (B, S') -log p(x|z) on the support, +inf on padding (sparse methods);
    for SFE/Gumbel (``support_nll=None``) their proposal q = Bernoulli(σ(t)) itself:
    :func:`importance_nll` with ``uniform=0`` on the scores ``t``.
    In expectation p̂ counts the support twice (the uniform term alone is unbiased
    for p(x)), so it overestimates p(x).  But with S ≪ 2^D uniform draws almost
    never hit the z where p(x|z) is large, so in practice the uniform term is
    negligible and the value is close to the support-only sum 2^-D Σ_supp p(x|z),
    a LOWER bound of p(x) (NLL too high).  Reported for comparison only.
    Returns log p̂ (B,) float64.
    """
    if support_nll is None:
        return importance_nll(decode, targets, t, n_samples, rng, uniform=0.0)[0]
    xp = xp_of(support_nll)
    B = targets.shape[0]
    z = xp.asarray(rng.random((B, n_samples, bits)) < 0.5).astype(np.float32)
    nll = decode(z.reshape(B * n_samples, bits), xp.repeat(targets, n_samples, axis=0))
    uniform = logsumexp(-nll.reshape(B, n_samples).astype(np.float64), 1) - math.log(n_samples)
    on_support = logsumexp(-support_nll.astype(np.float64), 1) - bits * math.log(2.0)
    return xp.logaddexp(on_support, uniform)


# =========================================================================== evaluation
def _sparse_pairs(model, estimator, t, x, rng):
    """Sparse method on a batch: Estimate and -log p(x|z) on the support, (B, S) (+inf off it)."""
    xp = t.xp
    seen = {}

    def loss_fn(idx, z):
        out = model.decode_nll(z, x[idx])
        seen.update(idx=idx, z=z, nll=out.data)
        return out

    est = estimator(t, loss_fn, rng)
    support = est.support
    match = (bit_codes(seen["z"])[:, None, :] == bit_codes(support[seen["idx"]])).all(axis=-1)
    match &= est.probs.data[seen["idx"]] > 0                       # (n, S): the pair's slot
    dense = xp.full(est.probs.shape, np.inf)
    dense[seen["idx"], xp.argmax(match, axis=1)] = seen["nll"]
    return est, dense


def evaluate(model, estimator, sparse, images, rng, batch_size=256, decode_rows=4096,
             nll_samples=0, progress_desc=None):
    """Mean ELBO, rate and distortion (nats) of uint8 ``images`` (N, P) without gradients,
    decoder calls per example (numpy (N,)), and with ``nll_samples`` the NLL in bits/dim by
    :func:`importance_nll` (with its effective sample size per image, ``nll_ess``: mean
    and min) and by :func:`authors_nll`.

    sparse : the estimator is deterministic with an explicit support (π, its ELBO is
    exact); otherwise q = Bernoulli(σ(t)) and the ELBO uses one hard sample z ~ q (also
    for the Gumbel methods, whose training loss uses relaxed samples).  ``rng`` draws all
    evaluation noise; ``decode_rows`` bounds the rows decoded at once.  ``progress_desc``:
    show the batches' progress under that name (a bar on a terminal, lines off it).
    """
    xp, D = model.xp, model.bits
    decode = lambda z, tg: model.decode_nll_rows(z, tg, decode_rows)  # noqa: E731
    sums = {"distortion": 0.0, "entropy": 0.0, "log_px": 0.0, "authors_log_px": 0.0,
            "ess": 0.0}
    calls, N, ess_min = [], images.shape[0], math.inf
    with no_grad():
        starts = range(0, N, batch_size)
        if progress_desc is not None:
            starts = progress(starts, total=len(starts), desc=progress_desc,
                              log_every=max(1, len(starts) // 10), unit="batches")
        for i in starts:
            x = images[i:i + batch_size]
            t = model.encode(x)
            if sparse:
                est, support_nll = _sparse_pairs(model, estimator, t, x, rng)
                distortion, entropy, c = est.loss, est.entropy.data, est.calls
                probs, support = est.probs.data, est.support
            else:
                z = draw_bernoulli(t.data, 1, rng)[:, 0]
                distortion, entropy = decode(z, x), bernoulli_entropy(t.data)
                c, probs, support = xp.ones(x.shape[0], dtype=np.int64), None, None
            sums["distortion"] += distortion.astype(np.float64).sum()
            sums["entropy"] += entropy.astype(np.float64).sum()
            calls.append(c)
            if nll_samples:
                per = max(1, decode_rows // (2 * nll_samples))
                for j in range(0, x.shape[0], per):
                    sl = slice(j, j + per)
                    log_px, ess, _ = importance_nll(
                        decode, x[sl], t.data[sl], nll_samples, rng,
                        None if probs is None else probs[sl], None if support is None else support[sl])
                    sums["log_px"] += log_px.sum()
                    sums["ess"] += ess.sum()
                    ess_min = min(ess_min, float(ess.min()))
                    sums["authors_log_px"] += authors_nll(
                        decode, x[sl], None if probs is None else support_nll[sl], nll_samples,
                        rng, D, t=t.data[sl]).sum()
    out = {k: float(v) / N for k, v in sums.items()}
    rate = D * math.log(2) - out["entropy"]
    result = {"elbo": -(out["distortion"] + rate), "rate": rate, "distortion": out["distortion"],
              "calls": to_numpy(xp.concatenate(calls))}
    if nll_samples:
        pixels = images.shape[1] * math.log(2)
        result["nll_bits_per_dim"] = -out["log_px"] / pixels
        result["authors_nll_bits_per_dim"] = -out["authors_log_px"] / pixels
        result["nll_ess"] = {"mean": out["ess"], "min": ess_min, "samples": nll_samples}
    return result
