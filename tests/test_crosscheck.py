"""The cross-checker (refimpl.crosscheck): it passes correct implementations and
fails each deliberately broken one on the case that exposes it.

The broken sparsemax variants below are classic sparsemax defects, written
the way they occur in practice (a textbook sort-and-cumsum forward with one
thing wrong, or a VJP with one thing wrong)."""
import json

import numpy as np
import pytest

from refimpl import crosscheck as cc
from refimpl import golden

# ------------------------------------------------------------ implementations

def textbook(x, shift=True, k_offset=0, masked_sum=False):
    """Sort-and-cumsum sparsemax over the last axis (numpy), with knobs for bugs.

    shift=False: no max shift (1 + k s_(k) > cumsum loses the 1 at 1e30);
    k_offset: off-by-one support size k*; masked_sum: tau from a sum of
    ``z * mask`` (``-inf * 0 = nan``)."""
    with np.errstate(all="ignore"):
        z = x - np.max(x, axis=-1, keepdims=True) if shift else x
        zs = -np.sort(-z, axis=-1)
        ks = np.arange(1, z.shape[-1] + 1, dtype=x.dtype)
        csum = np.cumsum(zs, axis=-1)
        k_star = np.sum(1 + ks * zs > csum, axis=-1, keepdims=True)
        if k_offset:
            k_star = np.clip(k_star + k_offset, 1, z.shape[-1])
        if masked_sum:
            top = np.sum(zs * (ks <= k_star), axis=-1, keepdims=True)
        else:
            top = np.take_along_axis(csum, k_star - 1, axis=-1)
        tau = (top - 1) / k_star.astype(x.dtype)
        return np.maximum(z - tau, 0).astype(x.dtype)


def sparsemax_ok(x):
    return textbook(x)


def sparsemax_no_shift(x):
    return textbook(x, shift=False)


def sparsemax_nan_on_neginf(x):
    return textbook(x, masked_sum=True)


def sparsemax_kstar_plus_one(x):
    return textbook(x, k_offset=1)


def sparsemax_kstar_minus_one(x):
    return textbook(x, k_offset=-1)


def vjp_ok(probs, grad):
    u = (probs > 0).astype(grad.dtype)
    return u * (grad - np.sum(u * grad, -1, keepdims=True) / np.sum(u, -1, keepdims=True))


def vjp_no_mean(probs, grad):
    return (probs > 0) * grad


def vjp_stale_support(x, probs, grad):
    """Support taken from another solve: the forward at a perturbed input."""
    noise = np.random.default_rng(0).standard_normal(x.shape).astype(x.dtype)
    return vjp_ok(textbook(x + 0.1 * noise), grad)


def _failed(report):
    return {r.name: r for r in report.results if not r.ok}


# ------------------------------------------------------------------- passing

def test_correct_numpy_sparsemax_passes():
    report = cc.run("sparsemax", sparsemax_ok, vjp=vjp_ok)
    assert report.ok, report.table()
    assert len(report.results) == len(golden.cases("sparsemax"))
    assert all(r.vjp_err is not None for r in report.results)


def test_forward_only_without_vjp():
    report = cc.run("sparsemax", sparsemax_ok)
    assert report.ok
    assert all(r.vjp_err is None for r in report.results)
    assert " - " in report.table()


@pytest.mark.parametrize("mapping", golden.MAPPINGS)
def test_refimpl_passes(mapping):
    report = cc.run(mapping, "refimpl")
    failed = set(report.failed) - _REFIMPL_KNOWN_FAILURES
    # A SparseMAP case may fail only where the checker itself shows why: refimpl's
    # active set does not span the marginals' minimal face on some row (so
    # sparsemap_vjp, which holds the set fixed, is not the marginals' derivative).
    diagnosed = {r.name for r in report.results if r.face and not r.face.startswith("0/")}
    assert not failed - diagnosed, report.table()
    if diagnosed & failed:
        assert any("does not span" in h for h in report.hints), report.table()


_REFIMPL_KNOWN_FAILURES: set = set()


def test_refimpl_sparsemap_huge_magnitudes():
    """Exact at every magnitude: [1e30, -1e30, .25, .75] -> [1, 0, .25, .75]."""
    report = cc.run("sparsemap_bits", "refimpl", cases=["*/huge"])
    assert report.ok, report.table()


# ------------------------------------------------------------------- broken

