"""nets: a tiny micrograd-style autodiff layer on NumPy/CuPy, with layers and Adam.

``Tensor`` and ``backward`` (nets.autodiff); primitive ops with their VJPs
(nets.ops); the softmax family, likelihoods, entropies, KL and the sparsemax
loss (nets.losses); the Tensor wrappers of the refimpl sparse mappings
(nets.mappings); ``Linear``, ``MLP``, ``Embedding`` (nets.layers); ``Adam``
(nets.optim).

Imports inside the package run one way: ``autodiff`` imports nothing from
nets; ``ops``, ``losses`` and ``mappings`` import only ``autodiff`` and the
private ``_helpers``; layers, optim and estimators sit above them.  This
module is the one place that assembles the package: it attaches Tensor's
operator methods (each calls the op of that name) and adds the public names
of ``losses`` and ``mappings`` to the ``nets.ops`` namespace, so that
``ops.softmax`` and ``ops.sparsemax`` work beside ``ops.add``.
"""
from . import losses, mappings, ops
from .autodiff import Tensor, as_tensor, is_grad_enabled, no_grad, unbroadcast
from .layers import MLP, Embedding, Linear, Module
from .optim import Adam


def _reshape(self, *shape):
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    return ops.reshape(self, shape)


def _transpose(self, *axes):
    if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
        axes = tuple(axes[0])
    return ops.transpose(self, axes or None)


def _attach_tensor_methods():
    """Tensor's operators and methods, each one line onto the op of that name."""
    methods = {
        "__add__": lambda a, b: ops.add(a, b), "__radd__": lambda a, b: ops.add(b, a),
        "__sub__": lambda a, b: ops.sub(a, b), "__rsub__": lambda a, b: ops.sub(b, a),
        "__mul__": lambda a, b: ops.mul(a, b), "__rmul__": lambda a, b: ops.mul(b, a),
        "__truediv__": lambda a, b: ops.div(a, b), "__rtruediv__": lambda a, b: ops.div(b, a),
        "__matmul__": lambda a, b: ops.matmul(a, b), "__rmatmul__": lambda a, b: ops.matmul(b, a),
        "__pow__": lambda a, exponent: ops.pow(a, exponent),
        "__neg__": lambda a: ops.neg(a),
        "__getitem__": lambda a, index: ops.getitem(a, index),
        "sum": lambda a, axis=None, keepdims=False: ops.sum(a, axis=axis, keepdims=keepdims),
        "mean": lambda a, axis=None, keepdims=False: ops.mean(a, axis=axis, keepdims=keepdims),
        "reshape": _reshape, "transpose": _transpose,
        "T": property(lambda a: ops.transpose(a, None)),
        "exp": lambda a: ops.exp(a), "log": lambda a: ops.log(a), "relu": lambda a: ops.relu(a),
        "sigmoid": lambda a: ops.sigmoid(a), "tanh": lambda a: ops.tanh(a),
    }
    for name, method in methods.items():
        setattr(Tensor, name, method)


def _extend_ops_namespace():
    for module in (losses, mappings):
        for name in module.__all__:
            setattr(ops, name, getattr(module, name))
        ops.__all__ = [*ops.__all__, *module.__all__]


_attach_tensor_methods()
_extend_ops_namespace()

__all__ = ["Tensor", "as_tensor", "no_grad", "is_grad_enabled", "unbroadcast", "ops",
           "losses", "mappings", "Module", "Linear", "MLP", "Embedding", "Adam"]
