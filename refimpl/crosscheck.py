"""Check another implementation against the golden cases (:mod:`refimpl.golden`).

    python -m refimpl.crosscheck --mapping sparsemax --impl entmax:sparsemax --framework torch
    python -m refimpl.crosscheck --mapping sparsemax --impl mymod:sparsemax --vjp mymod:sparsemax_vjp

Runs every golden case of the mapping through the user's forward function and
(torch, jax: the framework's own autodiff; numpy: the ``--vjp`` function, if
given) its VJP for the case's fixed cotangents, and prints one line per case
as it completes: forward and VJP errors (in ulps of the case's scale, and
absolute), spurious and missing support entries, non-finite values; then a
summary and one-line hints.  ``--isolate`` runs the cases in a child process,
so that a crash or a hang is that case's failure.  Exit status 0 when every
case agrees within its tolerances, 1 otherwise, 2 for a usage error (one
line).  Calling conventions (docs/crosscheck.md):

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
* SparseMAP: ``f.spans_face(t, *params) -> (N,) bool``, when present, says on
  which rows the implementation's active set spans the marginals' minimal face.

The pieces: loading and framework adapters (``_crosscheck_load``), comparison
(``_crosscheck_compare``), report and hints (``_crosscheck_report``),
``--isolate`` (``_crosscheck_isolate``), refimpl as a reference
(``_crosscheck_reference``).
"""
import argparse
import dataclasses
import fnmatch
import json
import sys
import tempfile

import numpy as np

from . import golden
from ._crosscheck_compare import CaseResult, Tolerances, check_case, support_detail
from ._crosscheck_load import FRAMEWORKS, UsageError, check_not_a_class, load_callable, make_adapter
from ._crosscheck_reference import (REFERENCE, face_spanned, sparsemap_marginals,
                                    sparsemap_marginals_vjp, topk_bits, topk_bits_vjp)
from ._crosscheck_report import Formatter, Report, framework_hint, hints

__all__ = ["run", "CaseResult", "Report", "Tolerances", "UsageError", "load_callable", "check_case",
           "support_detail", "face_spanned", "REFERENCE", "FRAMEWORKS", "main", "topk_bits",
           "topk_bits_vjp", "sparsemap_marginals", "sparsemap_marginals_vjp"]


def _label(obj):
    return obj if isinstance(obj, str) else getattr(obj, "__qualname__", repr(obj))


def _spec(obj, what):
    """A ``MODULE:NAME`` string a child process can load (``--isolate``)."""
    if obj is None or isinstance(obj, str):
        return obj
    mod, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", "")
    if mod and mod != "__main__" and "<" not in name:
        return f"{mod}:{name}"
    raise UsageError(f"{what}: --isolate (isolate=True) needs MODULE:FUNCTION or FILE.py:FUNCTION, "
                     f"not the object {name or obj!r}")


def _select(mapping, golden_dir, patterns):
    if golden_dir:
        try:
            selected = golden.read_golden(golden_dir, mapping)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"--golden {golden_dir}: not a golden directory (write one with "
                             f"python -m refimpl.golden --out {golden_dir}): "
                             f"{type(exc).__name__}: {exc}"[:300]) from None
        if not selected:
            raise UsageError(f"--golden {golden_dir}: it holds no case of mapping {mapping!r}")
    else:
        selected = golden.cases(mapping)
    if patterns:
        selected = [c for c in selected if any(fnmatch.fnmatchcase(c.name, p) for p in patterns)]
    if not selected:
        raise UsageError(f"--cases: no golden case of mapping {mapping!r} matches {list(patterns)}")
    return selected


def run(mapping, impl, vjp=None, framework="numpy", golden_dir=None, cases=None, tol_scale=1.0,
        jit=True, tol=None, isolate=False, case_timeout=None, stream=None):
    """Cross-check ``impl`` (a callable or ``"module:function"``) on ``mapping``.

    vjp : numpy framework only, a callable or ``"module:function"`` (see module doc).
    golden_dir : read the cases from a directory written by ``python -m refimpl.golden``
        (default: build the current version in memory).
    cases : glob(s) over case names.
    tol : :class:`Tolerances` (forward / VJP atol and rtol); ``tol_scale`` multiplies
        the cases' own budgets where ``tol`` gives no atol.
    jit : jax only: run the function under ``jax.jit`` (eagerly if it cannot be traced).
    isolate : run the cases in a child process (impl and vjp as strings, or importable
        module-level functions); a crash or a case past ``case_timeout`` seconds
        (default 60) fails that case only.
    stream : a text file (e.g. ``sys.stdout``): the table is written to it line by line
        as the cases complete, then the summary and hints.
    Returns a :class:`Report` (``report.ok``, ``report.table()``, ``report.to_dict()``).
    Raises :class:`UsageError` for a bad argument.
    """
    if mapping not in golden.MAPPINGS:
        raise UsageError(f"--mapping must be one of {golden.MAPPINGS}, got {mapping!r}")
    if framework not in FRAMEWORKS:
        raise UsageError(f"--framework must be one of {FRAMEWORKS}, got {framework!r}")
    if tol is None or tol_scale != 1.0:                # Tolerances validates every value
        tol = dataclasses.replace(tol or Tolerances(), scale=tol_scale)
    if case_timeout is not None:
        if not (isinstance(case_timeout, (int, float)) and case_timeout > 0):
            raise UsageError(f"--case-timeout must be a number of seconds > 0, got {case_timeout!r}")
        isolate = True
    label = _label(impl)
    if isinstance(impl, str) and impl == "refimpl":
        if framework != "numpy":
            raise UsageError("--impl refimpl runs with --framework numpy")
        if vjp is not None:
            raise UsageError("--impl refimpl brings its own VJP: drop --vjp")
        impl, vjp = REFERENCE[mapping]
    if vjp is not None:
        label += " vjp=" + _label(vjp)
    selected = _select(mapping, golden_dir, cases)
    version = selected[0].meta["golden_version"]
    x64 = any(c.meta["dtype"] == "float64" for c in selected)
    f = load_callable(impl)
    check_not_a_class(f, impl)
    adapter = make_adapter(framework, vjp, x64, jit)
    fmt = Formatter(mapping, label, framework, version, [c.name for c in selected])
    results = []

    def emit(res):
        results.append(res)
        if stream is not None:
            stream.write(fmt.line(res) + "\n")
            stream.flush()

    if stream is not None:
        stream.write("\n".join(fmt.head()) + "\n")
        stream.flush()
    if isolate:
        _run_isolated(mapping, impl, vjp, framework, golden_dir, selected, x64, jit, tol,
                      60.0 if case_timeout is None else float(case_timeout), emit)
    else:
        with np.errstate(all="ignore"):               # non-finite values are reported instead
            for c in selected:
                emit(check_case(c, f, adapter, tol, hint=lambda e: framework_hint(e, framework)))
    report = Report(mapping, label, framework, version, results, isolate=isolate)
    report.hints = hints(report, getattr(adapter, "x64", True))
    if stream is not None:
        stream.write("\n".join(fmt.tail(report)) + "\n")
        stream.flush()
    return report


