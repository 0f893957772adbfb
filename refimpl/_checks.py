"""Input validation shared by the mappings: clear errors, never a silent NaN."""
import numpy as np

from .backend import xp_of
from .numerics import check_positive_int


def check_array(scores, name="scores"):
    """A non-empty float NumPy/CuPy array with at least one axis; returns ``xp``."""
    if not hasattr(scores, "dtype") or not hasattr(scores, "shape"):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(scores).__name__}; "
                        f"wrap it with numpy.asarray(..., dtype=float)")
    if scores.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype (float32 or float64), got "
                        f"{scores.dtype}; convert it with {name}.astype('float64')")
    if scores.ndim == 0 or scores.size == 0:
        raise ValueError(f"{name} must be a non-empty array with at least one axis, "
                         f"got shape {tuple(scores.shape)}")
    return xp_of(scores)


def check_scores(scores, name="scores", allow_neg_inf=True):
    """Validate a float array of scores; return its namespace ``xp``.

    Raises ``TypeError`` for a non-array or non-float array and ``ValueError``
    for an empty array, NaN, ``+inf`` (and ``-inf`` unless allowed).
    """
    xp = check_array(scores, name)
    bad = xp.isnan(scores) | (scores == np.inf)
    if not allow_neg_inf:
        bad = bad | (scores == -np.inf)
    if bool(xp.any(bad)):
        allowed = "finite values or -inf (masked)" if allow_neg_inf else "finite values"
        raise ValueError(f"{name} contains NaN or infinite entries; only {allowed} are allowed")
    return xp


def check_row_maxima(scores, top, name="scores"):
    """Validate scores from their slice maxima ``top`` (no extra pass over the data).

    A NaN anywhere makes its slice maximum NaN, a ``+inf`` makes it ``+inf``,
    an all-``-inf`` slice makes it ``-inf``: all are errors.  ``-inf`` entries
    in a slice with a finite entry are valid (masked).
    """
    xp = xp_of(top)
    if bool(xp.all(xp.isfinite(top))):
        return
    check_scores(scores, name)                  # raises for NaN / +inf
    raise ValueError(f"{name} has a slice whose entries are all -inf; "
                     f"each slice needs at least one finite score")


def check_axis(x, axis, name="axis"):
    """Normalise ``axis`` for ``x``; raise a clear ``ValueError`` when out of range."""
    if not isinstance(axis, (int, np.integer)) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"{name}={axis!r} is out of range for an array of shape {tuple(x.shape)}")
    return int(axis) % x.ndim


def check_grad(grad, like, name="grad"):
    """A cotangent must be a float array shaped like the forward output."""
    if not hasattr(grad, "shape") or tuple(grad.shape) != tuple(like.shape):
        shape = tuple(grad.shape) if hasattr(grad, "shape") else type(grad).__name__
        raise ValueError(f"{name} must have the shape of the forward output {tuple(like.shape)}, "
                         f"got {shape}")
    if grad.dtype.kind != "f":
        raise TypeError(f"{name} must be a float array, got {grad.dtype}")


def check_k(k, upper, what):
    """``k`` must be an integer with ``1 <= k <= upper`` (``upper`` None: no bound)."""
    return check_positive_int(k, "k", upper, what)
