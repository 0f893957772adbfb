"""Primitive differentiable ops: each forward with its VJP right under it.

Every op takes Tensors (or, where noted, constants), computes its output
array with the array namespace of its inputs (NumPy or CuPy), and returns
``make_output(out, parents, vjp, name)``.  The nested ``vjp(g)`` maps the
cotangent ``g`` of the output (shape of the output) to one cotangent per
parent (``None`` for a parent that needs none); its docstring states the
Jacobian ``J`` whose transpose it applies.  VJPs never write into ``g`` nor
into forward arrays.

dtype rule: a non-Tensor operand (Python number or array) takes the dtype
and device of the Tensor operand, so a constant never changes a
computation's dtype; two Tensor operands must share a dtype (a ``TypeError``
says how to fix it).  Outputs have the inputs' dtype and device.

The softmax family, likelihoods, entropies, KL and the sparsemax loss are
defined in :mod:`nets.losses`, the Tensor wrappers of the refimpl mappings
(sparsemax, top-k sparsemax, structured top-k, SparseMAP) in
:mod:`nets.mappings`.  Neither module imports this one, nor this one them:
``nets/__init__.py`` adds their public names to this namespace (so
``nets.ops.softmax`` works) in the one place where the package is assembled.
"""
import builtins

import numpy as np

from refimpl.numerics import sigmoid as _sigmoid
from refimpl.numerics import softplus as _softplus

from ._helpers import _axes, _axis, _constant, _pair, _tensors
from .autodiff import Tensor, as_tensor, make_output, unbroadcast

__all__ = [
    "add", "sub", "mul", "div", "neg", "pow", "matmul", "sum", "mean", "reshape",
    "transpose", "getitem", "take_along_axis", "concatenate", "stack", "exp", "log",
    "relu", "sigmoid", "tanh", "softplus", "where",
]


# --------------------------------------------------------------- arithmetic
def add(a, b):
    """``a + b`` elementwise, with NumPy broadcasting."""
    a, b = _pair(a, b, "add")

    def vjp(g):
        """J_a = J_b = I (then summed over the axes each operand was broadcast along)."""
        return unbroadcast(g, a.shape), unbroadcast(g, b.shape)

    return make_output(a.data + b.data, (a, b), vjp, "add")


def sub(a, b):
    """``a - b`` elementwise, with broadcasting."""
    a, b = _pair(a, b, "sub")

    def vjp(g):
        """J_a = I, J_b = -I (then unbroadcast)."""
        return unbroadcast(g, a.shape), (-unbroadcast(g, b.shape) if b.requires_grad else None)

    return make_output(a.data - b.data, (a, b), vjp, "sub")


def mul(a, b):
    """``a * b`` elementwise, with broadcasting."""
    a, b = _pair(a, b, "mul")

    def vjp(g):
        """J_a = diag(b), J_b = diag(a) (then unbroadcast)."""
        return (unbroadcast(g * b.data, a.shape) if a.requires_grad else None,
                unbroadcast(g * a.data, b.shape) if b.requires_grad else None)

    return make_output(a.data * b.data, (a, b), vjp, "mul")


def div(a, b):
    """``a / b`` elementwise, with broadcasting."""
    a, b = _pair(a, b, "div")
    out = a.data / b.data

    def vjp(g):
        """J_a = diag(1/b), J_b = diag(-a/b²) = diag(-out/b) (then unbroadcast)."""
        return (unbroadcast(g / b.data, a.shape) if a.requires_grad else None,
                unbroadcast(-(g * out) / b.data, b.shape) if b.requires_grad else None)

    return make_output(out, (a, b), vjp, "div")


def neg(a):
    """``-a``."""
    a = as_tensor(a)

    def vjp(g):
        """J = -I."""
        return (-g,)

    return make_output(-a.data, (a,), vjp, "neg")


def pow(a, exponent):
    """``a ** exponent`` elementwise for a Python number ``exponent``."""
    a = as_tensor(a)
    if isinstance(exponent, Tensor) or not isinstance(exponent, (int, float, np.number)):
        raise TypeError(f"pow: exponent must be a Python number, got {type(exponent).__name__}; "
                        f"for a tensor exponent use exp(b * log(a))")
    p = float(exponent)

    def vjp(g):
        """J = diag(p a^(p-1))."""
        return (g * (p * a.data ** (p - 1)),)

    return make_output(a.data ** p, (a,), vjp, "pow")


