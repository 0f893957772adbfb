"""Write ``manifest.json``: the names and parameters of an installed CuPy.

The strict stand-in (``tests/strict_cupy``) accepts exactly what this file
lists, so the cupy half of the test suite fails where the supported CuPy would.
CuPy wheels install and import without a GPU; generate the manifest from the
*minimum* supported version (setup.cfg's cuda extras)::

    pip install --no-deps --target /tmp/cupy14 "cupy-cuda12x==14.0.0" cuda-pathfinder
    cd /tmp && PYTHONPATH=/tmp/cupy14 python /path/to/tests/strict_cupy/make_manifest.py

(run it from a directory that is not inside a CuPy source tree).  What is
recorded: for each public name of ``cupy``, ``cupy.linalg`` and
``cupy.random``, its kind (function, ufunc, type, constant, module) and, for
functions, the parameter names (``"*"`` marks ``**kwargs``); for
``cupy.ndarray``, its attributes and each method's parameter names, parsed
from the first docstring line (CuPy's methods are compiled).
"""
import inspect
import json
import re
import sys
from pathlib import Path

SUBMODULES = ("linalg", "random")


def _params(func):
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return None
    out = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            out.append("**")
        elif p.kind is p.VAR_POSITIONAL:
            out.append("*")
        else:
            out.append(p.name)
    return out


def _describe(obj, cupy):
    if isinstance(obj, cupy.ufunc):
        return {"kind": "ufunc", "nin": obj.nin, "nout": obj.nout,
                "methods": sorted(m for m in ("at", "reduce", "outer", "accumulate", "reduceat")
                                  if hasattr(obj, m))}
    if inspect.ismodule(obj):
        return {"kind": "module"}
    if isinstance(obj, type):
        return {"kind": "type"}
    if callable(obj):
        return {"kind": "function", "params": _params(obj)}
    return {"kind": "constant"}


def _method_params(meth):
    doc = (getattr(meth, "__doc__", None) or "").strip().splitlines()
    head = doc[0] if doc else ""
    match = re.match(r"[\w.]+\((.*?)\)", head)
    if match is None:
        return _params(meth)
    names = []
    for part in match.group(1).split(","):
        part = part.strip().split("=")[0].strip()
        if not part or part in ("self", "/"):
            continue
        if part.startswith("**"):
            names.append("**")
        elif part.startswith("*"):
            names.append("*")
        else:
            names.append(part.split()[-1])                 # 'int axis' -> 'axis'
    return names


def build(cupy):
    names = {}
    for name in dir(cupy):
        if name.startswith("_"):
            continue
        names[name] = _describe(getattr(cupy, name), cupy)
    subs = {}
    for sub in SUBMODULES:
        mod = getattr(cupy, sub)
        subs[sub] = {n: _describe(getattr(mod, n), cupy) for n in dir(mod) if not n.startswith("_")}
    methods = {}
    for name in dir(cupy.ndarray):
        if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
            continue
        attr = getattr(cupy.ndarray, name)
        if callable(attr) and not name.startswith("__"):
            methods[name] = {"kind": "method", "params": _method_params(attr)}
        elif not name.startswith("__"):
            methods[name] = {"kind": "attribute"}
        else:
            methods[name] = {"kind": "dunder"}
    return {"cupy_version": cupy.__version__, "numpy_version": sys.modules["numpy"].__version__,
            "names": names, "submodules": subs, "ndarray": methods}


def main():
    import cupy  # noqa: PLC0415  (a developer tool; never imported by the project)
    manifest = build(cupy)
    out = Path(__file__).with_name("manifest.json")
    out.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} from CuPy {manifest['cupy_version']}: {len(manifest['names'])} names, "
          f"{len(manifest['ndarray'])} ndarray members")


if __name__ == "__main__":
    main()
