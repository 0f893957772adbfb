"""The cross-checker where users trip: results that survive a crash (streaming,
--isolate), hints, separate forward/VJP tolerances, the support detail, and
one-line usage errors (exit 2) instead of tracebacks."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import refimpl
from refimpl import _crosscheck_report as R
from refimpl import crosscheck as cc

ROOT = Path(__file__).resolve().parents[1]

CRASHY = '''
import ctypes, os, time
import numpy as np
from refimpl import sparsemax

def aborts_at_k1(x):
    """Aborts the process on the K = 1 cases, like a C++ kernel's free(): invalid pointer."""
    if x.shape[-1] == 1:
        os.write(2, b"free(): invalid pointer\\n")
        os.abort()
    return sparsemax(x)

def segfaults_at_k2(x):
    if x.shape[-1] == 2:
        ctypes.string_at(0)
    return sparsemax(x)

def hangs_at_k2(x):
    if x.shape[-1] == 2:
        time.sleep(600)
    print("a print from the user's function")
    return sparsemax(x)
'''


@pytest.fixture
def crashy(tmp_path):
    path = tmp_path / "crashy.py"
    path.write_text(CRASHY)
    return path


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "refimpl.crosscheck", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


F64 = [c.name for c in refimpl.golden.cases("sparsemax", ["sparsemax/f64/*"])]


# -------------------------------------------------------- crash and stream

def test_without_isolate_the_lines_before_a_crash_are_on_stdout(crashy):
    proc = _cli("--mapping", "sparsemax", "--impl", f"{crashy}:aborts_at_k1", "--cases", "sparsemax/f64/*")
    assert proc.returncode < 0 or proc.returncode == 134             # SIGABRT
    lines = proc.stdout.splitlines()
    k1 = F64.index("sparsemax/f64/K1")
    assert k1 > 3 and [ln.split()[0] for ln in lines[2:]] == F64[:k1]   # header, then each case
    assert all(" ok " in ln for ln in lines[2:])
    assert "summary" not in proc.stdout


def test_isolate_reports_the_crash_and_runs_the_rest(crashy):
    proc = _cli("--mapping", "sparsemax", "--impl", f"{crashy}:aborts_at_k1", "--isolate")
    assert proc.returncode == 1, proc.stderr
    lines = {ln.split()[0]: ln for ln in proc.stdout.splitlines()[2:-1]}
    assert len(lines) == 34
    for name in ("sparsemax/f64/K1", "sparsemax/f32/K1"):
        assert "FAIL" in lines[name] and "crashed: killed by SIGABRT (exit 134)" in lines[name]
        assert "free(): invalid pointer" in lines[name]
    summary = proc.stdout.splitlines()[-1]
    assert summary == "summary: 32/34 cases ok; FAILED: sparsemax/f64/K1, sparsemax/f32/K1"


def test_isolate_segfault_and_timeout(crashy):
    report = cc.run("sparsemax", f"{crashy}:segfaults_at_k2", cases=["*/f64/K*", "*/f64/random-K5"],
                    isolate=True)
    assert report.failed == ["sparsemax/f64/K2"]
    assert "SIGSEGV" in report.results[2].error
    report = cc.run("sparsemax", f"{crashy}:hangs_at_k2", cases=["*/f64/K*", "*/f64/random-K5"],
                    case_timeout=3)
    assert [r.name for r in report.results] == ["sparsemax/f64/random-K5", "sparsemax/f64/K1",
                                                "sparsemax/f64/K2"]
    assert report.failed == ["sparsemax/f64/K2"] and report.isolate
    assert "timed out after 3 s" in report.results[2].error


def test_streaming_writes_each_line_as_it_completes():
    seen = []

    class Stream:
        def write(self, text):
            seen.append(text)

        def flush(self):
            seen.append("<flush>")

    report = cc.run("sparsemax", "refimpl", cases=["*/f64/K*"], stream=Stream())
    assert report.ok
    assert seen[1::2] == ["<flush>"] * (len(seen) // 2)               # a flush after each write
    assert seen[2].startswith("sparsemax/f64/K1 ") and seen[4].startswith("sparsemax/f64/K2 ")
    assert seen[-2].startswith("summary: 2/2")


def test_isolate_needs_importable_functions():
    with pytest.raises(cc.UsageError, match="isolate"):
        cc.run("sparsemax", lambda x: x, isolate=True)
    assert cc.run("sparsemax", "refimpl", cases=["*/f32/K2"], isolate=True).ok


# ------------------------------------------------------------------ hints

class SparsemaxModule:
    """Like an nn.Module class: the class is not the function."""

    def __init__(self, dim=-1):
        self.dim = dim

    def __call__(self, x):
        return refimpl.sparsemax(x, axis=self.dim)


sparsemax_instance = SparsemaxModule()


def torch_style(x):
    """A torch function given numpy arrays: ``max(dim=...)``."""
    return refimpl.sparsemax(x - x.max(dim=-1, keepdim=True))


def test_hint_class_given_where_a_function_is_expected(capsys):
    with pytest.raises(SystemExit) as exc:
        cc.main(["--mapping", "sparsemax", "--impl", f"{__file__}:SparsemaxModule"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "is a class, not a function: pass an instance or a function" in err
    assert "add the line `f = SparsemaxModule()`" in err
    with pytest.raises(SystemExit):
        cc.main(["--mapping", "sparsemax", "--impl", "refimpl.golden:Case"])      # a module's class
    err = capsys.readouterr().err
    assert "`import refimpl.golden; f = refimpl.golden.Case()`" in err and "--impl adapter.py:f" in err
    assert cc.run("sparsemax", f"{__file__}:sparsemax_instance").ok


def test_hint_wrong_framework(capsys):
    assert cc.main(["--mapping", "sparsemax", "--impl", f"{__file__}:torch_style"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert "unexpected keyword argument 'dim'" in out[2]
    assert out[-1] == ("hint: 34 case(s) raised on numpy inputs in a way that suggests the function "
                       "expects torch arrays: try --framework torch")
    assert R.framework_hint(AttributeError(
        "'numpy.ndarray' object has no attribute 'detach'"), "numpy") == "torch"
    assert R.framework_hint(ValueError("bad value"), "numpy") is None


def _fake_jax_report(errors_f32, errors_f64, f64_dtype="float64"):
    res = [cc.CaseResult("sparsemax/f32/a", ok=not errors_f32, dtype="float32",
                         error="raised TypeError: Custom JVP rule" if errors_f32 else None,
                         returned_dtype=None if errors_f32 else "float32"),
           cc.CaseResult("sparsemax/f64/a", ok=not errors_f64, dtype="float64",
                         error="raised TypeError" if errors_f64 else None,
                         returned_dtype=None if errors_f64 else f64_dtype)]
    return cc.Report("sparsemax", "f", "jax", "2", res)


def test_hints_jax_x64():
    on = R.hints(_fake_jax_report(True, False), x64=True)
    assert len(on) == 1 and "with jax_enable_x64 on" in on[0] and "--cases '*/f32/*'" in on[0]
    off = R.hints(_fake_jax_report(False, False, "float32"), x64=False)
    assert len(off) == 1 and "without jax_enable_x64" in off[0] and "--cases '*/f32/*'" in off[0]
    assert R.hints(_fake_jax_report(False, False), x64=True) == []


# -------------------------------------------------------------- tolerances

def _textbook(x):
    return refimpl.sparsemax(x)


def iterative(x):
    """A solver converged to 5e-14: every positive probability off by +-5e-14."""
    p = refimpl.sparsemax(x)
    sign = np.where(np.arange(p.shape[-1]) % 2 == 0, 1.0, -1.0)
    return np.where(p > 0, p + 5e-14 * sign, 0).astype(p.dtype)


def vjp_exact(probs, grad):
    return refimpl.sparsemax_vjp(probs, grad)


def vjp_no_mean(probs, grad):
    return (probs > 0) * grad


def test_separate_tolerances():
    f64 = ["sparsemax/f64/*"]
    strict = cc.run("sparsemax", iterative, vjp=vjp_exact, cases=f64)
    assert sum("forward" in r.reasons for r in strict.results) >= 14, strict.table()
    loose = cc.run("sparsemax", iterative, vjp=vjp_exact, cases=f64, tol=cc.Tolerances(fwd_atol=1e-13))
    assert loose.ok, loose.table()
    assert all(r.fwd_atol == 1e-13 and r.vjp_atol < 1e-13 for r in loose.results)
    wrong_vjp = cc.run("sparsemax", iterative, vjp=vjp_no_mean, cases=f64,
                       tol=cc.Tolerances(fwd_atol=1e-13))
    assert wrong_vjp.failed and all(r.reasons == ["vjp"] for r in wrong_vjp.results if not r.ok)
    # the forward error is reported in ulps and absolute, separately from the VJP's
    r = loose.results[0]
    assert 0 < r.fwd_err <= 1e-13 and r.fwd_ulps > 8 and r.vjp_err < 1e-14


def test_rtol_is_added_to_atol():
    x = np.array([[1e10, 0, -1e10]])
    res = cc.run("sparsemax", lambda v: refimpl.sparsemax(v) * (1 + 1e-9), cases=["*/f64/random-K5"],
                 tol=cc.Tolerances(fwd_atol=1e-300, fwd_rtol=2e-9))
    assert res.ok and res.results[0].fwd_rtol == 2e-9 and x.size == 3


@pytest.mark.parametrize("flags", [["--tol-scale", "0"], ["--tol-scale", "-1"], ["--fwd-atol", "0"],
                                   ["--vjp-rtol", "-1e-3"], ["--fwd-rtol", "nan"], ["--vjp-atol", "x"],
                                   ["--case-timeout", "0"]])
def test_tolerance_flags_are_validated(flags, capsys):
    with pytest.raises(SystemExit) as exc:
        cc.main(["--mapping", "sparsemax", "--impl", "refimpl", *flags])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1 and flags[0] in err
    with pytest.raises(cc.UsageError, match="--fwd-atol"):
        cc.Tolerances(fwd_atol=0.0)


# ----------------------------------------------------------- support detail

def spurious_and_missing(x):
    """One spurious (3e-17 where the answer is 0) and one missing entry on random-K5."""
    p = refimpl.sparsemax(x).copy()
    if x.shape == (16, 5) and x.dtype == np.float64:
        a = next(n for n in range(16) if (p[n] == 0).any())
        b = next(n for n in range(16) if n != a and (p[n] > 0).sum() >= 2)
        p[a, np.flatnonzero(p[a] == 0)[0]] = 3e-17
        p[b, np.flatnonzero(p[b] > 0)[-1]] = 0.0
    return p


def test_support_detail():
    report = cc.run("sparsemax", spurious_and_missing, cases=["*/random-K5"])
    bad = {r.name: r for r in report.results}["sparsemax/f64/random-K5"]
    assert (bad.spurious, bad.missing, bad.max_spurious) == (1, 1, 3e-17)
    assert "support" in bad.reasons and bad.support_mismatches == 2
    line = next(ln for ln in report.table().splitlines() if ln.startswith("sparsemax/f64/random-K5"))
    assert " 1     1     3e-17 " in line
    other = {r.name: r for r in report.results}["sparsemax/f32/random-K5"]
    assert other.ok and (other.spurious, other.missing) == (0, 0)


# ----------------------------------------------- usage errors: one line, exit 2

BROKEN_FILE = "def f(x:\n    return x\n"


@pytest.mark.parametrize("kind", ["missing-file", "broken-file", "no-attr", "missing-golden",
                                  "empty-golden", "vjp-unresolved", "vjp-with-refimpl", "no-module"])
def test_usage_errors_are_one_line_exit_2(kind, tmp_path, capsys):
    (tmp_path / "broken.py").write_text(BROKEN_FILE)
    (tmp_path / "empty").mkdir()
    args = {"missing-file": ["--impl", str(tmp_path / "nope.py") + ":f"],
            "broken-file": ["--impl", str(tmp_path / "broken.py") + ":f"],
            "no-attr": ["--impl", "refimpl:no_such_function"],
            "missing-golden": ["--impl", "refimpl", "--golden", str(tmp_path / "nowhere")],
            "empty-golden": ["--impl", "refimpl", "--golden", str(tmp_path / "empty")],
            "vjp-unresolved": ["--impl", "refimpl:sparsemax", "--vjp", "numpy:nonexistent"],
            "vjp-with-refimpl": ["--impl", "refimpl", "--vjp", "numpy:nonexistent"],
            "no-module": ["--impl", "no_such_module_xyz:f"]}[kind]
    with pytest.raises(SystemExit) as exc:
        cc.main(["--mapping", "sparsemax", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("crosscheck: ") and "Traceback" not in err


def test_usage_error_from_the_command_line_has_no_traceback(tmp_path):
    (tmp_path / "broken.py").write_text(textwrap.dedent(BROKEN_FILE))
    proc = _cli("--mapping", "sparsemax", "--impl", f"{tmp_path / 'broken.py'}:f")
    assert proc.returncode == 2 and "SyntaxError" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
