"""Array backends: the one module that knows about CuPy.

Every other module takes its array namespace ``xp`` from the arrays it is
given (:func:`xp_of`), so a single code path serves NumPy on the CPU and CuPy
on a GPU.  CuPy is imported lazily, here only, and only when asked for: a
machine without CUDA installs, imports and tests the project without it.
"""
import sys
from types import ModuleType
from typing import Any

import numpy as np

__all__ = ["get_xp", "xp_of", "to_numpy", "cupy_available"]


MIN_CUPY_MAJOR = 14


def _major(version):
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        return MIN_CUPY_MAJOR                   # unparsable (a development build): let it try


def _import_cupy():
    """Import CuPy and check that a GPU is visible; explain what is missing."""
    try:
        import cupy  # noqa: PLC0415  (the only cupy import in the project)
    except ImportError as exc:
        raise RuntimeError(
            "backend 'cupy' needs the CuPy package, which is not installed: "
            "install the extra that matches your CUDA toolkit, e.g. "
            "`pip install -e \".[cuda12]\"` (CUDA 12) or `pip install -e \".[cuda13]\"` (CUDA 13), "
            "CuPy >= 14; on a machine with CuPy preinstalled see the README's GPU section, "
            "or use backend 'numpy'"
        ) from exc
    version = getattr(cupy, "__version__", None)
    if version is not None and _major(version) < MIN_CUPY_MAJOR:
        raise RuntimeError(
            f"backend 'cupy' needs CuPy >= {MIN_CUPY_MAJOR} (cupy.put_along_axis), found "
            f"{version}; upgrade it (`pip install -U cupy-cuda12x` or cupy-cuda13x, which need "
            "NumPy >= 2), or use backend 'numpy'"
        )
    try:
        n_gpus = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDA driver missing or broken
        raise RuntimeError(
            "backend 'cupy': CuPy is installed but no GPU is visible "
            f"({type(exc).__name__}: {exc}); check the NVIDIA driver and "
            "CUDA_VISIBLE_DEVICES, or use backend 'numpy'"
        ) from exc
    if n_gpus < 1:
        raise RuntimeError(
            "backend 'cupy': CuPy is installed but no GPU is visible "
            "(0 CUDA devices); check CUDA_VISIBLE_DEVICES, or use backend 'numpy'"
        )
    return cupy


def get_xp(name: str) -> ModuleType:
    """Return the array namespace called ``name`` ("numpy" or "cupy").

    Raises ``RuntimeError`` for "cupy" when CuPy is not installed or no GPU is
    visible (the message says which, and how to fix it), and ``ValueError``
    for any other name.
    """
    if name == "numpy":
        return np
    if name == "cupy":
        return _import_cupy()
    raise ValueError(f"backend must be 'numpy' or 'cupy', got {name!r}")


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one GPU (never raises)."""
    try:
        _import_cupy()
    except RuntimeError:
        return False
    return True


def _device_namespace(a):
    """The namespace of a device array ``a`` (CuPy's, or any non-NumPy array
    that names its namespace with ``__array_namespace__``, such as the test
    suite's CPU stand-in for CuPy); None for NumPy data and non-arrays."""
    if isinstance(a, (np.ndarray, np.generic)):
        return None
    if type(a).__module__.split(".")[0] == "cupy":
        return sys.modules["cupy"]
    if hasattr(type(a), "__array_namespace__") and hasattr(a, "get"):
        return a.__array_namespace__()
    return None


def xp_of(*arrays: Any) -> ModuleType:
    """The array namespace of ``arrays`` (numpy unless one is a device array).

    Non-array arguments (Python scalars, None) are ignored.  Mixing NumPy and
    CuPy arrays is allowed only in the direction CuPy itself allows; the
    namespace returned is CuPy's when any argument lives on the GPU.
    """
    for a in arrays:
        ns = _device_namespace(a)
        if ns is not None:
            return ns
    return np


def to_numpy(a: Any) -> np.ndarray:
    """A NumPy copy (or view) of ``a``, wherever it lives (a host sync for device arrays)."""
    if _device_namespace(a) is not None:
        return a.get()
    return np.asarray(a)
