"""Cross-checker, part 2: comparing one case's output and VJPs with the golden values.

:func:`check_case` runs one case through an adapter (:mod:`refimpl._crosscheck_load`)
and returns a :class:`CaseResult`: forward and VJP errors (absolute and in
ulps), the support detail (spurious and missing entries), non-finite values,
and why the case failed.  Tolerances come from :class:`Tolerances`: the
case's exact budget unless the user overrides the forward or VJP atol/rtol.
"""
import math
from dataclasses import asdict, dataclass, field, fields
from typing import List, Optional

import numpy as np

from ._crosscheck_load import UsageError


@dataclass
class Tolerances:
    """How close is close enough.  ``None`` atol: the case's budget
    (``tolerance.*.atol`` in the golden index) times ``scale``.  An element
    passes when ``|got - exact| <= atol + rtol * |exact|``."""
    fwd_atol: Optional[float] = None
    fwd_rtol: Optional[float] = None
    vjp_atol: Optional[float] = None
    vjp_rtol: Optional[float] = None
    scale: float = 1.0

    def __post_init__(self):
        for name, flag in (("fwd_atol", "--fwd-atol"), ("fwd_rtol", "--fwd-rtol"),
                           ("vjp_atol", "--vjp-atol"), ("vjp_rtol", "--vjp-rtol"),
                           ("scale", "--tol-scale")):
            v = getattr(self, name)
            if v is None:
                continue                                   # the default
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise UsageError(f"{flag} must be a finite number > 0, got {v!r}")

    def atol(self, which, case):
        given = self.fwd_atol if which == "forward" else self.vjp_atol
        return float(given) if given is not None else self.scale * case.meta["tolerance"][which]["atol"]

    def rtol(self, which):
        given = self.fwd_rtol if which == "forward" else self.vjp_rtol
        return 0.0 if given is None else float(given)


@dataclass
class CaseResult:
    """Outcome of one case.  Errors are max absolute errors (``inf`` when a
    value is not finite); ``*_ulps`` divide them by ``eps(dtype) * scale``.

    spurious : finite entries off the exact answer's zero set (sparsemax-type: nonzero
        where the exact value is 0; SparseMAP: strictly inside (0, 1) where the
        exact marginal is 0 or 1); ``max_spurious`` the largest such deviation.
    missing : entries the exact answer has and the output lacks (sparsemax-type:
        0 where the exact value is positive; SparseMAP: at 0 or 1 where the
        exact marginal is free).
    face : for implementations that report their active set (``f.spans_face``):
        ``"R/N"`` rows whose active set does not span the minimal face."""
    name: str
    ok: bool
    fwd_err: float = float("nan")
    fwd_ulps: float = float("nan")
    vjp_err: Optional[float] = None
    vjp_ulps: Optional[float] = None
    fwd_atol: Optional[float] = None
    fwd_rtol: float = 0.0
    vjp_atol: Optional[float] = None
    vjp_rtol: float = 0.0
    support_mismatches: int = 0
    spurious: int = 0
    missing: int = 0
    max_spurious: float = 0.0
    nonfinite: int = 0
    dtype: Optional[str] = None
    returned_dtype: Optional[str] = None
    face: Optional[str] = None
    reasons: List[str] = field(default_factory=list)    # why it failed
    notes: List[str] = field(default_factory=list)      # reported, not failed
    error: Optional[str] = None
    error_hint: Optional[str] = None                    # framework suggested by the exception

    def to_dict(self):
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d):
        names = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in names})
        for k in ("fwd_err", "fwd_ulps"):
            if getattr(out, k) is None:
                setattr(out, k, float("inf") if out.error is None else float("nan"))
        return out


def _params(meta):
    return tuple(meta[k] for k in ("k", "budget") if k in meta)


def _align(case, out):
    """User output -> (y in the golden layout, g_golden -> g_user, probabilities of
    user bit-vectors that are not among the k best).

    For topk_bits the user's bit-vectors are matched to the golden ones by
    value; unmatched golden rows get probability 0."""
    if case.mapping != "topk_bits":
        return np.asarray(out), (lambda g: g), np.zeros(0)
    bits_u, probs_u = (np.asarray(o) for o in out)
    gold = case.arrays["bits"].astype(bool)
    N, k = gold.shape[:2]
    perm = np.full(probs_u.shape, -1)
    y, extra = np.zeros((N, k), dtype=probs_u.dtype), []
    for n in range(N):
        for j in range(probs_u.shape[1]):
            hit = np.flatnonzero((gold[n] == (bits_u[n, j] > 0.5)).all(axis=-1))
            if hit.size:
                perm[n, j], y[n, hit[0]] = hit[0], probs_u[n, j]
            elif probs_u[n, j] != 0:
                extra.append(float(probs_u[n, j]))

    def to_user(g):
        return np.where(perm >= 0, np.take_along_axis(g, np.maximum(perm, 0), axis=1), 0).astype(g.dtype)
    return y, to_user, np.asarray(extra)


# A support mismatch fails a case only where the output's zero pattern *is* the
# Jacobian's support (sparsemax-type outputs, exact zeros by construction).
# SparseMAP marginals are sums of weights, so 1 - 2^-53 in place of 1 is a
# rounding, not a different Jacobian: reported, not failed.
_SUPPORT_FATAL = {m: {"support"} for m in ("sparsemax", "topk_sparsemax", "topk_bits")}


