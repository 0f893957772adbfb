"""experiments.bitvae / bitvae_model: the fused decoder head, the model's gradient,
the NLL estimators, and the CLI end to end (every method, resume, errors) on real data."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import bitvae
from experiments.bitvae_model import (NLL_UNIFORM, BitVAE, _importance_weights, authors_nll,
                                      bit_codes, effective_sample_size, importance_nll,
                                      log_bernoulli, logsumexp, pixel_categorical_nll,
                                      pixel_categorical_nll_reference)
from experiments.common import TIMING_KEYS, load_checkpoint, read_metrics
from nets import Tensor, no_grad
from nets.estimators import make_estimator
from refimpl.backend import to_numpy
from refimpl.enumeration import all_bitvectors

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["--max-train", "128", "--nll-samples", "4", "--max-test", "16", "--eval-batch-size", "64"]


def _images(data_dir, n, start=0):
    from experiments.data import load_images
    return load_images("fashion-mnist", "train", data_dir)[start:start + n].reshape(n, -1)


# =========================================================================== fused head
def _head_inputs(xp, n=3, P=7, scale=1.0, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    h = Tensor(xp.asarray(rng.standard_normal((n, P, 5)) * scale, dtype=dtype), requires_grad=True)
    W = Tensor(xp.asarray(rng.standard_normal((5, 256)), dtype=dtype), requires_grad=True)
    b = Tensor(xp.asarray(rng.standard_normal(256), dtype=dtype), requires_grad=True)
    x = xp.asarray(rng.integers(0, 256, (n, P)).astype(np.uint8))
    return h, W, b, x


def _value_and_grads(f, tensors, g):
    for t in tensors:
        t.grad = None
    y = f()
    y.backward(g)
    return [to_numpy(y.data)] + [to_numpy(t.grad) for t in tensors]


@pytest.mark.parametrize("options", [{}, {"shift": True}, {"shift": False}, {"chunk_rows": 2},
                                     {"chunk_rows": 1, "shift": True}])
def test_fused_head_equals_unfused_ops(xp, options):
    h, W, b, x = _head_inputs(xp)
    g = xp.asarray(np.random.default_rng(1).standard_normal(3))
    fused = _value_and_grads(lambda: pixel_categorical_nll(h, W, b, x, **options), (h, W, b), g)
    ref = _value_and_grads(lambda: pixel_categorical_nll_reference(h, W, b, x), (h, W, b), g)
    for a, r in zip(fused, ref):
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


def test_fused_head_vjp_equals_central_differences():
    """Each input's VJP against central differences of <u, nll> along random directions."""
    h, W, b, x = _head_inputs(np, n=2, P=5)
    u = np.array([0.7, -1.3])
    y = pixel_categorical_nll(h, W, b, x)
    y.backward(u)
    rng = np.random.default_rng(3)
    for t in (h, W, b):
        v = rng.standard_normal(t.shape)
        base, eps = t.data.copy(), 1e-5
        vals = []
        for sign in (1, -1):
            t.data[...] = base + sign * eps * v
            with no_grad():
                vals.append(float(u @ pixel_categorical_nll(h, W, b, x).data))
        t.data[...] = base
        numeric, analytic = (vals[0] - vals[1]) / (2 * eps), float((t.grad * v).sum())
        assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic)), (t.shape, numeric, analytic)


def test_fused_head_overflow_falls_back_to_the_shifted_form():
    """Logits of ±1000 overflow exp: the result must still equal the stable reference."""
    h, W, b, x = _head_inputs(np, scale=300.0, dtype=np.float32)
    g = np.ones(3, dtype=np.float32)
    fused = _value_and_grads(lambda: pixel_categorical_nll(h, W, b, x, shift=False), (h, W, b), g)
    ref = _value_and_grads(lambda: pixel_categorical_nll_reference(h, W, b, x), (h, W, b), g)
    for a, r in zip(fused, ref):
        assert np.all(np.isfinite(a))
        np.testing.assert_allclose(a, r, rtol=2e-4, atol=1e-3 * np.abs(r).max())


