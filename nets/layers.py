"""Layers: a Module base with named parameters and state dicts; Linear, MLP, Embedding.

Parameters are leaf Tensors with ``requires_grad=True`` stored as module
attributes.  :meth:`Module.named_parameters` walks the attributes in the
order they were assigned (recursing into sub-modules and lists/tuples of
modules), so the order, and the names (``"layers.0.weight"``), are
deterministic.  A parameter shared by two modules is listed once, under its
first name.

Initialisation draws from a ``numpy.random.Generator`` on the CPU (float64),
then casts to ``dtype`` and moves to ``xp``: a seed gives the same weights on
NumPy and on CuPy.
"""
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from refimpl.backend import to_numpy
from refimpl.numerics import check_positive_int as _positive_int

from . import ops
from .autodiff import Tensor

__all__ = ["Module", "Linear", "MLP", "Embedding"]


class Module:
    """Base class: subclasses assign parameters and sub-modules in ``__init__``
    and define ``forward``; calling the module calls ``forward``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def named_parameters(self, prefix: str = "") -> List[Tuple[str, Tensor]]:
        """``[(name, Tensor)]`` in attribute-assignment order, each parameter once."""
        out, seen = [], set()
        stack = [(prefix, self)]      # iterative walk, visiting children in order
        while stack:
            name, obj = stack.pop()
            if isinstance(obj, Tensor):
                if obj.requires_grad and id(obj) not in seen:
                    seen.add(id(obj))
                    out.append((name, obj))
                continue
            if isinstance(obj, Module):
                children = list(vars(obj).items())
            elif isinstance(obj, (list, tuple)):
                children = [(str(i), c) for i, c in enumerate(obj)]
            else:
                continue
            for key, child in reversed(children):
                if isinstance(child, (Tensor, Module, list, tuple)):
                    stack.append((f"{name}.{key}" if name else key, child))
        return out

    def parameters(self) -> List[Tensor]:
        """The parameters as an ordered list (see :meth:`named_parameters`)."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def state_dict(self) -> Dict[str, np.ndarray]:
        """``{name: numpy array}``: copies of the parameters, independent of the backend."""
        return {name: np.array(to_numpy(p.data), copy=True) for name, p in self.named_parameters()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Copy ``state`` (as from :meth:`state_dict`) into the parameters, in place.

        Values are cast to each parameter's dtype and moved to its backend.
        Raises ``KeyError`` naming missing or unexpected entries and
        ``ValueError`` naming a parameter whose shape differs.
        """
        params = dict(self.named_parameters())
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise KeyError(f"load_state_dict({type(self).__name__}): missing entries {missing}, "
                           f"unexpected entries {unexpected}")
        for name, p in params.items():
            value = to_numpy(state[name])
            if tuple(value.shape) != p.shape:
                raise ValueError(f"load_state_dict({type(self).__name__}): {name!r} has shape "
                                 f"{tuple(value.shape)} in the state dict, but the parameter has "
                                 f"shape {p.shape}")
        for name, p in params.items():
            p.data[...] = p.xp.asarray(to_numpy(state[name]).astype(p.dtype, copy=False))


def _parameter(values, xp, dtype):
    """A trainable leaf from float64 NumPy values, cast to ``dtype`` on backend ``xp``."""
    return Tensor(xp.asarray(values.astype(dtype)), requires_grad=True)


class Linear(Module):
    """``y = x @ weight + bias``: (..., in_features) -> (..., out_features).

    weight : (in_features, out_features), bias : (out_features,).
    Initialisation is PyTorch's default for ``nn.Linear``: every entry of the
    weight and of the bias ~ U(-1/sqrt(in_features), 1/sqrt(in_features))
    (``kaiming_uniform_(a=sqrt(5))`` has exactly that bound).  The weight is
    drawn first, then the bias, from ``rng``.
    """

    def __init__(self, in_features: int, out_features: int, rng: np.random.Generator, xp: Any = np,
                 dtype: Any = np.float32, bias: bool = True) -> None:
        self.in_features = _positive_int(in_features, "in_features")
        self.out_features = _positive_int(out_features, "out_features")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                            f"got {type(rng).__name__}")
        bound = 1.0 / np.sqrt(self.in_features)
        self.weight = _parameter(rng.uniform(-bound, bound, (self.in_features, self.out_features)),
                                 xp, dtype)
        self.bias = (_parameter(rng.uniform(-bound, bound, (self.out_features,)), xp, dtype)
                     if bias else None)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): input has "
                             f"{x.shape[-1]} features in its last axis (shape {tuple(x.shape)})")
        lead = tuple(x.shape[:-1])
        if len(lead) > 1:               # one 2-D product: stacked matmul is far slower on BLAS
            x = ops.reshape(x, (-1, self.in_features))
        y = ops.matmul(x, self.weight)
        y = y if self.bias is None else y + self.bias
        return ops.reshape(y, lead + (self.out_features,)) if len(lead) > 1 else y


_ACTIVATIONS = {"relu": ops.relu, "tanh": ops.tanh, "sigmoid": ops.sigmoid,
                "softplus": ops.softplus}


class MLP(Module):
    """Linear layers of ``sizes = [in, h1, ..., out]`` with ``activation`` between
    them (none after the last): (..., in) -> (..., out)."""

    def __init__(self, sizes: Sequence[int], rng: np.random.Generator, activation: str = "relu",
                 xp: Any = np, dtype: Any = np.float32) -> None:
        sizes = list(sizes)
        if len(sizes) < 2:
            raise ValueError(f"MLP sizes needs at least [in, out], got {sizes}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.layers = [Linear(i, o, rng, xp=xp, dtype=dtype) for i, o in zip(sizes[:-1], sizes[1:])]

    def forward(self, x: Tensor) -> Tensor:
        act = _ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x


class Embedding(Module):
    """A lookup table: integer indices (...) -> vectors (..., dim).

    weight : (num, dim), initialised N(0, 1) as PyTorch's ``nn.Embedding``.
    """

    def __init__(self, num: int, dim: int, rng: np.random.Generator, xp: Any = np,
                 dtype: Any = np.float32) -> None:
        self.num = _positive_int(num, "num")
        self.dim = _positive_int(dim, "dim")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.weight = _parameter(rng.standard_normal((self.num, self.dim)), xp, dtype)

    def forward(self, indices: Any) -> Tensor:
        if isinstance(indices, Tensor):
            indices = indices.data
        indices = self.weight.xp.asarray(indices)
        if indices.dtype.kind not in "iu":
            raise TypeError(f"Embedding: indices must be an integer array, got {indices.dtype}")
        if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= self.num):
            raise IndexError(f"Embedding({self.num}, {self.dim}): indices must lie in "
                             f"[0, {self.num}), got values in [{int(indices.min())}, "
                             f"{int(indices.max())}]")
        return ops.getitem(self.weight, indices)
