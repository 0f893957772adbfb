"""Golden cases (refimpl.golden, refimpl._exact): exact values, determinism,
and the committed subset in tests/golden/, checked against refimpl on every run.

If a committed file no longer regenerates bit-for-bit, either the battery
changed (bump GOLDEN_VERSION and rewrite the subset with the command in
SUBSET_COMMAND) or NumPy's random streams changed (say so in docs/crosscheck.md)."""
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import refimpl
from refimpl import _exact as E
from refimpl import crosscheck as cc
from refimpl import golden

COMMITTED = Path(__file__).parent / "golden"
SUBSET_COMMAND = ("python -m refimpl.golden --out tests/golden --cases "
                  "'sparsemax/f64/ties-threshold' 'sparsemax/f32/neginf' 'sparsemax/f64/huge-1e30' "
                  "'sparsemax/f32/all-equal' 'topk_sparsemax/f64/bits-D3-k2' 'topk_bits/f32/D8-k5' "
                  "'sparsemap_bits/f64/D5' 'sparsemap_budget/f64/D6-B2'")


# ---------------------------------------------------------------- exactness

def test_round_to_float32_avoids_double_rounding():
    v = 1 + Fraction(1, 2 ** 24) + Fraction(1, 2 ** 60)     # just above a float32 midpoint
    assert np.float32(float(v)) == np.float32(1.0)           # float64 first: rounds twice
    assert E.round_to(v, np.float32) == np.float32(1 + 2 ** -23)
    assert E.round_to(1 + Fraction(1, 2 ** 24), np.float32) == np.float32(1.0)   # tie: even
    assert E.round_to(Fraction(1, 3), np.float64) == 1 / 3
    assert E.round_to(Fraction(-1, 7), np.float32) == np.float32(-1 / 7)


def test_exact_sparsemax_on_known_rows():
    row = E.to_fractions([2, 1.75, 1.75, 1.5, 1.5, -np.inf])
    assert E.sparsemax_row(row) == [Fraction(1, 2), Fraction(1, 4), Fraction(1, 4), 0, 0, 0]
    p = E.sparsemax_row(E.to_fractions([1e30, 1e30, 1e30]))
    assert p == [Fraction(1, 3)] * 3
    g = [Fraction(v) for v in (1, 2, 4, 8, 16, 32)]
    assert E.sparsemax_vjp_row(E.sparsemax_row(row), g) == [Fraction(-4, 3), Fraction(-1, 3),
                                                             Fraction(5, 3), 0, 0, 0]
    with pytest.raises(ValueError):
        E.to_fractions([np.nan])


def test_exact_sparsemax_agrees_with_refimpl_on_random_rows():
    x = np.random.default_rng(1).standard_normal((50, 7))
    exact = E.round_array([E.sparsemax_row(E.to_fractions(r)) for r in x], np.float64, x.shape)
    np.testing.assert_allclose(refimpl.sparsemax(x), exact, rtol=0, atol=4e-16)
    assert np.array_equal(refimpl.sparsemax(x) > 0, exact > 0)


def test_capped_simplex_exact():
    t = [Fraction(v) for v in (0.9, 0.8, 0.5, -0.2)]
    mu, lam = E.capped_simplex_row(t, 2)
    assert sum(mu) == 2 and lam == (t[0] + t[1] + t[2] - 2) / 3
    assert mu == [v - lam for v in t[:3]] + [0]
    mu, lam = E.capped_simplex_row(t, 3)                   # budget not binding
    assert lam == 0 and mu == [t[0], t[1], t[2], 0]
    g = [Fraction(v) for v in (1, 2, 3, 4)]
    assert E.capped_simplex_vjp_row(t, *E.capped_simplex_row(t, 2), g) == [-1, 0, 1, 0]


def test_kbest_is_checked_against_brute_force():
    t = [Fraction(v) for v in (0.5, -0.25, 1.5, -0.125)]
    bits, scores = E.kbest_row(np.array([0.5, -0.25, 1.5, -0.125]), t, 3)
    assert bits[0] == (True, False, True, False) and scores == [2, Fraction(15, 8), Fraction(7, 4)]
    with pytest.raises(ValueError, match="tied"):
        E.kbest_row(np.array([0.5, -0.5, 1.0]), [Fraction(0.5), Fraction(-0.5), Fraction(1)], 2)


# ------------------------------------------------------------- the battery

def test_battery_covers_the_issue():
    names = [c.name for c in golden.build_cases()]
    assert len(names) == len(set(names))
    for dt in ("f32", "f64"):
        for key in ("random-K5", "random-K1000-scale0.1", "ties-threshold", "all-equal", "onehot",
                    "neginf", "huge-1e30", "K1", "K2", "axis0"):
            assert f"sparsemax/{dt}/{key}" in names
        for mapping in ("topk_sparsemax", "topk_bits", "sparsemap_bits", "sparsemap_budget"):
            assert any(n.startswith(f"{mapping}/{dt}/") for n in names)
    for c in golden.build_cases():
        assert c.arrays["x"].dtype == np.dtype(c.dtype) == c.arrays["y"].dtype == c.arrays["vjp"].dtype
        assert c.arrays["g"].shape == (golden.N_COTANGENTS,) + c.arrays["y"].shape
        assert c.arrays["vjp"].shape == (golden.N_COTANGENTS,) + c.arrays["x"].shape
        assert np.all(np.isfinite(c.arrays["y"])) and np.all(np.isfinite(c.arrays["vjp"]))
        assert c.description and c.tolerance["forward"]["atol"] > 0