def test_scatter_add_rows_both_ways(xp):
    from experiments.bitvae_model import _scatter_add_rows
    rng = np.random.default_rng(0)
    index, values = rng.integers(0, 7, 50).astype(np.uint8), rng.standard_normal((50, 3))
    expected = np.zeros((7, 3))
    np.add.at(expected, index, values)
    for use_bincount in (True, False):
        got = _scatter_add_rows(xp.asarray(index), xp.asarray(values), 7, use_bincount)
        np.testing.assert_allclose(to_numpy(got), expected, rtol=1e-12)


def test_fused_head_float32_close_to_float64_and_checks_inputs():
    h, W, b, x = _head_inputs(np)
    y64 = pixel_categorical_nll(h, W, b, x).data
    h32, W32, b32 = (Tensor(t.data.astype(np.float32)) for t in (h, W, b))
    y32 = pixel_categorical_nll(h32, W32, b32, x)
    assert y32.dtype == np.float32 and not y32.requires_grad
    np.testing.assert_allclose(y32.data, y64, rtol=1e-5)
    with pytest.raises(ValueError, match="targets must lie in"):
        pixel_categorical_nll(h, W, b, np.full((3, 7), 256))
    with pytest.raises(TypeError, match="dtypes differ"):
        pixel_categorical_nll(h32, W, b, x)
    with pytest.raises(ValueError, match="need h"):
        pixel_categorical_nll(W, W, b, x)


# =========================================================================== model gradient
def _tiny_model(seed=1, D=4):
    return BitVAE(D, np.random.default_rng(seed), dtype=np.float64, hidden=6, dec_hidden=5)


@pytest.mark.parametrize("method, options", [("topk", {"k": 10}), ("sparsemap", {}),
                                             ("sparsemap-budget", {"budget": 2})])
def test_full_loss_gradient_equals_central_differences(data_dir, method, options):
    """d/dθ mean_b [Σ_z π ℓ - H(π)] by backward vs a 4-point central difference, for
    every parameter tensor, at a point where the support is the same at every stencil point."""
    x = _images(data_dir, 3)
    model, est = _tiny_model(), make_estimator(method, "bits", **options)
    params = model.named_parameters()
    objective, e = bitvae.batch_objective(model, est, x, None)
    support = to_numpy(e.probs.data) > 0
    assert support.sum(axis=1).max() > 1                  # a non-trivial mixture
    objective.backward()
    rng = np.random.default_rng(0)
    for name, p in params:
        v = rng.standard_normal(p.shape)
        v /= np.linalg.norm(v)
        base, eps, vals = p.data.copy(), 1e-5, {}
        for step in (-2, -1, 1, 2):
            p.data[...] = base + step * eps * v
            with no_grad():
                obj, e2 = bitvae.batch_objective(model, est, x, None)
            assert np.array_equal(to_numpy(e2.probs.data) > 0, support), f"{name}: support moved"
            vals[step] = float(obj.data)
        p.data[...] = base
        numeric = (8 * (vals[1] - vals[-1]) - (vals[2] - vals[-2])) / (12 * eps)
        analytic = float((p.grad * v).sum())
        assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(analytic)), (name, numeric, analytic)


@pytest.mark.parametrize("method", bitvae.METHODS)
def test_decoder_calls_equal_pairs_decoded_and_support_sizes(data_dir, method):
    x = _images(data_dir, 8)
    args = bitvae.resolve_args(bitvae.build_parser().parse_args(["--method", method]), None)
    model = BitVAE(args.bits, np.random.default_rng(0))
    est, seen = bitvae.make_method_estimator(args), []
    t = model.encode(x)

    def loss_fn(idx, z):
        seen.append(np.asarray(idx))
        return model.decode_nll(z, x[idx])

    e = est(t, loss_fn, np.random.default_rng(0))
    assert len(seen) == 1                                   # one decoder call per step
    per_example = np.bincount(seen[0], minlength=8)
    np.testing.assert_array_equal(per_example, e.calls)
    if method in bitvae.SPARSE:
        np.testing.assert_array_equal(e.calls, (e.probs.data > 0).sum(axis=1))
    if method == "topk":
        assert e.calls.max() <= 10


