"""A tiny reverse-mode autodiff engine in the micrograd style, on NumPy or CuPy arrays.

A :class:`Tensor` wraps an array (``.data``).  Every op in :mod:`nets.ops`
computes its output array, then calls :func:`make_output` with the op's
parents and a ``vjp(g)`` closure that maps the output's cotangent ``g`` to one
cotangent per parent (``None`` where a parent needs none).  The VJP of each
op sits right under its forward in :mod:`nets.ops`.

:meth:`Tensor.backward` sorts the graph topologically *without recursion*
(so a chain 10,000 ops deep works), then runs ONE loop over it in reverse
order.  Contributions to a tensor's gradient are summed (a tensor used twice
gets both), and every cotangent's shape and dtype are asserted equal to its
tensor's, with an error that names the op that produced it.

Gradient bookkeeping follows PyTorch: the cotangents of intermediate tensors
live in a per-call buffer and are freed as soon as they are propagated; only
*leaves* (tensors created by the user with ``requires_grad=True``) and
tensors on which :meth:`Tensor.retain_grad` was called keep theirs in
``.grad``, and there they accumulate across calls (``+=``) until reset to
``None`` (e.g. by ``Adam.zero_grad``).  VJPs must never write into the
cotangent they are given, nor into any forward array: both may be shared.

Under :func:`no_grad` ops compute their outputs and record no graph.
"""
import contextlib
import threading
from types import ModuleType
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np

from refimpl.backend import to_numpy, xp_of

__all__ = ["Tensor", "as_tensor", "make_output", "unbroadcast", "no_grad",
           "is_grad_enabled"]

_state = threading.local()


def is_grad_enabled() -> bool:
    """False inside a :func:`no_grad` block (of this thread), True otherwise."""
    return getattr(_state, "grad_enabled", True)


@contextlib.contextmanager
def no_grad() -> Iterator[None]:
    """Context manager under which ops record no graph (outputs never require grad).

    Thread-local; nests; restores the previous setting on exit, also on an
    exception.
    """
    previous = is_grad_enabled()
    _state.grad_enabled = False
    try:
        yield
    finally:
        _state.grad_enabled = previous


def unbroadcast(grad: Any, shape: Sequence[int]) -> Any:
    """Sum ``grad`` back to ``shape``, undoing NumPy broadcasting.

    ``grad`` has the broadcast shape of an op's output; ``shape`` is the shape
    of one operand that was broadcast to it.  Leading axes that the operand
    lacked are summed away, and axes where the operand had size 1 are summed
    with ``keepdims``.  Returns ``grad`` itself when nothing needs summing.
    """
    shape = tuple(shape)
    if tuple(grad.shape) == shape:
        return grad
    extra = grad.ndim - len(shape)
    if extra < 0:
        raise ValueError(f"unbroadcast: gradient of shape {tuple(grad.shape)} has fewer axes "
                         f"than the operand shape {shape}")
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if axes:
        grad = grad.sum(axis=axes, keepdims=True)
    if tuple(grad.shape) != shape:
        raise ValueError(f"unbroadcast: a gradient of shape {tuple(grad.shape)} cannot be "
                         f"summed back to the operand shape {shape}")
    return grad


def _is_float(dtype):
    return np.dtype(dtype).kind == "f"