def matmul(a, b):
    """``a @ b``: batched matrix product; leading (batch) axes broadcast.

    Shapes: ``(..., m, n) @ (..., n, p) -> (..., m, p)``; a 1-D operand is a
    row (left) or a column (right) vector that is dropped from the output, as
    in NumPy.
    """
    a, b = _pair(a, b, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul: operands need at least one axis, got shapes {a.shape} "
                         f"and {b.shape}; use mul for scalars")
    xp = a.xp
    out = xp.matmul(a.data, b.data)

    def vjp(g):
        """For C = A B: dA = G Bᵀ, dB = Aᵀ G (vectors promoted to matrices, then unbroadcast)."""
        A = a.data[None, :] if a.ndim == 1 else a.data
        B = b.data[:, None] if b.ndim == 1 else b.data
        G = g[..., None] if b.ndim == 1 else g
        G = G[..., None, :] if a.ndim == 1 else G
        ga = gb = None
        if a.requires_grad:
            ga = unbroadcast(xp.matmul(G, xp.swapaxes(B, -1, -2)), A.shape).reshape(a.shape)
        if b.requires_grad:
            gb = unbroadcast(xp.matmul(xp.swapaxes(A, -1, -2), G), B.shape).reshape(b.shape)
        return ga, gb

    return make_output(out, (a, b), vjp, "matmul")


# ------------------------------------------------------------ reductions, shape
def sum(a, axis=None, keepdims=False):
    """Sum over ``axis`` (None: all axes; int or tuple)."""
    a = as_tensor(a)
    axes = _axes(axis, a.ndim, "sum")
    out = a.data.sum(axis=axes, keepdims=keepdims)

    def vjp(g):
        """J = 1ᵀ along the summed axes: the cotangent is broadcast back."""
        if not keepdims:
            g = g.reshape(tuple(1 if i in axes else n for i, n in enumerate(a.shape)))
        return (a.xp.broadcast_to(g, a.shape),)

    return make_output(out, (a,), vjp, "sum")


def mean(a, axis=None, keepdims=False):
    """Mean over ``axis`` (None: all axes; int or tuple)."""
    a = as_tensor(a)
    count = int(np.prod([a.shape[i] for i in _axes(axis, a.ndim, "mean")], dtype=np.int64))
    return div(sum(a, axis=axis, keepdims=keepdims), count)


def reshape(a, shape):
    """``a`` with a new ``shape`` (same number of elements; one -1 allowed)."""
    a = as_tensor(a)

    def vjp(g):
        """J = I (a reshape): the cotangent is reshaped back."""
        return (g.reshape(a.shape),)

    return make_output(a.data.reshape(shape), (a,), vjp, "reshape")


