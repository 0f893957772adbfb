"""Type names for annotations: refimpl works on NumPy and CuPy arrays alike.

``Array`` is ``Any`` on purpose: CuPy ships no type stubs, and a NumPy-only
annotation (``numpy.ndarray``) would be wrong for half of the callers.  It
documents intent ("an ndarray of either backend"); shapes are in docstrings.
"""
from typing import Any, Callable

Array = Any
ArrayFunction = Callable[[Any], Any]

__all__ = ["Array", "ArrayFunction"]
