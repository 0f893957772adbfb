"""A strict CPU stand-in for CuPy: the cupy half of the test suite without a GPU.

This module *is* the array namespace (use it where ``cupy`` would be used).
Its arrays (:class:`ndarray`) hold NumPy data but are not NumPy arrays, and
they refuse what CuPy refuses:

- implicit conversion to NumPy (``np.asarray(device_array)``, ``__array__``);
- operators and functions mixing NumPy arrays and device arrays;
- names and keyword arguments absent from the supported CuPy, as listed in
  ``manifest.json`` (generated from an installed CuPy by ``make_manifest.py``);
- device scalars used as indices or slice bounds (``a[:n]`` with ``n`` a
  0-d device array);
- ``sort``/``argsort`` with a ``kind`` other than ``None``/``'stable'``.

Reductions return 0-d device arrays, as CuPy's do.  A singular
``linalg.solve`` returns NaN instead of raising (CuPy does not check).

Host synchronisations (``bool``/``int``/``float``/``item``/``tolist``/
``get``, boolean-mask indexing, ``cuda.Device().synchronize()``) and
host-to-device copies (``asarray`` of NumPy data) are counted by the source
line that caused them, outside this package: see :func:`count_syncs`.
"""
import contextlib
import json
import operator
import os
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
MANIFEST = json.loads(Path(_HERE, "manifest.json").read_text())
__version__ = f"{MANIFEST['cupy_version']} (strict CPU stand-in)"

_NAMES = MANIFEST["names"]
_METHODS = MANIFEST["ndarray"]
_FROM_HOST = {"asarray", "array", "asanyarray", "ascontiguousarray"}   # accept NumPy input


class StrictCupyError(TypeError):
    """What the stand-in raises where CuPy would raise (a ``TypeError``)."""


# ------------------------------------------------------------------ sync counting
class SyncLog:
    """Host syncs and host<->device copies, by ``"file:line"`` of the caller."""

    def __init__(self):
        self.syncs = Counter()
        self.h2d = Counter()
        self.d2h = Counter()

    @property
    def n_syncs(self):
        return sum(self.syncs.values())

    def report(self):
        lines = [f"{n:5d}  {where}" for where, n in self.syncs.most_common()]
        return f"{self.n_syncs} host syncs:\n" + "\n".join(lines)


_LOGS = []


def _caller():
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if not (name.startswith(_HERE) or "numpy" + os.sep in name):
            return f"{os.path.relpath(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _record(kind):
    if _LOGS:
        where = _caller()
        for log in _LOGS:
            getattr(log, kind)[where] += 1


@contextlib.contextmanager
def count_syncs():
    """``with count_syncs() as log: ...`` -- ``log.n_syncs``, ``log.syncs`` by line."""
    log = SyncLog()
    _LOGS.append(log)
    try:
        yield log
    finally:
        _LOGS.remove(log)


# ------------------------------------------------------------------ (un)wrapping
def _refuse_host(where):
    raise StrictCupyError(f"Unsupported type <class 'numpy.ndarray'> in {where}: a NumPy array "
                          f"mixed with device arrays (CuPy refuses it; move it with cupy.asarray)")


