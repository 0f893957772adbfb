"""Shared fixtures: the ``xp`` fixture runs a test on NumPy and, where a GPU is
visible, on CuPy (skipped cleanly otherwise); ``data_dir`` is the directory of
the real datasets named by the environment variable REFIMPL_DATA (docs/data.md),
and a test that needs it is skipped, saying why, when it is unset or empty.
Tests never download."""
import os
from pathlib import Path

import numpy as np
import pytest

from refimpl.backend import cupy_available, get_xp


_HAS_CUPY = None


def _has_cupy():
    global _HAS_CUPY
    if _HAS_CUPY is None:
        _HAS_CUPY = cupy_available()
    return _HAS_CUPY


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.cupy)])
def xp(request):
    """The array namespace under test."""
    if request.param == "cupy" and not _has_cupy():
        pytest.skip("cupy backend: CuPy not installed or no GPU visible")
    return get_xp(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def data_dir():
    value = os.environ.get("REFIMPL_DATA", "")
    if not value:
        pytest.skip("needs the real Fashion-MNIST/MNIST files: set REFIMPL_DATA=DIR with "
                    "DIR/fashion-mnist/ and DIR/mnist/ (docs/data.md)")
    path = Path(value).expanduser()
    if not (path / "fashion-mnist").is_dir():
        pytest.skip(f"needs the real datasets: REFIMPL_DATA={value} has no fashion-mnist/ folder "
                    f"(docs/data.md)")
    return path
