"""Cross-checker, part 1: loading the user's functions and calling them in a framework.

``load_callable`` turns ``"module:attr"`` / ``"FILE.py:attr"`` into the object
and every way that can go wrong into a :class:`UsageError` (one line, exit 2
on the command line).  The framework adapters (``_Numpy``, ``_Torch``,
``_Jax``) run the forward on a case's input and its VJP on the case's
cotangents; torch and jax are imported only when asked for.
"""
import importlib
import importlib.util
import inspect
from pathlib import Path

import numpy as np

FRAMEWORKS = ("numpy", "torch", "jax")


class UsageError(ValueError):
    """A mistake in the command line or the arguments of :func:`refimpl.crosscheck.run`
    (one line, naming the argument and the fix)."""


def _one_line(exc):
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


def load_callable(spec, what="--impl"):
    """``"module:attr.path"`` or ``"path/to/file.py:attr"`` -> the object.

    Raises :class:`UsageError` (naming ``what``) when the module cannot be
    imported, the file is missing or broken, the attribute does not exist,
    or the object is not callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or ":" not in spec:
        raise UsageError(f"{what}: expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    try:
        if mod_name.endswith(".py"):
            if not Path(mod_name).is_file():
                raise UsageError(f"{what} {spec}: no file {mod_name!r} (relative to {Path.cwd()})")
            loader = importlib.util.spec_from_file_location(f"_crosscheck_user_{Path(mod_name).stem}",
                                                            mod_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except UsageError:
        raise
    except BaseException as exc:                       # SyntaxError, SystemExit, ... in user code
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageError(f"{what} {spec}: importing {mod_name!r} failed: {_one_line(exc)}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{what} {spec}: {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UsageError(f"{what} {spec}: {type(obj).__name__} object is not callable")
    return obj


def check_not_a_class(f, spec, what="--impl"):
    """A class where a function is expected: raise a :class:`UsageError` with the adapter."""
    if not inspect.isclass(f):
        return
    name = spec if isinstance(spec, str) else f.__qualname__
    mod, cls = (spec.rsplit(":", 1) if isinstance(spec, str) else (f.__module__, f.__qualname__))
    if any(b.__name__ == "Function" and b.__module__.startswith("torch.autograd")
           for b in inspect.getmro(f)):
        raise UsageError(f"{what} {name} is a torch.autograd.Function class: pass its apply, "
                         f"e.g. {what} {mod}:{cls}.apply")
    if mod.endswith(".py"):
        adapter = f"add the line `f = {cls}()` to {mod} (with its arguments, e.g. dim=-1) and pass {what} {mod}:f"
    else:
        adapter = (f"e.g. a file adapter.py with the line `import {mod}; f = {mod}.{cls}()` "
                   f"(add its arguments, e.g. dim=-1) and {what} adapter.py:f")
    raise UsageError(f"{what} {name} is a class, not a function: pass an instance or a function, {adapter}")


def _keyword(f, names=("axis", "dim")):
    try:
        params = inspect.signature(f).parameters
    except (TypeError, ValueError):
        return None
    return next((n for n in names if n in params), None)


def _n_required_positional(f):
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):
        return 3
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params)


def _call(f, x, axis, params, moveaxis, extra=()):
    """``f(*extra, x, *params)`` along ``axis`` (keyword if accepted, else moved last)."""
    kw = _keyword(f)
    if kw is not None:
        return f(*extra, x, *params, **{kw: axis})
    if axis in (-1, x.ndim - 1):
        return f(*extra, x, *params)
    extra = tuple(moveaxis(e, axis, -1) for e in extra)
    return moveaxis(f(*extra, moveaxis(x, axis, -1), *params), -1, axis)


class _Numpy:
    name = "numpy"
    x64 = True

    def __init__(self, vjp):
        self.vjp_fn = vjp

    def forward(self, f, x, axis, params):
        out = _call(f, x.copy(), axis, params, np.moveaxis)
        return out, (x, out, axis, params)

    def vjp(self, handle, g):
        x, out, axis, params = handle
        if _n_required_positional(self.vjp_fn) == 2:
            return _call(self.vjp_fn, g, axis, (), np.moveaxis, extra=(out,))
        return _call(self.vjp_fn, g, axis, params, np.moveaxis, extra=(x.copy(), out))


class _Torch:
    name = "torch"
    x64 = True

    def __init__(self):
        import torch                                   # optional: only when asked for
        self.torch = torch

    def forward(self, f, x, axis, params):
        xt = self.torch.tensor(x, requires_grad=True)
        out = _call(f, xt, axis, params, self.torch.movedim)
        probs = out[1] if isinstance(out, tuple) else out
        if not getattr(probs, "requires_grad", False):
            raise TypeError("the output does not require grad: is the function differentiable in torch?")
        to_np = lambda t: t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)  # noqa: E731
        return _detach(out, to_np), (xt, probs)

    def vjp(self, handle, g):
        xt, probs = handle
        (grad,) = self.torch.autograd.grad(probs, xt, grad_outputs=self.torch.as_tensor(g),
                                           retain_graph=True)
        return grad.detach().cpu().numpy()


class _Jax:
    name = "jax"

    def __init__(self, x64, jit=True):
        import jax                                     # optional: only when asked for
        if x64:                                        # float64 cases stay float64
            jax.config.update("jax_enable_x64", True)
        self.jax, self.jnp, self.jit = jax, jax.numpy, jit
        self.x64 = self.jnp.asarray(np.zeros(1)).dtype == np.float64   # what is in force

    def forward(self, f, x, axis, params):
        def fn(xx):
            out = _call(f, xx, axis, params, self.jnp.moveaxis)
            return (out[1], out[0]) if isinstance(out, tuple) else (out, None)
        xj = self.jnp.asarray(x)
        try:                                           # as in training, and one compilation
            if not self.jit:
                raise self.jax.errors.JAXTypeError("eager")
            probs, pullback, bits = self.jax.vjp(self.jax.jit(fn), xj, has_aux=True)
        except self.jax.errors.JAXTypeError:           # not traceable (or --no-jit): eagerly
            probs, pullback, bits = self.jax.vjp(fn, xj, has_aux=True)
        out = np.asarray(probs) if bits is None else (np.asarray(bits), np.asarray(probs))
        return out, pullback

    def vjp(self, pullback, g):
        return np.asarray(pullback(self.jnp.asarray(g))[0])


def _detach(out, fn):
    return tuple(fn(o) for o in out) if isinstance(out, tuple) else fn(out)


def make_adapter(framework, vjp, x64, jit=True):
    """The framework adapter (``framework`` checked by :func:`refimpl.crosscheck.run`);
    jax gets ``jax_enable_x64`` only when a float64 case runs."""
    if framework == "numpy":
        if vjp is not None:
            f = load_callable(vjp, "--vjp")
            check_not_a_class(f, vjp, "--vjp")
            return _Numpy(f)
        return _Numpy(None)
    if vjp is not None:
        raise UsageError(f"--vjp is for --framework numpy; {framework} uses its own autodiff (drop --vjp)")
    try:
        return _Torch() if framework == "torch" else _Jax(x64, jit)
    except ImportError as exc:
        raise UsageError(f"--framework {framework}: {_one_line(exc)} (pip install {framework})") from None