def support_detail(mapping, y, exact):
    """``(spurious, missing, max_spurious)`` of ``y`` against the exact output."""
    y, exact = np.asarray(y, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    finite = np.isfinite(y)                        # NaN / inf are counted as non-finite instead
    if mapping.startswith("sparsemap"):
        at_bound = (exact == 0) | (exact == 1)
        spur = finite & at_bound & (y > 0) & (y < 1)
        miss = finite & ~at_bound & ((y <= 0) | (y >= 1))
    else:
        spur = finite & (exact == 0) & (y != 0)
        miss = finite & (exact > 0) & (y <= 0)
    dev = np.abs(y - exact)[spur]
    return int(spur.sum()), int(miss.sum()), float(dev.max(initial=0.0))


def _errors(got, exp, atol, rtol):
    """``(max |got - exp|, all within atol + rtol |exp|)``; inf when not finite."""
    got = np.asarray(got, dtype=np.float64)
    if got.shape != exp.shape:
        raise ValueError(f"shape {got.shape}, expected {exp.shape}")
    exp = exp.astype(np.float64)
    if not np.all(np.isfinite(got)):
        return float("inf"), False
    diff = np.abs(got - exp)
    return float(diff.max(initial=0.0)), bool(np.all(diff <= atol + rtol * np.abs(exp)))


def _nonfinite(a):
    return int(np.sum(~np.isfinite(np.asarray(a, dtype=np.float64))))


def _face(f, case):
    """``"R/N"`` rows where ``f.spans_face`` says the active set misses the face, or None."""
    spans = getattr(f, "spans_face", None)
    if spans is None or not case.mapping.startswith("sparsemap"):
        return None
    rows = spans(case.arrays["x"].copy(), *_params(case.meta))
    if rows is None:
        return None
    rows = np.asarray(rows, dtype=bool).reshape(-1)
    return f"{int((~rows).sum())}/{rows.size}"


def check_case(case, f, adapter, tol=None, hint=None):
    """Run one case; return a :class:`CaseResult`.

    tol : :class:`Tolerances` (default: the case's exact budgets).
    hint : ``exc -> str or None``, a suggestion recorded when the function raises."""
    tol = Tolerances() if tol is None else tol
    eps = float(np.finfo(case.meta["dtype"]).eps)
    res = CaseResult(case.name, ok=False, fwd_atol=tol.atol("forward", case), fwd_rtol=tol.rtol("forward"),
                     vjp_atol=tol.atol("vjp", case), vjp_rtol=tol.rtol("vjp"), dtype=case.meta["dtype"])
    try:
        out, handle = adapter.forward(f, case.arrays["x"], case.meta["axis"], _params(case.meta))
        y, to_user, extra = _align(case, out)
        vjps = None
        if not (adapter.name == "numpy" and adapter.vjp_fn is None):
            vjps = [np.asarray(adapter.vjp(handle, to_user(g))) for g in case.arrays["g"]]
        res.face = _face(f, case)
    except Exception as exc:                           # report, never crash the table
        res.error, res.reasons = f"raised {type(exc).__name__}: {exc}"[:200], ["error"]
        res.error_hint = hint(exc) if hint else None
        return res
    try:
        res.returned_dtype = np.asarray(y).dtype.name
        res.nonfinite = _nonfinite(y)
        res.fwd_err, fwd_ok = _errors(y, case.arrays["y"], res.fwd_atol, res.fwd_rtol)
        res.spurious, res.missing, res.max_spurious = support_detail(case.mapping, y, case.arrays["y"])
        if extra.size:
            res.spurious += extra.size
            res.max_spurious = max(res.max_spurious, float(np.abs(extra).max()))
        res.support_mismatches = res.spurious + res.missing
        vjp_ok = True
        if vjps is not None:
            res.nonfinite += sum(_nonfinite(v) for v in vjps)
            errs = [_errors(v, e, res.vjp_atol, res.vjp_rtol) for v, e in zip(vjps, case.arrays["vjp"])]
            res.vjp_err, vjp_ok = max(e for e, _ in errs), all(ok for _, ok in errs)
            res.vjp_ulps = res.vjp_err / (eps * case.meta["tolerance"]["vjp"]["scale"])
    except (ValueError, TypeError) as exc:            # wrong shape or not an array
        res.error, res.reasons = f"output: {exc}"[:200], ["shape"]
        return res
    res.fwd_ulps = res.fwd_err / (eps * case.meta["tolerance"]["forward"]["scale"])
    found = [why for why, bad in (
        ("forward", not fwd_ok), ("vjp", not vjp_ok),
        ("support", res.support_mismatches > 0), ("nonfinite", res.nonfinite > 0)) if bad]
    fatal = {"forward", "vjp", "nonfinite"} | _SUPPORT_FATAL.get(case.mapping, set())
    res.reasons = [w for w in found if w in fatal]
    res.notes = [w for w in found if w not in fatal]
    if res.returned_dtype != case.arrays["y"].dtype.name:
        res.notes.append(f"returned {res.returned_dtype}")
    if res.face is not None and not res.face.startswith("0/"):
        res.notes.append(f"active set misses the face on {res.face} rows")
    res.ok = not res.reasons
    return res
