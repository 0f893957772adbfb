"""refimpl: sparse mappings for marginalizing discrete and structured latent
variables (Correia et al., NeurIPS 2020), each with a handwritten gradient.

Pure functions on NumPy or CuPy arrays: outputs live on the input's device
with the input's float dtype; inputs are never modified.
"""
from .backend import get_xp, to_numpy, xp_of
from .gradcheck import (NondifferentiableError, check_against_enumeration,
                        check_vjp, numerical_jacobian)
from .oracles import bitvector_oracle, budget_oracle
from .sparsemap import SparseMAPResult, sparsemap, sparsemap_vjp
from .sparsemax import sparsemax, sparsemax_jacobian, sparsemax_vjp
from .topk import kbest_bitvectors, topk_sparsemax, topk_sparsemax_vjp
from . import gradcheck

__version__ = "0.1.0"

__all__ = [
    "get_xp", "xp_of", "to_numpy",
    "sparsemax", "sparsemax_vjp", "sparsemax_jacobian",
    "topk_sparsemax", "topk_sparsemax_vjp", "kbest_bitvectors",
    "sparsemap", "sparsemap_vjp", "SparseMAPResult",
    "bitvector_oracle", "budget_oracle",
    "gradcheck", "check_vjp", "numerical_jacobian", "check_against_enumeration",
    "NondifferentiableError",
]