def transpose(a, axes=None):
    """Permute the axes (None: reverse them)."""
    a = as_tensor(a)
    axes = tuple(range(a.ndim))[::-1] if axes is None else tuple(_axis(i, a.ndim, "transpose")
                                                                  for i in axes)
    if sorted(axes) != list(range(a.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of {a.ndim} axes")
    inverse = tuple(int(i) for i in np.argsort(axes))

    def vjp(g):
        """J is a permutation: the cotangent is permuted back with the inverse permutation."""
        return (g.transpose(inverse),)

    return make_output(a.data.transpose(axes), (a,), vjp, "transpose")


def _index(index, xp):
    """Tensors and lists inside an index become arrays of namespace ``xp``."""
    items = index if isinstance(index, tuple) else (index,)
    items = tuple(i.data if isinstance(i, Tensor) else int(i) if isinstance(i, np.integer)
                  else xp.asarray(i) if isinstance(i, list) or hasattr(i, "shape") else i
                  for i in items)
    basic = builtins.all(isinstance(i, (slice, type(None), type(Ellipsis)))
                         or (isinstance(i, (int, np.integer)) and not isinstance(i, bool))
                         for i in items)
    return (items if isinstance(index, tuple) else items[0]), basic


def getitem(a, index):
    """``a[index]``: basic (ints, slices, None, ...) and integer/boolean-array indexing."""
    a = as_tensor(a)
    xp = a.xp
    index, basic = _index(index, xp)

    def vjp(g):
        """J selects entries: the cotangent is scattered back, summing repeated indices."""
        grad = xp.zeros(a.shape, dtype=a.dtype)
        if basic:                    # basic indexing selects each entry at most once
            grad[index] = g
        else:
            xp.add.at(grad, index, g)
        return (grad,)

    return make_output(a.data[index], (a,), vjp, "getitem")


def take_along_axis(a, indices, axis=-1):
    """``xp.take_along_axis(a, indices, axis)``; ``indices`` is an integer array (constant)."""
    a = as_tensor(a)
    xp = a.xp
    axis = _axis(axis, a.ndim, "take_along_axis")
    indices = _constant(indices, a, "indices", "take_along_axis")
    if indices.dtype.kind not in "iu" or indices.ndim != a.ndim:
        raise ValueError(f"take_along_axis: indices must be an integer array with {a.ndim} axes, "
                         f"got dtype {indices.dtype} and shape {tuple(indices.shape)}")
    out = xp.take_along_axis(a.data, indices, axis=axis)

    def vjp(g):
        """J selects entries along ``axis``: scatter-add the cotangent back."""
        index = []
        for d in range(a.ndim):
            shape = [1] * a.ndim
            shape[d] = out.shape[d]
            if d == axis:
                index.append(xp.broadcast_to(indices, out.shape))
            elif a.shape[d] == out.shape[d]:
                index.append(xp.arange(out.shape[d]).reshape(shape))
            else:                    # a had size 1 here and was broadcast
                index.append(xp.zeros(shape, dtype=np.int64))
        grad = xp.zeros(a.shape, dtype=a.dtype)
        xp.add.at(grad, tuple(index), g)
        return (grad,)

    return make_output(out, (a,), vjp, "take_along_axis")


def concatenate(tensors, axis=0):
    """Join tensors along an existing ``axis``."""
    tensors = _tensors(tensors, "concatenate")
    axis = _axis(axis, tensors[0].ndim, "concatenate")
    xp = tensors[0].xp
    out = xp.concatenate([t.data for t in tensors], axis=axis)
    bounds = np.cumsum([0] + [t.shape[axis] for t in tensors])

    def vjp(g):
        """J stacks identity blocks: each input gets its slice of the cotangent."""
        lead = (slice(None),) * axis
        return tuple(g[lead + (slice(int(lo), int(hi)),)] for lo, hi in zip(bounds[:-1], bounds[1:]))

    return make_output(out, tensors, vjp, "concatenate")


def stack(tensors, axis=0):
    """Join same-shaped tensors along a new ``axis``."""
    tensors = _tensors(tensors, "stack")
    axis = _axis(axis, tensors[0].ndim + 1, "stack")
    out = tensors[0].xp.stack([t.data for t in tensors], axis=axis)

    def vjp(g):
        """J stacks identity blocks: input i gets the cotangent's slice i along ``axis``."""
        lead = (slice(None),) * axis
        return tuple(g[lead + (i,)] for i in range(len(tensors)))

    return make_output(out, tensors, vjp, "stack")


# ------------------------------------------------------------- elementwise
def exp(a):
    """``exp(a)`` elementwise."""
    a = as_tensor(a)
    out = a.xp.exp(a.data)

    def vjp(g):
        """J = diag(exp(a))."""
        return (g * out,)

    return make_output(out, (a,), vjp, "exp")


def log(a):
    """Natural log elementwise (``a > 0``)."""
    a = as_tensor(a)

    def vjp(g):
        """J = diag(1/a)."""
        return (g / a.data,)

    return make_output(a.xp.log(a.data), (a,), vjp, "log")


def relu(a):
    """``max(a, 0)`` elementwise."""
    a = as_tensor(a)
    positive = a.data > 0

    def vjp(g):
        """J = diag(1[a > 0]) (the subgradient 0 is taken at a = 0)."""
        return (g * positive,)

    return make_output(a.data * positive, (a,), vjp, "relu")


def sigmoid(a):
    """Logistic ``1 / (1 + exp(-a))`` elementwise, stable for large |a|."""
    a = as_tensor(a)
    out = _sigmoid(a.data)

    def vjp(g):
        """J = diag(s (1 - s)), s = sigmoid(a)."""
        return (g * (out * (1 - out)),)

    return make_output(out, (a,), vjp, "sigmoid")


def tanh(a):
    """``tanh(a)`` elementwise."""
    a = as_tensor(a)
    out = a.xp.tanh(a.data)

    def vjp(g):
        """J = diag(1 - tanh(a)²)."""
        return (g * (1 - out * out),)

    return make_output(out, (a,), vjp, "tanh")


def softplus(a):
    """``log(1 + exp(a))`` elementwise, computed as ``max(a, 0) + log1p(exp(-|a|))``."""
    a = as_tensor(a)

    def vjp(g):
        """J = diag(sigmoid(a))."""
        return (g * _sigmoid(a.data),)

    return make_output(_softplus(a.data), (a,), vjp, "softplus")


def where(cond, a, b):
    """``a`` where ``cond`` else ``b`` (with broadcasting); ``cond`` is a constant bool array."""
    a, b = _pair(a, b, "where")
    xp = a.xp
    cond = _constant(cond, a, "cond", "where")
    if cond.dtype != bool:
        raise TypeError(f"where: cond must be a boolean array, got {cond.dtype}")
    out = xp.where(cond, a.data, b.data)

    def vjp(g):
        """J_a = diag(cond), J_b = diag(not cond) (then unbroadcast)."""
        zero = xp.zeros((), dtype=g.dtype)
        return (unbroadcast(xp.where(cond, g, zero), a.shape) if a.requires_grad else None,
                unbroadcast(xp.where(cond, zero, g), b.shape) if b.requires_grad else None)

    return make_output(out, (a, b), vjp, "where")