class Tensor:
    """An array with an optional gradient and the op that produced it.

    Parameters
    ----------
    data : NumPy or CuPy array (or anything ``numpy.asarray`` accepts; a
        Python scalar or list becomes a NumPy array).  Stored as given (no
        copy for an array): the tensor owns it from then on.
    requires_grad : whether :meth:`backward` should compute ``.grad`` for this
        tensor.  Only floating tensors may require grad.

    Operators (``+ - * / @ **``, unary ``-``, ``[]``) and the methods ``sum``,
    ``mean``, ``reshape``, ``transpose``, ``T``, ``exp``, ``log``, ``relu``,
    ``sigmoid``, ``tanh`` call the op of that name in :mod:`nets.ops`; they are
    attached in one place, ``nets/__init__.py``, so that this module imports
    nothing from ``nets``.

    Attributes: ``data``, ``grad`` (None until a backward pass reaches this
    tensor; same shape, dtype and device as ``data``), ``requires_grad``,
    ``shape``, ``dtype``, ``ndim``, ``size``, ``xp``.
    """

    # Make `ndarray (op) Tensor` defer to the Tensor's reflected operator, on
    # NumPy (__array_ufunc__ = None) and on CuPy (__array_priority__).
    __array_ufunc__ = None
    __array_priority__ = 1000

    def __init__(self, data: Any, requires_grad: bool = False) -> None:
        if isinstance(data, Tensor):
            raise TypeError("Tensor(data): data is already a Tensor; use it directly, "
                            "or data.detach() for a copy without history")
        if not hasattr(data, "dtype") or not hasattr(data, "shape"):
            data = np.asarray(data)
        if requires_grad and not _is_float(data.dtype):
            raise TypeError(f"requires_grad=True needs a floating tensor, got dtype {data.dtype}; "
                            f"convert with data.astype('float32')")
        self.data = data
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._vjp = None
        self._op = "leaf"
        self._retain = False

    # ----------------------------------------------------------------- basics
    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def dtype(self) -> Any:
        return self.data.dtype

    @property
    def ndim(self) -> int:
        return self.data.ndim

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def xp(self) -> ModuleType:
        return xp_of(self.data)

    @property
    def is_leaf(self) -> bool:
        return self._vjp is None

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __bool__(self) -> bool:
        return bool(self.data)     # as for arrays: only a one-element tensor has a truth value

    def __repr__(self) -> str:
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = "" if self.is_leaf else f", op={self._op}"
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad}{op})"

    def item(self) -> Any:
        """The value of a one-element tensor as a Python number."""
        return self.data.item()

    def numpy(self) -> np.ndarray:
        """A NumPy copy (or view) of the data, wherever it lives."""
        return to_numpy(self.data)

    def detach(self) -> "Tensor":
        """A new leaf sharing ``data``, with no history and no gradient."""
        return Tensor(self.data)

    def retain_grad(self) -> "Tensor":
        """Keep this (non-leaf) tensor's gradient in ``.grad`` after backward."""
        self._retain = True
        return self

    def zero_grad(self) -> None:
        self.grad = None

    # --------------------------------------------------------------- backward
    def backward(self, grad: Any = None) -> None:
        """Accumulate d(self)/d(leaf) contracted with ``grad`` into every leaf's ``.grad``.

        ``grad`` is the cotangent of ``self`` (same shape); it may be omitted
        only for a one-element tensor (it is then 1).  Raises ``RuntimeError``
        when ``self`` does not require grad and ``ValueError`` for a missing
        or mis-shaped ``grad``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input of "
                               "the computation had requires_grad=True (or it ran under no_grad)")
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise ValueError(f"backward() without grad needs a one-element tensor, got shape "
                                 f"{self.shape}; pass grad= with that shape, or reduce first "
                                 f"(e.g. loss.sum() or loss.mean())")
            grad = xp.ones(self.data.shape, dtype=self.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else grad
            grad = xp.asarray(grad, dtype=self.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward(grad): grad has shape {tuple(grad.shape)}, expected "
                                 f"the tensor's shape {self.shape}")

        order = _topological_order(self)
        grads = {id(self): grad}
        for node in reversed(order):                 # the one loop, outputs before inputs
            g = grads.pop(id(node), None)
            if g is None:                            # no path carried a gradient here
                continue
            if node._vjp is None or node._retain:
                node.grad = g.copy() if node.grad is None else node.grad + g
            if node._vjp is None:
                continue
            parent_grads = node._vjp(g)
            if len(parent_grads) != len(node._parents):
                raise RuntimeError(f"op {node._op}: its VJP returned {len(parent_grads)} "
                                   f"gradients for {len(node._parents)} inputs")
            for i, (parent, pg) in enumerate(zip(node._parents, parent_grads)):
                if pg is None or not parent.requires_grad:
                    continue
                if tuple(pg.shape) != parent.shape or pg.dtype != parent.dtype:
                    raise RuntimeError(
                        f"op {node._op}: the gradient for input {i} has shape {tuple(pg.shape)} "
                        f"and dtype {pg.dtype}, but that input has shape {parent.shape} and "
                        f"dtype {parent.dtype} (a bug in the op's VJP)")
                previous = grads.get(id(parent))
                grads[id(parent)] = pg if previous is None else previous + pg


def _topological_order(root):
    """Tensors reachable from ``root`` that require grad, every input before its users.

    Iterative depth-first search with an explicit stack: each node is pushed
    once to be expanded and once more (below its inputs) to be emitted after
    them, so no Python recursion is involved whatever the depth.
    """
    order, seen = [], {id(root)}
    stack = [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)
            continue
        stack.append((node, True))
        for parent in node._parents:
            if parent.requires_grad and id(parent) not in seen:
                seen.add(id(parent))
                stack.append((parent, False))
    return order


def as_tensor(x: Any, like: Optional["Tensor"] = None) -> "Tensor":
    """``x`` as a Tensor: returned as is when it already is one.

    An array or Python number becomes a constant leaf.  With ``like`` (a
    Tensor), a non-Tensor ``x`` is put on ``like``'s device and, when
    ``like`` is floating, cast to its dtype, so that a constant never changes
    the dtype of a computation (``x32 * 2.0`` stays float32).
    """
    if isinstance(x, Tensor):
        return x
    if like is None:
        return Tensor(x if hasattr(x, "dtype") else np.asarray(x))
    xp = like.xp
    if _is_float(like.dtype):
        return Tensor(xp.asarray(x, dtype=like.dtype))
    return Tensor(xp.asarray(x))


def make_output(data: Any, parents: Sequence["Tensor"], vjp: Callable[[Any], Tuple[Any, ...]],
                op: str) -> "Tensor":
    """The Tensor an op returns: ``data`` with its graph node.

    ``parents`` are the op's Tensor inputs and ``vjp(g)`` returns one
    cotangent per parent (``None`` allowed).  The graph is recorded only when
    gradients are enabled and some parent requires grad; otherwise the output
    is a constant.
    """
    out = Tensor(data)
    if is_grad_enabled() and any(p.requires_grad for p in parents):
        out.requires_grad = True
        out._parents = tuple(parents)
        out._vjp = vjp
        out._op = op
    return out