# =========================================================================== NLL estimators
PIXELS = slice(420, 450)        # 30 central pixels: the NLL tests enumerate all 2^4 codes


def _peaked_tiny_model():
    """D = 4, 30 pixels, a decoder that depends strongly on z (ℓ spans ~20 nats over z)."""
    model = BitVAE(4, np.random.default_rng(3), dtype=np.float64, hidden=6, dec_hidden=5,
                   pixels=30)
    model.decoder.layers[0].weight.data *= 10
    return model


def _exact_log_px(model, x):
    Z = all_bitvectors(4, dtype=np.float64)                                # (16, 4)
    nll = model.decode_nll_rows(np.tile(Z, (len(x), 1)), np.repeat(x, 16, axis=0))
    return logsumexp(-nll.reshape(len(x), 16), 1) - 4 * math.log(2), nll.reshape(len(x), 16)


def _topk_posterior(model, x):
    with no_grad():
        t = model.encode(x)
        est = make_estimator("topk", "bits", k=3)(t, lambda i, z: model.decode_nll(z, x[i]), None)
    return t.data, est


@pytest.mark.parametrize("proposal", ["sparse", "bernoulli"])
def test_importance_nll_mixture_is_unbiased_with_bounded_weights_and_reports_ess(data_dir,
                                                                                 proposal):
    """r = (q + Bernoulli + uniform)/3 (sparse q) or 2/3 Bernoulli + 1/3 uniform, D = 4:
    exact p(x) by enumerating all 16 codes."""
    x = _images(data_dir, 2)[:, PIXELS].copy()
    model = _peaked_tiny_model()
    exact, _ = _exact_log_px(model, x)
    t, est = _topk_posterior(model, x)
    probs, support = (est.probs.data, est.support) if proposal == "sparse" else (None, None)
    decode, rng = model.decode_nll_rows, np.random.default_rng(0)
    # many samples: log p̂ converges to log p(x); the ESS is reported per image, in [1, S]
    log_px, ess, _ = importance_nll(decode, x, t, 8000, rng, probs, support)
    np.testing.assert_allclose(log_px, exact, atol=0.05)
    assert ess.shape == (2,) and np.all((ess >= 1) & (ess <= 8000))
    # every weight p(x|z) 2^-D / r(z) is at most 1/γ = 3 (x discrete: p(x|z) <= 1)
    log_w, _ = _importance_weights(decode, x, t, 8000, rng, probs, support, NLL_UNIFORM)
    assert log_w.max() <= math.log(3.0) + 1e-12
    np.testing.assert_allclose(effective_sample_size(log_w),
                               np.exp(log_w).sum(1) ** 2 / np.exp(2 * log_w).sum(1), rtol=1e-10)
    # 4 samples, 1000 independent repeats (as a batch): mean of p̂/p(x) is 1 (unbiased)
    R = 1000
    def tile(a, reps):
        return None if a is None else np.tile(a, reps)
    reps, _, _ = importance_nll(decode, np.tile(x, (R, 1)), np.tile(t, (R, 1)), 4, rng,
                                tile(probs, (R, 1)), tile(support, (R, 1, 1)))
    ratio = np.exp(reps.reshape(R, 2) - exact)
    np.testing.assert_allclose(ratio.mean(axis=0), 1.0, atol=4 * ratio.std(axis=0).max() / R ** 0.5)
    assert np.mean(reps.reshape(R, 2) < exact) > 0.5          # log p̂ is usually below log p