BROKEN = {
    # id: (forward, vjp, {case: reason it must fail with}, cases that must pass)
    "vjp-without-mean": (sparsemax_ok, vjp_no_mean,
                         {"sparsemax/f64/random-K5": "vjp", "sparsemax/f32/onehot": "vjp",
                          "sparsemax/f64/K1": "vjp"}, []),
    "stale-support": (sparsemax_ok, vjp_stale_support,
                      {"sparsemax/f64/random-K10-scale0.3": "vjp",
                       "sparsemax/f32/random-K5": "vjp"}, ["sparsemax/f64/K1"]),
    "no-max-shift": (sparsemax_no_shift, None,
                     {"sparsemax/f64/huge-1e30": "nonfinite", "sparsemax/f32/huge-1e30": "nonfinite",
                      "sparsemax/f64/huge-offset": "forward", "sparsemax/f32/all-equal": "nonfinite"},
                     ["sparsemax/f64/random-K5", "sparsemax/f64/neginf"]),
    "nan-on-neginf": (sparsemax_nan_on_neginf, None,
                      {"sparsemax/f64/neginf": "nonfinite", "sparsemax/f32/neginf": "nonfinite"},
                      ["sparsemax/f64/random-K5", "sparsemax/f32/ties-threshold"]),
    "kstar-plus-one": (sparsemax_kstar_plus_one, None,
                       {"sparsemax/f64/random-K5": "forward", "sparsemax/f32/onehot": "forward"},
                       ["sparsemax/f64/ties-threshold"]),   # at an exact tie k*+1 is harmless
    "kstar-minus-one": (sparsemax_kstar_minus_one, None,
                        {"sparsemax/f64/ties-threshold": "forward", "sparsemax/f32/K2": "forward"},
                        ["sparsemax/f64/onehot"]),
}


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_broken_implementation_fails_on_the_right_case(bug):
    forward, vjp, must_fail, must_pass = BROKEN[bug]
    report = cc.run("sparsemax", forward, vjp=vjp)
    failed = _failed(report)
    assert not report.ok
    for name, reason in must_fail.items():
        assert name in failed, f"{bug}: expected {name} to fail\n{report.table()}"
        assert reason in failed[name].reasons, (bug, name, failed[name])
    for name in must_pass:
        assert name not in failed, f"{bug}: {name} should pass\n{report.table()}"
    table = report.table()
    assert all(f"{name} " in table and "FAIL" in table for name in must_fail)
    assert table.splitlines()[-1].startswith("summary:") and list(must_fail)[0] in table.splitlines()[-1]


def test_vjp_bugs_leave_the_forward_alone():
    for bug in ("vjp-without-mean", "stale-support"):
        forward, vjp, _, _ = BROKEN[bug]
        report = cc.run("sparsemax", forward, vjp=vjp)
        assert all(r.reasons == ["vjp"] for r in report.results if not r.ok), bug


def test_exception_is_reported_as_a_failing_case():
    def raises_on_neginf(x):
        if np.isneginf(x).any():
            raise ValueError("no -inf please")
        return textbook(x)
    report = cc.run("sparsemax", raises_on_neginf)
    failed = _failed(report)
    assert set(failed) == {"sparsemax/f64/neginf", "sparsemax/f32/neginf"}
    assert "raised ValueError: no -inf please" in failed["sparsemax/f64/neginf"].error


def test_axis_keyword_is_used_and_an_ignored_axis_is_caught():
    import refimpl

    def ignores_axis(x, axis=-1):           # the §5 bug: dim argument silently ignored
        return refimpl.sparsemax(x)
    report = cc.run("sparsemax", ignores_axis)
    assert set(report.failed) == {"sparsemax/f64/axis0", "sparsemax/f32/axis0",
                                  "sparsemax/f64/batch3d-axis1", "sparsemax/f32/batch3d-axis1"}


def test_wrong_topk_bits_order_is_accepted_but_wrong_set_is_not():
    def reversed_order(t, k):
        bits, probs = cc.topk_bits(t, k)
        return bits[:, ::-1], probs[:, ::-1]

    def reversed_vjp(y, g):
        bits, probs = y
        return cc.topk_bits_vjp((bits[:, ::-1], probs[:, ::-1]), g[:, ::-1])
    assert cc.run("topk_bits", reversed_order, vjp=reversed_vjp).ok

    def k_minus_one_best(t, k):               # drops the k-th best vector
        from refimpl import kbest_bitvectors, sparsemax
        bits, scores = kbest_bitvectors(t, k)
        return bits[:, :max(k - 1, 1)], sparsemax(scores[:, :max(k - 1, 1)])
    report = cc.run("topk_bits", k_minus_one_best)
    assert any(n.endswith("/D32-k10") for n in report.failed), report.table()   # where it had weight


def test_tol_scale_and_case_filter():
    report = cc.run("sparsemax", sparsemax_kstar_plus_one, cases=["sparsemax/f64/random-K1000*"],
                    tol_scale=1e12)
    assert [r.name for r in report.results] == ["sparsemax/f64/random-K1000-scale0.1"]
    assert report.ok
    with pytest.raises(ValueError, match="no golden case"):
        cc.run("sparsemax", sparsemax_ok, cases=["nothing*"])


# ---------------------------------------------------------------------- CLI