def _run_isolated(mapping, impl, vjp, framework, golden_dir, selected, x64, jit, tol, timeout, emit):
    from ._crosscheck_isolate import run_isolated
    config = {"mapping": mapping, "impl": _spec(impl, "--impl"), "vjp": _spec(vjp, "--vjp"),
              "framework": framework, "x64": x64, "jit": jit,
              "tol": dataclasses.asdict(tol)}
    with tempfile.TemporaryDirectory(prefix="crosscheck-") as tmp:
        if not golden_dir:                             # the worker reads the selection from files
            golden.write_golden(tmp, selected)
        config["golden_dir"] = golden_dir or tmp
        run_isolated(config, [c.name for c in selected], timeout, emit)


def _positive(flag):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number > 0, got {text!r}") from None
        if not (v > 0 and np.isfinite(v)):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number > 0, got {text!r}")
        return v
    return parse


class _Parser(argparse.ArgumentParser):
    def error(self, message):                          # one line, exit 2
        self.exit(2, f"crosscheck: {message} (see --help)\n")


def _parser():
    p = _Parser(prog="python -m refimpl.crosscheck",
                description="Check a sparsemax / top-k / SparseMAP implementation "
                            "against the golden cases (docs/crosscheck.md).")
    p.add_argument("--mapping", required=True, choices=golden.MAPPINGS)
    p.add_argument("--impl", required=True,
                   help="MODULE:FUNCTION or FILE.py:FUNCTION of the forward; 'refimpl' for ours")
    p.add_argument("--vjp", help="numpy framework: MODULE:FUNCTION of the VJP (else forward only)")
    p.add_argument("--framework", choices=FRAMEWORKS, default="numpy")
    p.add_argument("--golden", help="directory from `python -m refimpl.golden` (default: built in memory)")
    p.add_argument("--cases", nargs="*", help="glob(s) over case names")
    for which, what in (("fwd", "forward output"), ("vjp", "VJP")):
        p.add_argument(f"--{which}-atol", type=_positive(f"--{which}-atol"), metavar="X",
                       help=f"absolute tolerance of the {what} (default: each case's exact budget)")
        p.add_argument(f"--{which}-rtol", type=_positive(f"--{which}-rtol"), metavar="X",
                       help=f"relative tolerance of the {what}, added to the atol (default 0)")
    p.add_argument("--tol-scale", type=_positive("--tol-scale"), default=1.0,
                   help="multiply the cases' budgets (where no --*-atol is given)")
    p.add_argument("--isolate", action="store_true",
                   help="run the cases in a child process: a crash or hang fails that case only")
    p.add_argument("--case-timeout", type=_positive("--case-timeout"), metavar="SECONDS",
                   help="with --isolate (implied): a case running longer fails (default 60)")
    p.add_argument("--no-jit", action="store_true", help="jax: run op by op, not under jax.jit")
    p.add_argument("--json", action="store_true", help="print a JSON object at the end instead of the table")
    return p


def main(argv=None):
    p = _parser()
    args = p.parse_args(argv)
    tol = Tolerances(args.fwd_atol, args.fwd_rtol, args.vjp_atol, args.vjp_rtol, args.tol_scale)
    try:
        report = run(args.mapping, args.impl, args.vjp, args.framework, args.golden, args.cases,
                     jit=not args.no_jit, tol=tol, isolate=args.isolate,
                     case_timeout=args.case_timeout, stream=None if args.json else sys.stdout)
    except UsageError as exc:
        p.exit(2, f"crosscheck: {exc}\n")
    if args.json:
        print(json.dumps(report.to_dict(), indent=1))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