def test_sparsemax_outputs_are_distributions_with_exact_ties():
    for c in golden.cases("sparsemax"):
        y = np.moveaxis(c.arrays["y"], c.axis, -1).astype(np.float64)
        np.testing.assert_allclose(y.sum(-1), 1, atol=8 * np.finfo(c.dtype).eps)
    ties = golden.cases("sparsemax", ["sparsemax/f64/ties-threshold"])[0]
    assert np.sum(ties.arrays["y"] == 0) == 22          # entries at tau are exactly 0


def test_dense_jacobian_matches_vjps():
    for c in golden.cases():
        if "jac" in c.arrays and c.axis in (-1, c.arrays["x"].ndim - 1):
            g = c.arrays["g"].reshape(golden.N_COTANGENTS, c.arrays["jac"].shape[0], -1)
            vjp = np.einsum("cno,noi->cni", g.astype(np.float64), c.arrays["jac"].astype(np.float64))
            np.testing.assert_allclose(vjp.reshape(c.arrays["vjp"].shape), c.arrays["vjp"],
                                       atol=32 * np.finfo(c.dtype).eps * c.tolerance["vjp"]["scale"])


def test_large_sparsemap_cases_against_closed_forms():
    """D = 64, 128: marginals and their VJP against float64 closed forms computed
    apart from _exact (bits: clip and the mask 1[0 < t < 1]; budget: bisection
    for lam, and the mask minus its mean over the free set)."""
    large = golden.cases(patterns=["sparsemap_*/*/D64-*", "sparsemap_*/*/D128-*"])
    assert len(large) == 8
    for c in large:
        t, eps = c.arrays["x"].astype(np.float64), float(np.finfo(c.dtype).eps)
        lam = np.zeros((t.shape[0], 1))
        if c.mapping == "sparsemap_budget":
            lo, hi = np.zeros(t.shape[0]), t.max(-1)
            for _ in range(200):
                mid = (lo + hi) / 2
                big = np.clip(t - mid[:, None], 0, 1).sum(-1) > c.budget
                lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
            lam = lo[:, None]
            assert np.all(lam > 0)                                     # the budget binds
        mu = np.clip(t - lam, 0, 1)
        np.testing.assert_allclose(c.arrays["y"], mu, rtol=0, atol=64 * eps)
        free = (mu > 0) & (mu < 1)
        for g, vjp in zip(c.arrays["g"].astype(np.float64), c.arrays["vjp"]):
            expect = free * g
            if c.mapping == "sparsemap_budget":
                expect = free * (g - (free * g).sum(-1, keepdims=True) / free.sum(-1, keepdims=True))
            np.testing.assert_allclose(vjp, expect, rtol=0, atol=64 * eps * np.abs(g).max())


def test_regenerates_bit_for_bit(tmp_path):
    a = golden.write_golden(tmp_path / "a")
    golden.build_cases.cache_clear()                    # recompute from scratch
    b = golden.write_golden(tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir()) and len(files) == len(golden.SPECS) + 1
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_npz_and_index_are_readable(tmp_path):
    golden.write_golden(tmp_path, golden.cases("topk_bits"))
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["golden_version"] == golden.GOLDEN_VERSION and index["n_cotangents"] == 2
    for meta in index["cases"]:
        with np.load(tmp_path / meta["file"]) as z:
            assert sorted(z.files) == sorted(meta["arrays"])
            for key, info in meta["arrays"].items():
                assert list(z[key].shape) == info["shape"] and z[key].dtype.name == info["dtype"]
        assert meta["k"] >= 1 and set(meta["tolerance"]) == {"forward", "vjp"}


def test_cli_writes_a_selection(tmp_path, capsys):
    assert golden.main(["--out", str(tmp_path), "--cases", "sparsemax/f64/K*"]) == 0
    assert "wrote 2 golden cases" in capsys.readouterr().out
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "index.json", "sparsemax__f64__K1.npz", "sparsemax__f64__K2.npz"]


# ------------------------------------------------------ committed subset

def test_committed_subset_regenerates_bit_for_bit(tmp_path):
    index = json.loads((COMMITTED / "index.json").read_text())
    names = [m["name"] for m in index["cases"]]
    assert len(names) >= 6
    golden.write_golden(tmp_path, golden.cases(patterns=names))
    for path in sorted(COMMITTED.iterdir()):
        assert path.read_bytes() == (tmp_path / path.name).read_bytes(), (
            f"{path.name} differs from its regeneration; if the battery changed on purpose, "
            f"bump GOLDEN_VERSION and run: {SUBSET_COMMAND}")


@pytest.mark.parametrize("mapping", golden.MAPPINGS)
def test_committed_subset_passes_refimpl(mapping):
    if not golden.read_golden(COMMITTED, mapping):
        pytest.skip(f"no committed case for {mapping}")
    report = cc.run(mapping, "refimpl", golden_dir=COMMITTED)
    assert report.ok, report.table()
