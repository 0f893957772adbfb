"""Check another implementation against the golden cases (:mod:`refimpl.golden`).

    python -m refimpl.crosscheck --mapping sparsemax --impl entmax:sparsemax --framework torch
    python -m refimpl.crosscheck --mapping sparsemax --impl mymod:sparsemax --vjp mymod:sparsemax_vjp

Runs every golden case of the mapping through the user's forward function and
(torch, jax: the framework's own autodiff; numpy: the ``--vjp`` function, if
given) its VJP for the case's fixed cotangents, and prints one line per case:
max forward error, max VJP error (in ulps of the case's scale, and absolute),
support mismatches and non-finite values.  Exit status 0 when every case
agrees within its tolerances, 1 otherwise.  Calling conventions
(docs/crosscheck.md):

* forward ``f(x, *params)`` with params ``()`` for sparsemax and
  sparsemap_bits, ``(k,)`` for topk_sparsemax and topk_bits, ``(B,)`` for
  sparsemap_budget.  If ``f`` has a parameter called ``axis`` (or ``dim``) the
  case's axis is passed by keyword; otherwise the categories are moved to the
  last axis.  ``topk_bits`` returns ``(bits (N, k, D), probs (N, k))``; the
  bit-vectors may come in any order.
* numpy VJP: ``vjp(y, g)`` when it has exactly two required positional
  parameters (like :func:`refimpl.sparsemax_vjp`), else ``vjp(x, y, g, *params)``;
  ``y`` is what ``f`` returned, ``g`` the cotangent in the same layout;
  ``axis`` is passed by keyword when accepted.
"""
import argparse
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from . import golden

__all__ = ["run", "CaseResult", "Report", "load_callable", "REFERENCE", "main"]

FRAMEWORKS = ("numpy", "torch", "jax")


@dataclass
class CaseResult:
    """Outcome of one case.  Errors are max absolute errors (``inf`` when a
    value is not finite); ``*_ulps`` divide them by ``eps(dtype) * scale``."""
    name: str
    ok: bool
    fwd_err: float = float("nan")
    fwd_ulps: float = float("nan")
    vjp_err: float = None
    vjp_ulps: float = None
    fwd_atol: float = None
    vjp_atol: float = None
    support_mismatches: int = 0
    nonfinite: int = 0
    reasons: list = field(default_factory=list)     # why it failed
    notes: list = field(default_factory=list)       # reported, not failed
    error: str = None


@dataclass
class Report:
    mapping: str
    impl: str
    framework: str
    golden_version: str
    results: list

    @property
    def ok(self):
        return all(r.ok for r in self.results)

    @property
    def failed(self):
        return [r.name for r in self.results if not r.ok]

    def to_dict(self):
        return {"mapping": self.mapping, "impl": self.impl, "framework": self.framework,
                "golden_version": self.golden_version, "ok": self.ok,
                "n_cases": len(self.results), "failed": self.failed,
                "cases": [_jsonable(asdict(r)) for r in self.results]}

    def table(self):
        """The human-readable table (one line per case and a summary)."""
        head = (f"crosscheck {self.mapping}: impl={self.impl} framework={self.framework} "
                f"golden={self.golden_version} ({len(self.results)} cases)")
        w = max([len(r.name) for r in self.results] + [4])
        lines = [head, f"{'case':<{w}}  status  {'fwd err ulps / abs':<21}  "
                       f"{'vjp err ulps / abs':<21}  supp  nonfinite  note"]
        for r in self.results:
            vjp = "-" if r.vjp_err is None else _err(r.vjp_ulps, r.vjp_err)
            note = r.error or ",".join(r.reasons + [f"({n})" for n in r.notes])
            lines.append(f"{r.name:<{w}}  {'ok' if r.ok else 'FAIL':<6}  {_err(r.fwd_ulps, r.fwd_err):<21}  "
                         f"{vjp:<21}  {r.support_mismatches:>4}  {r.nonfinite:>9}  {note}")
        n_ok = sum(r.ok for r in self.results)
        tail = "all agree" if self.ok else "FAILED: " + ", ".join(self.failed)
        lines.append(f"summary: {n_ok}/{len(self.results)} cases ok; {tail}")
        return "\n".join(lines)


