"""Array-level numerical helpers: the one home of each, used by refimpl, nets and experiments.

Plain functions on NumPy or CuPy arrays (``xp`` comes from the input); no
Tensors, no gradients.  The differentiable versions in :mod:`nets` call these
for their forward values.

* :func:`logsumexp` -- ``log Σ exp(x)`` over an axis, stable, ``-inf`` allowed.
* :func:`softplus`, :func:`log_sigmoid`, :func:`sigmoid` -- the logistic family
  through one stable softplus, exact for any ``|x|``.
* :func:`bernoulli_entropy` -- ``Σ_i H(Bernoulli(σ(t_i)))`` in closed form.
* :func:`one_hot` -- class indices to one-hot rows.
* :func:`bit_codes` -- 0/1 bit-vectors to exact integer codes (for equality tests).
* :func:`check_positive_int` -- an integer ``>= 1`` (optionally ``<= upper``), or a clear error.
"""
import numbers
from typing import Any, Optional

import numpy as np

from ._types import Array
from .backend import xp_of

__all__ = ["logsumexp", "softplus", "log_sigmoid", "sigmoid", "bernoulli_entropy", "one_hot",
           "bit_codes", "check_positive_int"]


def logsumexp(x: Array, axis: int = -1, keepdims: bool = False) -> Array:
    """Stable ``log Σ_axis exp(x)``; ``-inf`` entries allowed (``+inf``/NaN are not).

    Shifts by the slice maximum (0 when the maximum is not finite); an
    all-``-inf`` slice gives ``-inf`` without a warning.  Shape: ``x`` without
    ``axis`` (kept with size 1 when ``keepdims``).
    """
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.exp(x - m).sum(axis=axis, keepdims=True)
    positive = s > 0
    lse = m + xp.log(xp.where(positive, s, xp.ones_like(s)))
    lse = xp.where(positive, lse, xp.full_like(lse, -np.inf))
    return lse if keepdims else lse.squeeze(axis)


def softplus(x: Array) -> Array:
    """``log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|))``: no overflow for any ``|x|``."""
    xp = xp_of(x)
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def log_sigmoid(x: Array) -> Array:
    """``log σ(x) = -softplus(-x)``, exact for any ``|x|`` (σ is never rounded to 0 or 1 first)."""
    return -softplus(-x)


def sigmoid(x: Array) -> Array:
    """Logistic ``σ(x) = 1 / (1 + exp(-x)) = exp(-softplus(-x))``, stable for large ``|x|``."""
    return xp_of(x).exp(-softplus(-x))


def bernoulli_entropy(t: Array) -> Array:
    """``Σ_i H(Bernoulli(σ(t_i)))`` over the last axis: (..., D) -> (...).

    ``H = softplus(t) - σ(t) t``, from ``H = p softplus(-t) + (1 - p) softplus(t)``
    with ``p = σ(t)`` and ``softplus(-t) = softplus(t) - t``: no log of 0 for any ``|t|``.
    """
    return (softplus(t) - sigmoid(t) * t).sum(axis=-1)


def one_hot(labels: Array, k: int, xp: Any = None, dtype: Any = np.float64) -> Array:
    """(n,) integer class indices -> (n, k) one-hot rows of ``dtype`` on ``xp``.

    ``xp`` defaults to the namespace of ``labels``; ``labels`` are moved there.
    """
    xp = xp_of(labels) if xp is None else xp
    labels = xp.asarray(labels)
    return (xp.arange(k)[None, :] == labels[:, None]).astype(dtype)


def bit_codes(z: Array) -> Array:
    """0/1 bit-vectors (..., D) -> exact integer codes (..., ceil(D/32)) int64.

    Chunk ``c`` holds bits ``32c .. 32c+31`` with bit ``i`` worth ``2^(i - 32c)``,
    so for ``D <= 32`` the single code is the row index of
    :func:`refimpl.enumeration.all_bitvectors`.  Two bit-vectors are equal iff
    all their codes are.
    """
    xp = xp_of(z)
    D = z.shape[-1]
    pad = (-D) % 32
    zb = z.astype(np.int64)
    if pad:
        zb = xp.concatenate([zb, xp.zeros(z.shape[:-1] + (pad,), dtype=np.int64)], axis=-1)
    zb = zb.reshape(z.shape[:-1] + (-1, 32))
    return (zb << xp.arange(32, dtype=np.int64)).sum(axis=-1)


def check_positive_int(value: Any, name: str, upper: Optional[int] = None,
                       upper_name: Optional[str] = None) -> int:
    """``value`` as an ``int`` when it is an integer with ``1 <= value <= upper``.

    Raises ``TypeError`` naming ``name`` for a non-integer (``bool`` and floats
    included) and ``ValueError`` for a value out of range; ``upper_name`` says
    what the upper bound is (e.g. ``"2^D"``).
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a positive integer, got {type(value).__name__} {value!r}")
    n = int(value)
    if n < 1:
        raise ValueError(f"{name} must be a positive integer (at least 1), got {value!r}")
    if upper is not None and n > upper:
        bound = f"{upper_name} = {upper}" if upper_name else str(upper)
        raise ValueError(f"{name} must be at most {bound}, got {value!r}")
    return n