def test_importance_nll_without_the_uniform_component_is_the_old_mixture(data_dir):
    x = _images(data_dir, 2)[:, PIXELS].copy()
    model = _peaked_tiny_model()
    exact, _ = _exact_log_px(model, x)
    t, est = _topk_posterior(model, x)
    log_px, _, _ = importance_nll(model.decode_nll_rows, x, t, 8000, np.random.default_rng(1),
                                  est.probs.data, est.support, uniform=0.0)
    np.testing.assert_allclose(log_px, exact, atol=0.05)
    with pytest.raises(ValueError, match="uniform"):
        importance_nll(model.decode_nll_rows, x, t, 4, np.random.default_rng(1), uniform=1.0)


def test_authors_estimator_is_as_stated_and_counts_the_support_twice(data_dir):
    x = _images(data_dir, 2)[:, PIXELS].copy()
    model = _peaked_tiny_model()
    exact, all_nll = _exact_log_px(model, x)
    _, est = _topk_posterior(model, x)
    on = est.probs.data > 0
    codes = bit_codes(est.support)[..., 0]                                 # (B, 3) z as integers
    all_codes = bit_codes(all_bitvectors(4, dtype=np.float64))[:, 0]
    slot = np.argmax(codes[..., None] == all_codes, axis=-1)               # (B, 3) -> 0..15
    support_nll = np.where(on, np.take_along_axis(all_nll, slot, axis=1), np.inf)
    got = authors_nll(model.decode_nll_rows, x, support_nll, 8000, np.random.default_rng(0), 4)
    stated = np.logaddexp(logsumexp(-support_nll, 1) - 4 * math.log(2), exact)
    np.testing.assert_allclose(got, stated, atol=0.05)
    assert np.all(got > exact + 0.05)


def test_bit_codes_and_bernoulli_density():
    z = (np.random.default_rng(0).random((5, 70)) < 0.5).astype(np.float32)
    codes = bit_codes(z)
    assert codes.shape == (5, 3) and len({tuple(c) for c in codes}) == 5
    assert np.array_equal(bit_codes(z[:1]), codes[:1])
    t = np.array([[0.0, 50.0, -50.0]])
    np.testing.assert_allclose(log_bernoulli(np.array([[1.0, 1.0, 0.0]]), t), [math.log(0.5)])
    assert log_bernoulli(np.array([[1.0, 0.0, 0.0]]), t)[0] == pytest.approx(math.log(0.5) - 50)


def test_gumbel_temperature_schedule():
    assert bitvae.gumbel_temperature(0, 1e-5) == 1.0
    assert bitvae.gumbel_temperature(999, 1e-5) == 1.0
    assert bitvae.gumbel_temperature(1500, 1e-5) == pytest.approx(math.exp(-1e-2))
    assert bitvae.gumbel_temperature(10 ** 7, 1e-5) == 0.5