def _err(ulps, err):
    if err is None or err != err:
        return "-"
    return f"{ulps:.3g} / {err:.2g}"


def _jsonable(d):
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in d.items()}


# ----------------------------------------------------------------- loading

def load_callable(spec):
    """``"module:attr.path"`` or ``"path/to/file.py:attr"`` -> the object."""
    if callable(spec):
        return spec
    if ":" not in spec:
        raise ValueError(f"expected MODULE:FUNCTION, got {spec!r}")
    mod_name, attr = spec.rsplit(":", 1)
    if mod_name.endswith(".py"):
        loader = importlib.util.spec_from_file_location("_crosscheck_user", mod_name)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(mod_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


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


# -------------------------------------------------------------- frameworks

class _Numpy:
    name = "numpy"

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

    def __init__(self):
        import torch                                   # optional: only when asked for
        self.torch = torch

    def forward(self, f, x, axis, params):
        xt = self.torch.tensor(x, requires_grad=True)
        out = _call(f, xt, axis, params, self.torch.movedim)
        probs = out[1] if isinstance(out, tuple) else out
        if not probs.requires_grad:
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


def _adapter(framework, vjp, x64, jit=True):
    """The framework adapter; jax gets ``jax_enable_x64`` only when a float64 case runs."""
    if framework == "numpy":
        return _Numpy(load_callable(vjp) if vjp is not None else None)
    if vjp is not None:
        raise ValueError(f"--vjp is for --framework numpy; {framework} uses its own autodiff")
    return _Torch() if framework == "torch" else _Jax(x64, jit)


# ------------------------------------------------------------- comparison

def _params(meta):
    return tuple(meta[k] for k in ("k", "budget") if k in meta)


def _align(case, out):
    """User output -> (y in the golden layout, g_golden -> g_user, extra support).

    For topk_bits the user's bit-vectors are matched to the golden ones by
    value; unmatched golden rows get probability 0, unmatched user rows with
    positive probability count as support mismatches."""
    if case.mapping != "topk_bits":
        return np.asarray(out), (lambda g: g), 0
    bits_u, probs_u = (np.asarray(o) for o in out)
    gold = case.arrays["bits"].astype(bool)
    N, k = gold.shape[:2]
    perm = np.full(probs_u.shape, -1)
    y, extra = np.zeros((N, k), dtype=probs_u.dtype), 0
    for n in range(N):
        for j in range(probs_u.shape[1]):
            hit = np.flatnonzero((gold[n] == (bits_u[n, j] > 0.5)).all(axis=-1))
            if hit.size:
                perm[n, j], y[n, hit[0]] = hit[0], probs_u[n, j]
            elif probs_u[n, j] > 0:
                extra += 1

    def to_user(g):
        return np.where(perm >= 0, np.take_along_axis(g, np.maximum(perm, 0), axis=1), 0).astype(g.dtype)
    return y, to_user, extra


# A support mismatch fails a case only where the output's zero pattern *is* the
# Jacobian's support (sparsemax-type outputs, exact zeros by construction).
# SparseMAP marginals are sums of weights, so 1 - 2^-53 in place of 1 is a
# rounding, not a different Jacobian: reported, not failed.
_SUPPORT_FATAL = {m: {"support"} for m in ("sparsemax", "topk_sparsemax", "topk_bits")}


def _support(mapping, y):
    if mapping.startswith("sparsemap"):
        return (y > 0) & (y < 1)
    return y > 0


def _max_err(got, exp):
    got = np.asarray(got, dtype=np.float64)
    if got.shape != exp.shape:
        raise ValueError(f"shape {got.shape}, expected {exp.shape}")
    if not np.all(np.isfinite(got)):
        return float("inf")
    return float(np.max(np.abs(got - exp.astype(np.float64)), initial=0.0))


def check_case(case, f, adapter, tol_scale=1.0):
    """Run one case; return a :class:`CaseResult`."""
    tol, eps = case.meta["tolerance"], float(np.finfo(case.meta["dtype"]).eps)
    res = CaseResult(case.name, ok=False, fwd_atol=tol_scale * tol["forward"]["atol"],
                     vjp_atol=tol_scale * tol["vjp"]["atol"])
    try:
        out, handle = adapter.forward(f, case.arrays["x"], case.meta["axis"], _params(case.meta))
        y, to_user, extra = _align(case, out)
        vjps = None
        if not (adapter.name == "numpy" and adapter.vjp_fn is None):
            vjps = [np.asarray(adapter.vjp(handle, to_user(g))) for g in case.arrays["g"]]
    except Exception as exc:                           # report, never crash the table
        res.error, res.reasons = f"raised {type(exc).__name__}: {exc}"[:200], ["error"]
        return res
    try:
        res.nonfinite = int(np.sum(~np.isfinite(np.asarray(y, dtype=np.float64))))
        res.fwd_err = _max_err(y, case.arrays["y"])
        res.support_mismatches = extra + int(np.sum(
            _support(case.mapping, np.asarray(y)) != _support(case.mapping, case.arrays["y"])))
        if vjps is not None:
            res.nonfinite += sum(int(np.sum(~np.isfinite(v.astype(np.float64)))) for v in vjps)
            res.vjp_err = max(_max_err(v, e) for v, e in zip(vjps, case.arrays["vjp"]))
            res.vjp_ulps = res.vjp_err / (eps * tol["vjp"]["scale"])
    except (ValueError, TypeError) as exc:            # wrong shape or not an array
        res.error, res.reasons = f"output: {exc}"[:200], ["shape"]
        return res
    res.fwd_ulps = res.fwd_err / (eps * tol["forward"]["scale"])
    found = [why for why, bad in (
        ("forward", not res.fwd_err <= res.fwd_atol),
        ("vjp", res.vjp_err is not None and not res.vjp_err <= res.vjp_atol),
        ("support", res.support_mismatches > 0), ("nonfinite", res.nonfinite > 0)) if bad]
    fatal = {"forward", "vjp", "nonfinite"} | _SUPPORT_FATAL.get(case.mapping, set())
    res.reasons = [w for w in found if w in fatal]
    res.notes = [w for w in found if w not in fatal]
    if np.asarray(y).dtype != case.arrays["y"].dtype:
        res.notes.append(f"returned {np.asarray(y).dtype}")
    res.ok = not res.reasons
    return res


def run(mapping, impl, vjp=None, framework="numpy", golden_dir=None, cases=None, tol_scale=1.0,
        jit=True):
    """Cross-check ``impl`` (a callable or ``"module:function"``) on ``mapping``.

    vjp : numpy framework only, a callable or ``"module:function"`` (see module doc).
    golden_dir : read the cases from a directory written by ``python -m refimpl.golden``
        (default: build the current version in memory).
    cases : glob(s) over case names.  tol_scale : multiplies every tolerance.
    jit : jax only: run the function under ``jax.jit`` (eagerly if it cannot be traced).
    Returns a :class:`Report` (``report.ok``, ``report.table()``, ``report.to_dict()``).
    """
    if mapping not in golden.MAPPINGS:
        raise ValueError(f"mapping must be one of {golden.MAPPINGS}, got {mapping!r}")
    if framework not in FRAMEWORKS:
        raise ValueError(f"framework must be one of {FRAMEWORKS}, got {framework!r}")
    label = impl if isinstance(impl, str) else getattr(impl, "__qualname__", repr(impl))
    if impl == "refimpl":
        if framework != "numpy":
            raise ValueError("--impl refimpl runs with --framework numpy")
        impl, vjp = REFERENCE[mapping]
    if vjp is not None:
        label += " vjp=" + (vjp if isinstance(vjp, str) else getattr(vjp, "__qualname__", repr(vjp)))
    selected = golden.read_golden(golden_dir, mapping) if golden_dir else golden.cases(mapping)
    if cases:
        import fnmatch
        selected = [c for c in selected if any(fnmatch.fnmatchcase(c.name, p) for p in cases)]
    if not selected:
        raise ValueError(f"no golden case of mapping {mapping!r} matches {cases}")
    version = selected[0].meta["golden_version"]
    x64 = any(c.meta["dtype"] == "float64" for c in selected)
    adapter, f = _adapter(framework, vjp, x64, jit), load_callable(impl)
    with np.errstate(all="ignore"):                   # non-finite values are reported instead
        results = [check_case(c, f, adapter, tol_scale) for c in selected]
    return Report(mapping, label, framework, version, results)


# ------------------------------------------------ refimpl as a reference

def topk_bits(t, k):
    """refimpl's top-k sparsemax over bit-vectors: ``(bits (N, k, D), probs (N, k))``."""
    from .sparsemax import sparsemax
    from .topk import kbest_bitvectors
    bits, scores = kbest_bitvectors(t, k)
    return bits, sparsemax(scores)


def topk_bits_vjp(y, g):
    """``Σ_j (J^T g)_j a_{z_j}`` from ``y = (bits, probs)``."""
    from .sparsemax import sparsemax_vjp
    bits, probs = y
    return np.einsum("nk,nkd->nd", sparsemax_vjp(probs, g), bits.astype(probs.dtype))


def _sparsemap(t, B=None):
    from .oracles import bitvector_oracle, budget_oracle
    from .sparsemap import sparsemap
    return sparsemap(t, bitvector_oracle if B is None else budget_oracle(B))


def sparsemap_marginals(t, B=None):
    """refimpl's SparseMAP marginals ``mu`` (bit-vectors, or with budget ``B``)."""
    return _sparsemap(t, B).marginals


def sparsemap_marginals_vjp(t, mu, g, B=None):
    """VJP of ``<mu, g>`` w.r.t. ``t`` through :func:`refimpl.sparsemap_vjp`:
    ``<mu, g> = Σ_z ξ_z <a_z, g>``, so ``grad_weights = A_S^T g``."""
    from .sparsemap import sparsemap_vjp
    res = _sparsemap(t, B)
    return sparsemap_vjp(res, np.einsum("nsd,nd->ns", res.vertices, g.astype(res.vertices.dtype)))


REFERENCE = {
    "sparsemax": ("refimpl:sparsemax", "refimpl:sparsemax_vjp"),
    "topk_sparsemax": ("refimpl:topk_sparsemax", "refimpl:topk_sparsemax_vjp"),
    "topk_bits": (topk_bits, topk_bits_vjp),
    "sparsemap_bits": (sparsemap_marginals, sparsemap_marginals_vjp),
    "sparsemap_budget": (sparsemap_marginals, sparsemap_marginals_vjp),
}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m refimpl.crosscheck",
                                description="Check a sparsemax / top-k / SparseMAP implementation "
                                            "against the golden cases (docs/crosscheck.md).")
    p.add_argument("--mapping", required=True, choices=golden.MAPPINGS)
    p.add_argument("--impl", required=True,
                   help="MODULE:FUNCTION or FILE.py:FUNCTION of the forward; 'refimpl' for ours")
    p.add_argument("--vjp", help="numpy framework: MODULE:FUNCTION of the VJP (else forward only)")
    p.add_argument("--framework", choices=FRAMEWORKS, default="numpy")
    p.add_argument("--golden", help="directory from `python -m refimpl.golden` (default: built in memory)")
    p.add_argument("--cases", nargs="*", help="glob(s) over case names")
    p.add_argument("--tol-scale", type=float, default=1.0, help="multiply every tolerance")
    p.add_argument("--no-jit", action="store_true", help="jax: run op by op, not under jax.jit")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    args = p.parse_args(argv)
    try:
        report = run(args.mapping, args.impl, args.vjp, args.framework, args.golden,
                     args.cases, args.tol_scale, jit=not args.no_jit)
    except (ImportError, AttributeError, ValueError) as exc:
        p.exit(2, f"crosscheck: {type(exc).__name__}: {exc}\n")
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
