"""Shared fixtures: the ``xp`` fixture runs a test on NumPy and on CuPy;
``data_dir`` is the directory of the real datasets named by the environment
variable REFIMPL_DATA (docs/data.md), and a test that needs it is skipped,
saying why, when it is unset or empty.  Tests never download.

The cupy half runs on the real CuPy where a GPU is visible and otherwise on
the strict CPU stand-in ``tests/strict_cupy`` (arrays that refuse what CuPy
refuses and count host syncs), so CI checks the GPU code path on every commit.
``SPARSEMARG_CUPY=real`` requires the real CuPy (a test errors without it),
``SPARSEMARG_CUPY=standin`` forces the stand-in even on a GPU machine.
"""
import functools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from refimpl.backend import cupy_available, get_xp


sys.path.insert(0, str(Path(__file__).resolve().parent))
import strict_cupy  # noqa: E402  (tests/strict_cupy, the CPU stand-in)


@functools.lru_cache(maxsize=None)
def cupy_mode():
    """'real' (CuPy with a GPU) or 'standin', from SPARSEMARG_CUPY and the machine."""
    wanted = os.environ.get("SPARSEMARG_CUPY", "auto")
    if wanted not in ("auto", "real", "standin"):
        raise pytest.UsageError(f"SPARSEMARG_CUPY must be auto, real or standin, got {wanted!r}")
    if wanted == "standin":
        return "standin"
    if wanted == "real" or cupy_available():
        return "real"
    return "standin"


def cupy_namespace():
    """The namespace of the cupy half: real CuPy or the strict stand-in."""
    return get_xp("cupy") if cupy_mode() == "real" else strict_cupy


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.cupy)])
def xp(request):
    """The array namespace under test (cupy: real CuPy or the strict stand-in)."""
    return np if request.param == "numpy" else cupy_namespace()


@pytest.fixture
def cupy_backend(monkeypatch):
    """Make ``get_xp("cupy")`` (and so ``--backend cupy``) return the cupy
    namespace under test: the stand-in replaces ``sys.modules["cupy"]``."""
    xp = cupy_namespace()
    if xp is strict_cupy:
        monkeypatch.setitem(sys.modules, "cupy", strict_cupy)
    return xp


def pytest_report_header(config):
    return f"cupy half: {cupy_mode()} ({cupy_namespace().__version__})"


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