# =========================================================================== CLI end to end
RESUMED = ("sfe", "st-gumbel", "sparsemap")


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory, data_dir):
    """Every method for 2 epochs on 128 training images, and for RESUMED methods the same
    run as 1 epoch + ``--resume`` to 2: {name: run dir}.

    All runs go through ``bitvae.main`` in ONE subprocess (the data loads once) with
    OPENBLAS_NUM_THREADS=1, as the CLI runs: multi-threaded OpenBLAS on the head's small
    GEMMs is slow on a busy machine (see experiments.bitvae)."""
    root = tmp_path_factory.mktemp("bitvae")
    base = ["--data-dir", str(data_dir), *SMOKE]
    runs, argvs = {}, []
    for method in bitvae.METHODS:
        runs[method] = root / method
        argvs.append(["--method", method, "--epochs", "2", "--out", str(runs[method]), *base])
    for method in RESUMED:
        runs[f"{method}-resumed"] = out = root / f"{method}-resumed"
        argvs.append(["--method", method, "--epochs", "1", "--out", str(out), *base])
        argvs.append(["--method", method, "--epochs", "2", "--out", str(out), "--resume", *base])
    script = ("import json, sys\nfrom experiments import bitvae\n"
              "print(json.dumps([bitvae.main(a) for a in json.loads(sys.argv[1])]))")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", script, json.dumps(argvs)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [0] * len(argvs), done.stderr[-3000:]
    return runs


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
@pytest.mark.parametrize("method", bitvae.METHODS)
def test_smoke_run_writes_every_output_and_learns(cli_runs, method):
    out = cli_runs[method]
    for name in ("config.json", "metrics.jsonl", "test.json", "best.npz", "last.npz",
                 "calls.png", "elbo.png", "rate_distortion.png"):
        assert (out / name).is_file(), name
    config = json.loads((out / "config.json").read_text())
    assert config["method"] == method and config["val_size"] == 64 and "numpy" in config["versions"]
    m = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in m] == [1, 2]
    for key in ("train_elbo", "val_elbo", "rate", "distortion", "calls_mean", "calls_median",
                "calls_p10", "calls_p25", "calls_p75", "calls_p90", "seconds"):
        assert all(math.isfinite(r[key]) for r in m), key
    assert m[1]["val_elbo"] > m[0]["val_elbo"] and m[1]["train_elbo"] > m[0]["train_elbo"]
    for r in m:
        assert r["val_elbo"] == pytest.approx(-(r["rate"] + r["distortion"]))
        assert 0 <= r["rate"] <= 32 * math.log(2) + 1e-9
    test = json.loads((out / "test.json").read_text())
    assert test["test_examples"] == 16 and test["nll_samples"] == 4
    assert 0 < test["test_nll_bits_per_dim"] < 9 and 0 < test["test_authors_nll_bits_per_dim"] < 9
    assert test["test_elbo"] == pytest.approx(-(test["test_rate"] + test["test_distortion"]))
    assert test["train_seconds"] == pytest.approx(sum(r["seconds"] for r in m))
    expected_calls = {"sfe": 1, "sfe-plus": 2, "gumbel": 1, "st-gumbel": 1}.get(method)
    if expected_calls:
        assert m[0]["calls_mean"] == expected_calls
    else:
        assert 1 <= test["test_calls_p10"] <= test["test_calls_p90"] <= (10 if method == "topk" else 33)


def test_collapse_monitor_and_default_encoding_in_the_smoke_runs(cli_runs):
    for method in bitvae.METHODS:
        config = json.loads((cli_runs[method] / "config.json").read_text())
        assert config["sparsemap_encoding"] == "onehot" and config["sparsemap_init"] == "oracle"
        assert config["gumbel_rate"] == 1e-5 and config["sfe_plus_baseline"] == "detached"
        for r in read_metrics(cli_runs[method] / "metrics.jsonl"):
            assert 0.0 <= r["frozen_steps"] <= 1.0
            if method in bitvae.SPARSE:
                assert 0.0 <= r["single_vertex_rows"] <= 1.0
            else:
                assert r["single_vertex_rows"] is None and r["frozen_steps"] == 0.0
        ess = json.loads((cli_runs[method] / "test.json").read_text())["test_nll_ess"]
        assert 1.0 <= ess["min"] <= ess["mean"] <= 4 and ess["samples"] == 4


def _frozen_after_one_step(model, method, encoding, images, scale):
    """One training step's monitor on a batch whose encoder scores are shifted by ``scale``."""
    est = make_estimator(method, "bits", sparsemap_encoding=encoding)
    t = model.encode(images)
    t = (t + scale).retain_grad()
    objective, e = bitvae.batch_objective(model, est, images, None, t=t)
    objective.backward()
    frozen = bool(bitvae.encoder_frozen(t))
    return frozen, bitvae.collapse_monitor(int(frozen), 1, e.calls, True), t


