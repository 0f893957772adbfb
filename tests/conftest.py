"""Shared fixtures: the ``xp`` fixture runs a test on NumPy and, where a GPU is
visible, on CuPy (skipped cleanly otherwise); the data directory for tests is
``../shared/data`` unless REFIMPL_DATA says otherwise."""
import os
from pathlib import Path

import numpy as np
import pytest

from refimpl.backend import cupy_available, get_xp

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("REFIMPL_DATA", str((ROOT / ".." / "shared" / "data").resolve()))

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
    path = Path(os.environ["REFIMPL_DATA"])
    if not (path / "fashion-mnist").is_dir():
        pytest.skip(f"datasets not found under {path} (set REFIMPL_DATA)")
    return path