def test_cli_exit_status_and_json(capsys):
    assert cc.main(["--mapping", "sparsemax", "--impl", "refimpl:sparsemax",
                    "--vjp", "refimpl:sparsemax_vjp"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[-1].startswith("summary: 34/34 cases ok")
    assert cc.main(["--mapping", "sparsemax", "--impl", f"{__file__}:sparsemax_no_shift",
                    "--json", "--cases", "sparsemax/f64/*"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and "sparsemax/f64/huge-1e30" in report["failed"]
    case = next(c for c in report["cases"] if c["name"] == "sparsemax/f64/huge-1e30")
    assert case["fwd_err"] is None and case["nonfinite"] > 0       # inf -> null in JSON


def test_cli_reports_import_errors(capsys):
    with pytest.raises(SystemExit) as exc:
        cc.main(["--mapping", "sparsemax", "--impl", "no_such_module_xyz:f"])
    assert exc.value.code == 2
    assert "ModuleNotFoundError" in capsys.readouterr().err


def test_cli_reads_a_golden_directory(tmp_path, capsys):
    golden.write_golden(tmp_path, golden.cases("sparsemap_budget", ["*/D6-B2", "*/D10-B1"]))
    assert cc.main(["--mapping", "sparsemap_budget", "--impl", "refimpl",
                    "--golden", str(tmp_path)]) == 0
    assert "4/4 cases ok" in capsys.readouterr().out


# ------------------------------------------------- optional framework adapters

def test_torch_adapter():
    torch = pytest.importorskip("torch")

    def torch_sparsemax(x, dim=-1, hybrid=False):
        z = x - x.max(dim=dim, keepdim=True).values
        zs = torch.sort(z, dim=dim, descending=True).values
        shape = [1] * x.dim()
        shape[dim] = x.shape[dim]
        ks = torch.arange(1, x.shape[dim] + 1, dtype=x.dtype).view(shape)
        csum = zs.cumsum(dim)
        k_star = (1 + ks * zs > csum).sum(dim=dim, keepdim=True)
        tau = (csum.gather(dim, k_star - 1) - 1) / k_star.to(x.dtype)
        # hybrid: the same forward, but the gradient passes at z == tau (an entry
        # outside the support gets a row of J).  Written with where(>=) so that it
        # does not depend on any torch version's convention for clamp at the kink.
        keep = z >= tau if hybrid else z > tau
        return torch.where(keep, z - tau, torch.zeros_like(z))
    report = cc.run("sparsemax", torch_sparsemax, framework="torch")
    assert report.ok, report.table()
    hybrid = cc.run("sparsemax", lambda x, dim=-1: torch_sparsemax(x, dim, hybrid=True),
                    framework="torch")
    assert {"sparsemax/f64/ties-threshold", "sparsemax/f32/K2"} <= set(hybrid.failed)
    assert {r for n in hybrid.failed for r in _failed(hybrid)[n].reasons} == {"vjp"}
    bad = cc.run("sparsemax", lambda x: torch_sparsemax(x).detach(), framework="torch",
                 cases=["sparsemax/f64/K2"])
    assert "does not require grad" in bad.results[0].error
    wants_numpy = cc.run("sparsemax", lambda x: np.asarray(x) * 0 + 1, framework="torch",
                         cases=["sparsemax/f64/K2"])
    assert any("--framework numpy" in h for h in wants_numpy.hints), wants_numpy.table()


def test_jax_adapter():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy

    def jax_sparsemax(x):
        z = x - jnp.max(x, axis=-1, keepdims=True)
        zs = -jnp.sort(-z, axis=-1)
        ks = jnp.arange(1, x.shape[-1] + 1, dtype=x.dtype)
        csum = jnp.cumsum(zs, axis=-1)
        k_star = jnp.sum(1 + ks * zs > csum, axis=-1, keepdims=True)
        tau = (jnp.take_along_axis(csum, k_star - 1, axis=-1) - 1) / k_star.astype(x.dtype)
        return jnp.where(z > tau, z - tau, 0)      # not jnp.maximum: it splits the gradient at ties
    few = ["*/ties-threshold", "*/neginf", "*/random-K5", "*/axis0", "*/huge-1e30"]
    report = cc.run("sparsemax", jax_sparsemax, framework="jax", cases=few)
    assert report.ok and len(report.results) == 10, report.table()


def test_jax_x64_hint_on_optax():
    pytest.importorskip("jax")
    pytest.importorskip("optax")
    from pathlib import Path
    adapter = Path(__file__).resolve().parents[1] / "docs" / "examples" / "optax_adapter.py"
    report = cc.run("sparsemax", f"{adapter}:projection_simplex_lastaxis", framework="jax",
                    cases=["sparsemax/*/K2"])
    if report.ok:                                  # a release whose custom JVP keeps float32
        pytest.skip("this optax keeps float32 tangents under x64")
    assert report.failed == ["sparsemax/f32/K2"], report.table()
    assert any("with jax_enable_x64 on" in h and "--cases '*/f32/*'" in h for h in report.hints)