def test_collapse_monitor_counts_a_constructed_frozen_batch_and_a_live_one(data_dir):
    x = _images(data_dir, 8)
    model = BitVAE(6, np.random.default_rng(0), dtype=np.float64, hidden=16, dec_hidden=8)
    # every score far outside (0, 1): binary SparseMAP puts each example on one vertex
    frozen, fig, t = _frozen_after_one_step(model, "sparsemap", "binary", x, 50.0)
    assert frozen and fig == {"frozen_steps": 1.0, "single_vertex_rows": 1.0}
    assert np.all(t.grad == 0)
    # scores near 0: the one-hot encoding's band (-1, 1) holds them all: live, several vertices
    frozen, fig, t = _frozen_after_one_step(model, "sparsemap", "onehot", x, 0.0)
    assert not frozen and fig["frozen_steps"] == 0.0 and fig["single_vertex_rows"] < 1.0
    assert np.any(t.grad != 0)
    # the figures over an epoch: 3 frozen steps of 4; 2 of 5 examples with one vertex
    fig = bitvae.collapse_monitor(3, 4, np.array([1, 2, 1, 4, 3]), True)
    assert fig == {"frozen_steps": 0.75, "single_vertex_rows": 0.4}
    assert bitvae.collapse_monitor(0, 4, np.array([1, 1]), False)["single_vertex_rows"] is None


@pytest.mark.slow
def test_default_encoding_trains_where_binary_freezes(tmp_path, capsys, data_dir):
    """D = 32, 6,400 images, 2 epochs (200 steps), seed 1: binary SparseMAP ends frozen
    (with the warning line), the default one-hot encoding does not.  (Seed 1 since the
    SparseMAP rewrite: binary froze for seed 1 of {1, 2, 3, 42}, one-hot for none of
    {1, 3, 7, 42}; docs/results.md.)"""
    base = ["--method", "sparsemap", "--bits", "32", "--max-train", "6400", "--epochs", "2",
            "--seed", "1", "--nll-samples", "0", "--max-test", "16", "--data-dir", str(data_dir)]
    assert bitvae.main([*base, "--out", str(tmp_path / "onehot")]) == 0
    assert "warning" not in capsys.readouterr().err
    assert bitvae.main([*base, "--sparsemap-encoding", "binary",
                        "--out", str(tmp_path / "binary")]) == 0
    warned = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    onehot, binary = (read_metrics(tmp_path / d / "metrics.jsonl")[-1] for d in ("onehot", "binary"))
    assert onehot["frozen_steps"] < 0.5 and onehot["single_vertex_rows"] < 1.0
    assert binary["frozen_steps"] == 1.0 and binary["single_vertex_rows"] == 1.0
    assert len(warned) == 1 and "epoch 2" in warned[0] and "--sparsemap-encoding onehot" in warned[0]


def test_options_a_method_does_not_use_are_ignored(tmp_path, data_dir):
    """--k beyond 2^D with sparsemap-budget, --budget beyond D with topk: not validated."""
    parse = lambda argv: bitvae.resolve_args(bitvae.build_parser().parse_args(argv), None)  # noqa: E731
    assert parse(["--method", "sparsemap-budget", "--bits", "3", "--k", "9"]).budget == 1
    assert parse(["--method", "topk", "--bits", "4", "--budget", "40"]).k == 10
    assert parse(["--bits", "128"]).gumbel_rate == 1e-4
    assert parse(["--bits", "128", "--gumbel-rate", "2e-5"]).gumbel_rate == 2e-5
    # the authors' variants reach the estimator only for the method that uses them
    est = bitvae.make_method_estimator(parse(["--method", "sparsemap", "--sparsemap-init", "random",
                                              "--sfe-plus-baseline", "authors"]))
    assert est.options["sparsemap_init"] == "random" and est.options["sparsemap_encoding"] == "onehot"
    assert "sfe_plus_baseline" not in est.options
    est = bitvae.make_method_estimator(parse(["--method", "sfe-plus", "--sfe-plus-baseline",
                                              "authors", "--sparsemap-init", "random"]))
    assert est.options == {"sfe_plus_baseline": "authors"}




