"""Private argument helpers of the ops: operand pairing, axis checks, constants.

Imported by :mod:`nets.ops` and :mod:`nets.losses`; imports only :mod:`nets.autodiff`.
"""
import numpy as np

from .autodiff import Tensor, as_tensor


def _pair(a, b, op):
    """Both operands as Tensors of one dtype (a constant adopts the Tensor's dtype)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        if a.dtype != b.dtype:
            raise TypeError(f"{op}: operands have dtypes {a.dtype} and {b.dtype}; cast one "
                            f"first (e.g. Tensor(x.data.astype('{a.dtype}')))")
        return a, b
    if isinstance(a, Tensor):
        return a, as_tensor(b, like=a)
    if isinstance(b, Tensor):
        return as_tensor(a, like=b), b
    return as_tensor(a), as_tensor(b)


def _tensors(tensors, op):
    """A list of Tensors sharing one dtype."""
    tensors = [as_tensor(t) for t in tensors]
    if not tensors:
        raise ValueError(f"{op}: needs at least one tensor")
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise TypeError(f"{op}: tensors have different dtypes {sorted(map(str, dtypes))}; "
                        f"cast them to one dtype first")
    return tensors


def _axis(axis, ndim, op):
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ValueError(f"{op}: axis={axis!r} is out of range for a tensor with {ndim} axes")
    return int(axis) % ndim


def _axes(axis, ndim, op):
    """``axis`` (None, int or tuple) as a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, (int, np.integer)):
        axis = (axis,)
    return tuple(sorted(_axis(a, ndim, op) for a in axis))


def _constant(x, like, name, op):
    """A non-differentiable array argument on ``like``'s device."""
    if isinstance(x, Tensor):
        if x.requires_grad:
            raise TypeError(f"{op}: {name} is treated as a constant and gets no gradient; "
                            f"pass {name}.data (or {name}.detach())")
        x = x.data
    return like.xp.asarray(x)