def _unwrap(x, where, allow_host=False):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, np.ndarray):
        if not allow_host:
            _refuse_host(where)
        _record("h2d")
        return x
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v, where, allow_host) for v in x)
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return ndarray._new(x)
    if isinstance(x, np.generic):
        return ndarray._new(np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    if isinstance(x, list):
        return [_wrap(v) for v in x]
    return x


def _check_keywords(name, params, kwargs):
    if params is None or "**" in params:
        return
    for key in kwargs:
        if key not in params:
            raise StrictCupyError(f"{name}() got an unexpected keyword argument {key!r} "
                                  f"(not in CuPy {MANIFEST['cupy_version']})")


def _check_kind(name, kwargs):
    if name.endswith("sort") and kwargs.get("kind") not in (None, "stable"):
        raise NotImplementedError(f"{name}: kind={kwargs['kind']!r} is not supported by CuPy "
                                  f"(its sorts are stable; pass kind=None or 'stable')")


def _function(name, impl, params, allow_host=False):
    def call(*args, **kwargs):
        _check_keywords(name, params, kwargs)
        _check_kind(name, kwargs)
        where = f"cupy.{name}()"
        args = _unwrap(args, where, allow_host)
        kwargs = {k: _unwrap(v, where, allow_host) for k, v in kwargs.items()}
        if name in ("sort", "argsort"):
            kwargs["kind"] = "stable"
        return _wrap(impl(*args, **kwargs))
    call.__name__ = call.__qualname__ = name
    return call


class ufunc:
    """A NumPy ufunc restricted to CuPy's methods and device inputs."""

    def __init__(self, name, spec):
        self._np, self._name, self._spec = getattr(np, name), name, spec
        self.nin, self.nout = spec["nin"], spec["nout"]
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        return self._apply("__call__", args, kwargs)

    def _apply(self, method, args, kwargs):
        _check_keywords(self._name, ["out", "dtype", "casting", "where", "**"], kwargs)
        where = f"cupy.{self._name}" + ("" if method == "__call__" else f".{method}")
        args = _unwrap(args, where)
        kwargs = {k: _unwrap(v, where) for k, v in kwargs.items()}
        fn = self._np if method == "__call__" else getattr(self._np, method)
        return _wrap(fn(*args, **kwargs))

    def __getattr__(self, method):
        if method in self._spec.get("methods", ()):
            return lambda *a, **k: self._apply(method, a, k)
        raise AttributeError(f"cupy ufunc {self._name!r} has no method {method!r}")


# ------------------------------------------------------------------ the array
def _check_index(key):
    parts = key if isinstance(key, tuple) else (key,)
    sync = False
    for part in parts:
        if isinstance(part, slice):
            for bound in (part.start, part.stop, part.step):
                if isinstance(bound, ndarray):
                    raise StrictCupyError("slice indices must be integers or None: a device "
                                          "scalar as a slice bound needs an explicit int() "
                                          "(a host sync) in CuPy")
        elif isinstance(part, ndarray) and part.dtype == bool:
            sync = True                          # the output shape depends on device data
    if sync:
        _record("syncs")
    return _unwrap(key, "indexing", allow_host=True)


def _binary(ufunc_name, reflected=False):
    fn = getattr(np, ufunc_name)

    def op(self, other):
        if isinstance(other, np.ndarray):
            _refuse_host(f"operator {ufunc_name}")
        if not isinstance(other, (ndarray, int, float, complex, bool, np.generic)):
            return NotImplemented
        a, b = self._a, _unwrap(other, ufunc_name)
        return _wrap(fn(b, a) if reflected else fn(a, b))
    return op


class ndarray:
    """A device array of the stand-in: NumPy data behind CuPy's rules."""

    __slots__ = ("_a",)
    __array_priority__ = 100.0

    def __init__(self, shape, dtype=float):
        self._a = np.empty(shape, dtype=dtype)

    @classmethod
    def _new(cls, a):
        obj = cls.__new__(cls)
        obj._a = a
        return obj

    # --- what CuPy refuses or counts
    def __array__(self, *args, **kwargs):
        raise StrictCupyError("Implicit conversion to a NumPy array is not allowed. "
                              "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_namespace__(self, api_version=None):
        return sys.modules[__name__]

    def __array_ufunc__(self, ufunc_, method, *inputs, **kwargs):
        name = ufunc_.__name__
        spec = _NAMES.get(name)
        if spec is None or spec["kind"] not in ("ufunc", "function"):
            raise StrictCupyError(f"numpy.{name} has no CuPy counterpart")
        if spec["kind"] == "function" and method == "__call__":      # e.g. matmul
            return getattr(sys.modules[__name__], name)(*inputs, **kwargs)
        return ufunc(name, spec)._apply(method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        name = func.__name__
        if name not in _NAMES:
            raise StrictCupyError(f"numpy.{name} has no CuPy counterpart ({name} is not in "
                                  f"CuPy {MANIFEST['cupy_version']})")
        return getattr(sys.modules[__name__], name)(*args, **kwargs)

    def _scalar(self, convert):
        _record("syncs")
        return convert(self._a)

    def __bool__(self):
        return self._scalar(bool)

    def __int__(self):
        return self._scalar(int)

    def __float__(self):
        return self._scalar(float)

    def __complex__(self):
        return self._scalar(complex)

    def __index__(self):
        raise StrictCupyError("a device array cannot be used as a Python index: call int() on "
                              "it explicitly (a host sync) or keep the computation on the device")

    def item(self):
        return self._scalar(lambda a: a.item())

    def tolist(self):
        return self._scalar(lambda a: a.tolist())

    def get(self, stream=None, order="C", out=None, blocking=True):
        _record("syncs")
        _record("d2h")
        return np.array(self._a, order=order, copy=True)

    def __repr__(self):
        _record("syncs")
        return "strict_cupy." + repr(self._a)

    __str__ = __repr__

    def __format__(self, spec):
        return self._scalar(lambda a: format(a.item() if a.ndim == 0 else a, spec))

    # --- structure
    shape = property(lambda self: self._a.shape)
    dtype = property(lambda self: self._a.dtype)
    ndim = property(lambda self: self._a.ndim)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    itemsize = property(lambda self: self._a.itemsize)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: ndarray._new(self._a.T))
    mT = property(lambda self: ndarray._new(np.swapaxes(self._a, -1, -2)))
    flags = property(lambda self: self._a.flags)
    real = property(lambda self: ndarray._new(self._a.real))
    imag = property(lambda self: ndarray._new(self._a.imag))
    device = property(lambda self: _DEVICE)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (ndarray._new(np.asarray(row)) for row in self._a)

    def __getitem__(self, key):
        return _wrap(self._a[_check_index(key)])

    def __setitem__(self, key, value):
        self._a[_check_index(key)] = _unwrap(value, "setitem", allow_host=True)

    def __getattr__(self, name):
        spec = _METHODS.get(name)
        if spec is None or spec["kind"] != "method":
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        meth = getattr(self._a, name)

        def call(*args, **kwargs):
            _check_keywords(f"ndarray.{name}", spec["params"], kwargs)
            _check_kind(name, kwargs)
            args = _unwrap(args, f"ndarray.{name}()")
            kwargs = {k: _unwrap(v, f"ndarray.{name}()") for k, v in kwargs.items()}
            if name in ("sort", "argsort"):
                kwargs["kind"] = "stable"
            return _wrap(meth(*args, **kwargs))
        return call

    def __copy__(self):
        return ndarray._new(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._new(self._a.copy())

    def __reduce__(self):
        raise StrictCupyError("pickling a device array: convert it with .get() first")

    # --- operators
    __add__, __radd__ = _binary("add"), _binary("add", True)
    __sub__, __rsub__ = _binary("subtract"), _binary("subtract", True)
    __mul__, __rmul__ = _binary("multiply"), _binary("multiply", True)
    __truediv__, __rtruediv__ = _binary("true_divide"), _binary("true_divide", True)
    __floordiv__, __rfloordiv__ = _binary("floor_divide"), _binary("floor_divide", True)
    __mod__, __rmod__ = _binary("remainder"), _binary("remainder", True)
    __pow__, __rpow__ = _binary("power"), _binary("power", True)
    __matmul__, __rmatmul__ = _binary("matmul"), _binary("matmul", True)
    __and__, __rand__ = _binary("bitwise_and"), _binary("bitwise_and", True)
    __or__, __ror__ = _binary("bitwise_or"), _binary("bitwise_or", True)
    __xor__, __rxor__ = _binary("bitwise_xor"), _binary("bitwise_xor", True)
    __lshift__, __rshift__ = _binary("left_shift"), _binary("right_shift")
    __lt__, __le__ = _binary("less"), _binary("less_equal")
    __gt__, __ge__ = _binary("greater"), _binary("greater_equal")
    __eq__, __ne__ = _binary("equal"), _binary("not_equal")
    __hash__ = None

    def __neg__(self):
        return ndarray._new(-self._a)

    def __pos__(self):
        return ndarray._new(+self._a)

    def __abs__(self):
        return ndarray._new(abs(self._a))

    def __invert__(self):
        return ndarray._new(~self._a)

    def _inplace(name):
        fn = getattr(operator, name)

        def op(self, other):
            if isinstance(other, np.ndarray):
                _refuse_host(f"operator {name}")
            fn(self._a, _unwrap(other, name))
            return self
        return op

    __iadd__, __isub__ = _inplace("iadd"), _inplace("isub")
    __imul__, __itruediv__ = _inplace("imul"), _inplace("itruediv")
    __ipow__, __imatmul__ = _inplace("ipow"), _inplace("imatmul")
    __iand__, __ior__, __ixor__ = _inplace("iand"), _inplace("ior"), _inplace("ixor")
    del _inplace


# ------------------------------------------------------------------ the namespace
def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """``a`` on the host (a counted sync and copy for device arrays)."""
    if isinstance(a, ndarray):
        return a.get()
    return np.asarray(a)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


class _Device:
    id = 0

    def __init__(self, device=None):
        pass

    def synchronize(self):
        _record("syncs")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_DEVICE = _Device()
cuda = SimpleNamespace(Device=_Device, runtime=SimpleNamespace(getDeviceCount=lambda: 1),
                       get_current_stream=lambda: SimpleNamespace(synchronize=_DEVICE.synchronize))


def _solve(a, b):
    """CuPy's solve does not check for singular matrices: NaN, never an error."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        eye = np.broadcast_to(np.eye(a.shape[-1], dtype=a.dtype), a.shape)
        return np.full_like(np.linalg.solve(eye, b), np.nan)


class _Submodule:
    def __init__(self, name, overrides):
        self._name, self._spec = name, MANIFEST["submodules"][name]
        self._np, self._overrides = getattr(np, name), overrides

    def __getattr__(self, attr):
        spec = self._spec.get(attr)
        if spec is None:
            raise AttributeError(f"module 'cupy.{self._name}' has no attribute {attr!r}")
        if attr in self._overrides:
            impl = self._overrides[attr]
        else:
            impl = getattr(self._np, attr)
        if spec["kind"] != "function":
            return impl
        fn = _function(f"{self._name}.{attr}", impl, spec.get("params"))
        setattr(self, attr, fn)
        return fn


linalg = _Submodule("linalg", {"solve": _solve})
random = _Submodule("random", {})
_OWN = {"ndarray": ndarray, "asnumpy": asnumpy, "get_array_module": get_array_module,
        "cuda": cuda, "linalg": linalg, "random": random, "ufunc": ufunc}


_CACHE = {}          # not globals(): cupy.sum, cupy.any, ... must not shadow the builtins here


def __getattr__(name):
    """Names of the supported CuPy only (``manifest.json``), NumPy's semantics."""
    if name in _CACHE:
        return _CACHE[name]
    spec = _NAMES.get(name)
    if spec is None:
        raise AttributeError(f"module 'cupy' has no attribute {name!r} "
                             f"(not in CuPy {MANIFEST['cupy_version']})")
    if name in _OWN:
        value = _OWN[name]
    elif spec["kind"] == "ufunc":
        value = ufunc(name, spec)
    elif spec["kind"] == "function":
        impl = getattr(np, name, None)
        if impl is None:
            raise AttributeError(f"cupy.{name} exists in CuPy but the stand-in has no NumPy "
                                 f"equivalent for it")
        value = _function(name, impl, spec["params"], allow_host=name in _FROM_HOST)
    else:
        value = getattr(np, name)
    _CACHE[name] = value
    return value