@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
def test_plot_overlays_runs(cli_runs, tmp_path):
    from experiments.plot import main as plot_main
    assert plot_main([str(cli_runs["topk"]), str(cli_runs["sfe"]),
                      "--out", str(tmp_path / "all_")]) == 0
    assert (tmp_path / "all_calls.png").is_file()


def _assert_identical(a, b, where):
    """Exact equality of nested checkpoint values (arrays bit for bit)."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_identical(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_identical(x, y, f"{where}/{i}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), where
    else:
        assert a == b, where


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
@pytest.mark.parametrize("method", RESUMED)
def test_resume_reproduces_an_uninterrupted_run(cli_runs, method):
    a, b = cli_runs[method], cli_runs[f"{method}-resumed"]
    ma, mb = (read_metrics(d / "metrics.jsonl") for d in (a, b))
    for r in ma + mb:
        r.pop("seconds"), r.pop("cpu_seconds")
    assert ma == mb
    ca, cb = (load_checkpoint(d / "last.npz") for d in (a, b))
    for key in ("model", "optimizer", "estimator", "rng_data", "rng_noise", "step", "best_epoch"):
        _assert_identical(ca[key], cb[key], key)
    ta, tb = (json.loads((d / "test.json").read_text()) for d in (a, b))
    for r in (ta, tb):
        for key in TIMING_KEYS:
            r.pop(key)
    assert ta == tb


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
def test_resume_with_other_options_exits_2(capsys, cli_runs, data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(cli_runs["topk"], out)
    code, err = _exit_code_and_stderr(capsys, ["--method", "topk", "--epochs", "3", "--out",
                                               str(out), "--data-dir", str(data_dir), *SMOKE,
                                               "--resume", "--k", "5"])
    assert code == 2 and len(err) == 1 and "--k 10 (checkpoint) vs 5" in err[0], err


def _exit_code_and_stderr(capsys, argv):
    with pytest.raises(SystemExit) as info:
        bitvae.main(argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv, message", [
    (["--method", "vimco"], "invalid choice"),
    (["--bits", "0"], "positive integer"),
    (["--k", "0"], "positive integer"),
    (["--bits", "3", "--k", "9"], "exceeds the 2^D"),
    (["--method", "sparsemap-budget", "--budget", "40"], "at most --bits"),
    (["--method", "sparsemap", "--sparsemap-encoding", "ternary"], "invalid choice"),
    (["--method", "sparsemap", "--sparsemap-init", "zeros"], "invalid choice"),
    (["--method", "sfe-plus", "--sfe-plus-baseline", "mean"], "invalid choice"),
    (["--max-train", "60000"], "exceeds"),
    (["--lr", "nan"], "positive"),
    (["--resume"], "no checkpoint"),
])
def test_bad_values_exit_2_with_one_line(capsys, tmp_path, data_dir, argv, message):
    code, err = _exit_code_and_stderr(capsys, [*SMOKE, "--out", str(tmp_path / "o"),
                                               "--data-dir", str(data_dir), *argv])
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_unwritable_out_and_missing_gpu_exit_2(capsys, tmp_path, data_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, err = _exit_code_and_stderr(capsys, ["--out", str(blocker / "sub"), *SMOKE])
    assert code == 2 and len(err) == 1 and "not a writable directory" in err[0]
    from refimpl.backend import cupy_available
    if not cupy_available():
        code, err = _exit_code_and_stderr(capsys, ["--backend", "cupy", "--out", str(tmp_path)])
        assert code == 2 and len(err) == 1 and "cupy" in err[0]


def test_corrupt_data_file_exits_2_with_one_line(capsys, tmp_path, data_dir):
    """Decision: a corrupt dataset is bad input (like a bad option): status 2, one line."""
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "fashion-mnist", copy / "fashion-mnist")
    path = copy / "fashion-mnist" / "t10k-images-idx3-ubyte.gz"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))
    code, err = _exit_code_and_stderr(capsys, ["--out", str(tmp_path / "o"), "--data-dir",
                                               str(copy), "--no-download", *SMOKE])
    assert code == 2 and len(err) == 1, err
    assert "t10k-images-idx3-ubyte.gz" in err[0] and "Traceback" not in err[0]


def test_rerun_without_resume_exits_2_and_overwrite_replaces_the_run(capsys, tmp_path, data_dir):
    """Also: the progress lines off a terminal (capsys is no TTY) and the data source."""
    from experiments.data import FILES
    argv = ["--epochs", "1", "--log-every", "1", "--out", str(tmp_path), "--data-dir",
            str(data_dir), *SMOKE]
    assert bitvae.main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("epoch 1/1: 1/2 steps, ") and ", run ETA " in line for line in err)
    assert any(line.startswith("epoch 1: train ELBO") and ", run ETA " in line for line in err)
    assert any(line.startswith("test (NLL, 4 samples): 1/1 batches in ") for line in err)
    source = json.loads((tmp_path / "config.json").read_text())["data"]
    name = "train-images-idx3-ubyte.gz"
    assert source["dir"] == str((data_dir / "fashion-mnist").resolve())
    assert source["sha256"][name] == FILES[("fashion-mnist", name)].sha256
    first = (tmp_path / "test.json").read_bytes()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / ".best.x1y2.npz.tmp").write_bytes(b"left by kill -9")
    code, err = _exit_code_and_stderr(capsys, argv)
    assert code == 2 and len(err) == 1 and "already holds a run" in err[0], err
    assert (tmp_path / "test.json").read_bytes() == first
    assert bitvae.main([*argv, "--overwrite", "--seed", "3"]) == 0
    assert (tmp_path / "test.json").read_bytes() != first
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".*.tmp"))


def test_bitvae_step_benchmark_refuses_missing_or_corrupt_data(capsys, tmp_path, data_dir,
                                                              monkeypatch):
    from benchmarks import bitvae_step
    copy = tmp_path / "data" / "fashion-mnist"
    copy.mkdir(parents=True)
    raw = bytearray((data_dir / "fashion-mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (copy / "train-images-idx3-ubyte.gz").write_bytes(bytes(raw))
    places = [(tmp_path / "data", "wrong checksum")]
    if not Path("/usr/share/datasets/fashion-mnist").exists():      # else found there
        (tmp_path / "empty").mkdir()
        places.append((tmp_path / "empty", "not found"))
    monkeypatch.delenv("REFIMPL_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    for where, message in places:
        with pytest.raises(SystemExit) as info:
            bitvae_step.main(["--quick", "--data-dir", str(where)])
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(err) == 1 and message in err[0], err
        assert "--synthetic" in err[0]
    images, source = bitvae_step._images(8, tmp_path / "empty", synthetic=True)
    assert images.shape == (8, 784) and images.dtype == np.uint8 and source == "random bytes"


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
def test_non_finite_loss_stops_with_status_1_and_keeps_the_checkpoint(capsys, tmp_path,
                                                                      data_dir, monkeypatch):
    calls = {"n": 0}
    encode = BitVAE.encode

    def poisoned(self, images):            # NaN scores from the 4th training batch on
        t = encode(self, images)
        if images.shape[0] == 64 and t.requires_grad:
            calls["n"] += 1
            if calls["n"] >= 4:
                t.data[0, 0] = np.nan
        return t

    monkeypatch.setattr(BitVAE, "encode", poisoned)
    code = bitvae.main(["--method", "sfe", "--epochs", "3", "--out", str(tmp_path),
                        "--data-dir", str(data_dir), *SMOKE])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "non-finite loss at epoch 2, step 2" in err, err
    assert load_checkpoint(tmp_path / "last.npz")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1]
    assert not (tmp_path / "test.json").exists()


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as info:
        bitvae.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--backend", "--method", "--bits", "--k", "--budget", "--epochs", "--batch-size",
                   "--lr", "--seed", "--data-dir", "--out", "--max-train", "--nll-samples",
                   "--resume", "--dtype", "--sparsemap-encoding"):
        assert option in text, option
