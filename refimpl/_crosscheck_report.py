"""Cross-checker, part 4: the report (streamed table, summary, JSON) and the hints.

A hint is one line after the summary that names the likely mistake and the
option that fixes it: arrays of the wrong framework, jax's x64 mode against
the selected dtypes, an active set that does not span the SparseMAP face.
"""
import os
import re
from dataclasses import dataclass, field

__all__ = ["Report", "Formatter", "framework_hint", "hints"]


@dataclass
class Report:
    mapping: str
    impl: str
    framework: str
    golden_version: str
    results: list
    hints: list = field(default_factory=list)
    isolate: bool = False

    @property
    def ok(self):
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def failed(self):
        return [r.name for r in self.results if not r.ok]

    def to_dict(self):
        return {"mapping": self.mapping, "impl": self.impl, "framework": self.framework,
                "golden_version": self.golden_version, "isolate": self.isolate, "ok": self.ok,
                "n_cases": len(self.results), "failed": self.failed, "hints": self.hints,
                "cases": [r.to_dict() for r in self.results]}

    def table(self):
        """The human-readable table: header, one line per case, summary, hints."""
        fmt = Formatter(self.mapping, self.impl, self.framework, self.golden_version,
                        [r.name for r in self.results])
        return "\n".join(fmt.head() + [fmt.line(r) for r in self.results] + fmt.tail(self))


class Formatter:
    """Fixed-width lines, so that each case's line can be printed as it completes."""

    def __init__(self, mapping, impl, framework, version, names):
        self.mapping, self.impl, self.framework, self.version = mapping, impl, framework, version
        self.n, self.w = len(names), max([len(n) for n in names] + [4])

    def head(self):
        return [f"crosscheck {self.mapping}: impl={self.impl} framework={self.framework} "
                f"golden={self.version} ({self.n} cases)",
                f"{'case':<{self.w}}  status  {'fwd err ulps / abs':<21}  {'vjp err ulps / abs':<21}  "
                f"spur  miss  max spur  nonfinite  note"]

    def line(self, r):
        vjp = "-" if r.vjp_err is None else _err(r.vjp_ulps, r.vjp_err)
        note = r.error or ",".join(r.reasons + [f"({n})" for n in r.notes])
        spur = f"{r.max_spurious:.2g}" if r.spurious else "-"
        return (f"{r.name:<{self.w}}  {'ok' if r.ok else 'FAIL':<6}  {_err(r.fwd_ulps, r.fwd_err):<21}  "
                f"{vjp:<21}  {r.spurious:>4}  {r.missing:>4}  {spur:>8}  {r.nonfinite:>9}  {note}").rstrip()

    def tail(self, report):
        n_ok = sum(r.ok for r in report.results)
        tail = "all agree" if report.ok else "FAILED: " + ", ".join(report.failed)
        return [f"summary: {n_ok}/{len(report.results)} cases ok; {tail}"] + [
            f"hint: {h}" for h in report.hints]


def _err(ulps, err):
    if err is None or err != err:
        return "-"
    return f"{ulps:.3g} / {err:.2g}"


# ------------------------------------------------------------------ hints

# Messages that say "this function wanted another framework's arrays".
_WANTS = [
    ("torch", re.compile(r"unexpected keyword argument 'dim'|must be Tensor|Tensor, not|"
                         r"expected Tensor|object has no attribute '(dim|detach|clamp|masked_fill|"
                         r"unsqueeze|size\(\)|new_zeros|new_full|gather|scatter|index_select|"
                         r"requires_grad|is_floating_point)'")),
    ("jax", re.compile(r"not a valid JAX type|jax\.Array|JAX array|TracerArrayConversion|"
                       r"ConcretizationTypeError")),
    ("numpy", re.compile(r"can't call numpy\(\) on Tensor|Can't call numpy\(\)|"
                         r"object has no attribute '(astype|copy\(\))'|use Tensor\.cpu\(\)")),
]


def _frames(exc):
    tb, out = exc.__traceback__, []
    while tb is not None:
        out.append(tb.tb_frame.f_code.co_filename.replace(os.sep, "/"))
        tb = tb.tb_next
    return out


def framework_hint(exc, framework):
    """The framework the exception suggests the function expects (None: no guess)."""
    text = f"{type(exc).__name__}: {exc}"
    for name, pattern in _WANTS:
        if name != framework and pattern.search(text):
            return name
    for path in reversed(_frames(exc)):           # deepest frame in a framework's own code
        for name in ("torch", "jax"):
            if name != framework and (f"/{name}/" in path or f"/{name}lib/" in path):
                return name
    return None


def hints(report, x64):
    """One-line hints for the report (a list of strings)."""
    out, res = [], report.results
    errs = [r for r in res if r.error and r.reasons == ["error"]]
    wanted = sorted({r.error_hint for r in errs if r.error_hint})
    for name in wanted:
        n = sum(r.error_hint == name for r in errs)
        out.append(f"{n} case(s) raised on {report.framework} inputs in a way that suggests the "
                   f"function expects {name} arrays: try --framework {name}")
    if report.framework == "jax":
        f32 = [r for r in res if r.dtype == "float32"]
        f64 = [r for r in res if r.dtype == "float64"]
        if x64 and f32 and any(r.error for r in f32) and not all(r.error for r in f64):
            n = sum(bool(r.error) for r in f32)
            out.append(f"{n} float32 case(s) raised with jax_enable_x64 on (it is switched on for "
                       f"the float64 cases): run them alone, without x64, with --cases '*/f32/*'")
        if f64 and (not x64 or any(r.returned_dtype == "float32" for r in f64)):
            out.append("float64 cases ran without jax_enable_x64 (they came back float32 or "
                       "raised): check the float32 cases alone with --cases '*/f32/*', and the "
                       "float64 ones with x64 on (JAX_ENABLE_X64=1, or no jax.config change in "
                       "the function)")
    missed = [r for r in res if r.face and not r.face.startswith("0/")]
    if missed:
        rows = sum(int(r.face.split("/")[0]) for r in missed)
        total = sum(int(r.face.split("/")[1]) for r in missed)
        out.append(f"the implementation's own active set does not span the marginals' minimal face "
                   f"on {rows}/{total} rows of {len(missed)} case(s): there a VJP that holds the "
                   f"active set fixed is not the derivative of the marginals (docs/crosscheck.md, "
                   f"'SparseMAP: the active set and the face')")
    return out
