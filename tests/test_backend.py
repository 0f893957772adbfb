"""Array backends: get_xp / xp_of / to_numpy / cupy_available, and the rule that
refimpl/backend.py is the only place that imports CuPy (lazily)."""
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from refimpl.backend import cupy_available, get_xp, to_numpy, xp_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["refimpl", "nets", "experiments", "benchmarks"]
CUPY_IMPORT = re.compile(
    r"^\s*(import\s+([\w.]+\s*,\s*)*cupyx?\b|from\s+cupyx?\b)"   # import cupy / import x, cupy / from cupy(x)
    r"|import_module\(\s*['\"]cupy|__import__\(\s*['\"]cupy",
    re.MULTILINE)


def test_get_xp_numpy():
    assert get_xp("numpy") is np


@pytest.mark.parametrize("name", ["foo", "NumPy", "", "torch", None, 1])
def test_get_xp_unknown_name(name):
    with pytest.raises(ValueError, match="backend"):
        get_xp(name)


def test_get_xp_cupy_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)                  # `import cupy` -> ImportError
    with pytest.raises(RuntimeError) as info:
        get_xp("cupy")
    msg = str(info.value)
    assert "CuPy" in msg and "not installed" in msg                 # names the missing piece
    assert "cuda12" in msg and "cuda13" in msg                      # and the extras to install
    assert "pip install" in msg
    assert cupy_available() is False


def fake_cupy(count=None, error=None):
    mod = types.ModuleType("cupy")

    def get_device_count():
        if error is not None:
            raise error
        return count

    mod.cuda = types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=get_device_count))
    return mod


def test_get_xp_cupy_without_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(error=RuntimeError("no CUDA driver")))
    with pytest.raises(RuntimeError, match="no GPU") as info:
        get_xp("cupy")
    assert "no CUDA driver" in str(info.value)
    assert cupy_available() is False
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(count=0))
    with pytest.raises(RuntimeError, match="no GPU"):
        get_xp("cupy")
    assert cupy_available() is False


def test_get_xp_cupy_with_a_gpu_returns_the_module(monkeypatch):
    fake = fake_cupy(count=1)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert get_xp("cupy") is fake
    assert cupy_available() is True


def test_xp_of_and_to_numpy():
    a = np.arange(3.0)
    assert xp_of(a) is np
    assert xp_of(a, 2.0, None) is np
    assert xp_of() is np
    out = to_numpy(a)
    assert isinstance(out, np.ndarray) and np.array_equal(out, a)
    assert isinstance(to_numpy([1.0, 2.0]), np.ndarray)


def test_get_xp_cupy_older_than_14_is_refused(monkeypatch):
    fake = fake_cupy(count=1)
    fake.__version__ = "13.6.0"                                     # no put_along_axis
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with pytest.raises(RuntimeError, match=r"CuPy >= 14.*found 13\.6\.0"):
        get_xp("cupy")
    fake.__version__ = "14.0.0"
    assert get_xp("cupy") is fake


def test_xp_of_recognises_the_strict_standin_without_cupy(monkeypatch):
    """The stand-in's arrays name their namespace (__array_namespace__); backend.py
    needs no import of it, and CuPy need not be installed."""
    import strict_cupy
    monkeypatch.setitem(sys.modules, "cupy", None)
    a = strict_cupy.asarray(np.arange(3.0))
    assert xp_of(a) is strict_cupy and xp_of(np.ones(2), a, 1.0) is strict_cupy
    assert xp_of(np.float64(1.0), np.ones(2)) is np
    out = to_numpy(a)
    assert isinstance(out, np.ndarray) and np.array_equal(out, [0.0, 1.0, 2.0])


def test_xp_fixture_roundtrip(xp, rng):
    a = rng.standard_normal((2, 3))
    b = xp.asarray(a)
    assert xp_of(b) is xp
    np.testing.assert_array_equal(to_numpy(b), a)


def python_files():
    files = []
    for pkg in PACKAGES:
        d = ROOT / pkg
        if d.is_dir():
            files += sorted(d.rglob("*.py"))
    return files


def test_cupy_import_regex_sanity():
    for line in ["import cupy", "    import cupy  # noqa", "from cupy import cuda", "import numpy, cupy",
                 "import cupy as cp", "from cupy.cuda import runtime", "importlib.import_module('cupy')",
                 "from cupyx.scipy import special"]:
        assert CUPY_IMPORT.search(line), line
    for line in ["import cupyfoo", "# uses cupy arrays", "x = 'cupy'",
                 "xp = sys.modules['cupy']"]:
        assert not CUPY_IMPORT.search(line), line


def test_only_backend_imports_cupy():
    files = python_files()
    assert any(f.name == "backend.py" for f in files)
    offenders = []
    for f in files:
        rel = f.relative_to(ROOT).as_posix()
        if rel == "refimpl/backend.py":
            continue
        text = f.read_text(encoding="utf-8")
        for m in CUPY_IMPORT.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            offenders.append(f"{rel}:{line}: {m.group(0).strip()}")
    assert not offenders, "modules other than refimpl/backend.py import cupy:\n" + "\n".join(offenders)
    assert CUPY_IMPORT.search((ROOT / "refimpl" / "backend.py").read_text(encoding="utf-8"))


def test_importing_refimpl_does_not_import_cupy(tmp_path):
    """Even with a CuPy on the path, importing refimpl (all submodules) must not
    import it: a fake ``cupy`` package that records its import is put first."""
    fake = tmp_path / "cupy"
    fake.mkdir()
    (fake / "__init__.py").write_text("import sys\nsys.stderr.write('FAKE CUPY IMPORTED\\n')\n")
    code = textwrap.dedent("""
        import sys, pkgutil, importlib
        import refimpl
        for m in pkgutil.iter_modules(refimpl.__path__):
            importlib.import_module("refimpl." + m.name)
        assert "cupy" not in sys.modules, "refimpl imported cupy"
        print("OK")
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "OK" in proc.stdout
    assert "FAKE CUPY IMPORTED" not in proc.stderr
    # sanity: the fake is importable in that environment
    proc = subprocess.run([sys.executable, "-c", "import cupy"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=60)
    assert "FAKE CUPY IMPORTED" in proc.stderr


def test_public_api_is_exported():
    """The public names are re-exported from refimpl/__init__.py."""
    import refimpl
    for name in ["get_xp", "xp_of", "to_numpy", "sparsemax", "sparsemax_vjp", "sparsemax_jacobian",
                 "topk_sparsemax", "topk_sparsemax_vjp", "kbest_bitvectors", "sparsemap",
                 "sparsemap_vjp", "SparseMAPResult", "bitvector_oracle", "budget_oracle",
                 "check_vjp", "numerical_jacobian", "check_against_enumeration",
                 "NondifferentiableError"]:
        assert hasattr(refimpl, name), name
    for name in refimpl.__all__:
        assert hasattr(refimpl, name), name
