"""nets: a tiny micrograd-style autodiff layer on NumPy/CuPy, with layers and Adam.

``Tensor`` and ``backward`` (nets.autodiff); primitive ops with their VJPs
(nets.ops, which also re-exports the wrappers of the refimpl sparse mappings
from nets.mappings); ``Linear``, ``MLP``, ``Embedding`` (nets.layers);
``Adam`` (nets.optim).
"""
from . import ops
from .autodiff import Tensor, as_tensor, is_grad_enabled, no_grad, unbroadcast
from .layers import MLP, Embedding, Linear, Module
from .optim import Adam

__all__ = ["Tensor", "as_tensor", "no_grad", "is_grad_enabled", "unbroadcast", "ops",
           "Module", "Linear", "MLP", "Embedding", "Adam"]
