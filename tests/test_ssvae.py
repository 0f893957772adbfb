"""experiments.ssvae: sparsemax loss, gradients through the real model, decoder calls,
smoke runs of every method, resume, warm start, CLI errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import refimpl
from experiments import common, ssvae
from nets import Tensor
from refimpl.gradcheck import check_vjp

from _params import assign, flat

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(n_pixels=12, n_classes=4, latent=2, classifier_hidden=(6,), vae_hidden=5)
SMALL = ["--max-train", "330", "--max-test", "64", "--batch-size", "32", "--epochs", "2"]


# --------------------------------------------------------------------------- sparsemax loss

def test_sparsemax_loss_value_gradient_and_zero():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(6, 5)) * 2
    y = rng.integers(0, 5, size=6)
    p = refimpl.sparsemax(s)
    tau = (s - p)[np.arange(6), np.argmax(p, axis=1)]
    support = p > 0
    expected = -s[np.arange(6), y] + 0.5 * ((s ** 2 - tau[:, None] ** 2) * support).sum(1) + 0.5
    t = Tensor(s, requires_grad=True)
    out = ssvae.sparsemax_loss(t, y)
    np.testing.assert_allclose(out.data, expected, rtol=1e-12, atol=1e-12)
    assert np.all(out.data >= -1e-12)
    out.sum().backward()
    np.testing.assert_allclose(t.grad, p - np.eye(5)[y], atol=1e-12)
    # zero loss when sparsemax is already the target's one-hot
    s1 = np.array([[5.0, 0.0, 0.0]])
    assert ssvae.sparsemax_loss(Tensor(s1), np.array([0])).data[0] == pytest.approx(0.0)


def test_sparsemax_loss_finite_differences():
    rng = np.random.default_rng(1)
    s = rng.normal(size=(4, 6))
    y = rng.integers(0, 6, size=4)

    def f(x):
        return ssvae.sparsemax_loss(Tensor(x), y).data

    def vjp(x, u):
        t = Tensor(x, requires_grad=True)
        ssvae.sparsemax_loss(t, y).backward(u)
        return t.grad

    check_vjp(f, vjp, s, piece=lambda x: refimpl.sparsemax(x) > 0)


# --------------------------------------------------------------------------- model gradients

def _tiny_setup(method, seed=0):
    rng = np.random.default_rng(seed)
    model = ssvae.SSVAE(rng, dtype=np.float64, **TINY)
    # sharper classifier scores so that sparsemax has a partial support
    model.classifier.layers[-1].weight.data *= 8.0
    x_lab = (rng.random((3, 12)) < 0.5).astype(np.float64)
    y_lab = rng.integers(0, 4, size=3)
    x_un = (rng.random((5, 12)) < 0.5).astype(np.float64)
    return model, ssvae.make_estimator_for(method), (x_lab, y_lab), (x_un, None)


@pytest.mark.parametrize("method", ["dense", "sparsemax"])
def test_gradient_through_the_model_matches_finite_differences(method):
    model, est, lab, unlab = _tiny_setup(method)
    params = model.parameters()
    theta0 = flat(params)

    def objective():
        return ssvae.step_objective(model, est, method, lab, unlab, np.random.default_rng(5), 9.0)

    def f(theta):
        assign(params, theta)
        return np.array([objective()[0].item()])

    def vjp(theta, u):
        assign(params, theta)
        model.zero_grad()
        objective()[0].backward()
        return u[0] * np.concatenate([p.grad.ravel() for p in params])

    def piece(theta):
        assign(params, theta)
        s = model.scores(unlab[0]).data
        return refimpl.sparsemax(s) > 0 if method == "sparsemax" else np.ones(1, bool)

    if method == "sparsemax":
        sup = piece(theta0)
        assert sup.sum(1).min() < 4, "the test needs a partial support somewhere"
    check_vjp(f, vjp, theta0, piece=piece, n_directions=3, eps=1e-6, rtol=1e-5, atol=1e-7)


def test_decoder_calls_equal_support_sizes():
    model, est, lab, unlab = _tiny_setup("sparsemax", seed=3)
    before = model.decoder_rows
    _, info = ssvae.step_objective(model, est, "sparsemax", lab, unlab, np.random.default_rng(0), 9.0)
    e = info["estimate"]
    support = (refimpl.sparsemax(info["scores"].data) > 0).sum(axis=1)
    np.testing.assert_array_equal(e.calls, support)
    # the decoder saw the labelled pairs (one each) plus exactly the support pairs
    assert model.decoder_rows - before == len(lab[0]) + int(support.sum())
    assert 0 < support.min() and support.max() <= 4


def test_evaluate_elbo_matches_enumeration():
    model, _, _, (x, _) = _tiny_setup("dense", seed=4)
    y = np.arange(5) % 4
    ev = ssvae.evaluate(model, x, y, "dense", seed=11)
    # brute force with the same noise
    noise = np.random.default_rng(11).standard_normal((5, 4, 2))
    s = model.scores(x).data
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    idx, cls = np.nonzero(p > 0)
    ell = model.pair_loss(model.encode_images(x), x, idx, np.eye(4)[cls], noise[idx, cls]).data
    elbo = (p[idx, cls] * (-ell - np.log(p[idx, cls]))).sum() / 5
    assert ev["elbo"] == pytest.approx(elbo, rel=1e-9)
    assert ev["calls_mean"] == 4.0


def test_split_is_fixed_and_disjoint():
    a = ssvae.make_split(1000, 0, n_validation=100)
    b = ssvae.make_split(1000, 0, n_validation=100)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert len(a["labelled"]) == 90 and len(a["unlabelled"]) == 810
    allidx = np.concatenate(list(a.values()))
    assert len(np.unique(allidx)) == 1000
    full = ssvae.make_split(60000, 0)
    assert [len(full[k]) for k in ("validation", "labelled", "unlabelled")] == [10000, 5000, 45000]


# --------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def warm_dir(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("warm")
    ssvae.main(["--labeled-only", "--method", "dense", "--out", str(out), "--data-dir",
                str(data_dir), *SMALL])
    return out


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
@pytest.mark.parametrize("method", ssvae.METHODS)
def test_smoke_every_method_loss_decreases(method, tmp_path, data_dir, warm_dir):
    out = tmp_path / method
    ssvae.main(["--method", method, "--out", str(out), "--data-dir", str(data_dir), *SMALL,
                "--epochs", "3", "--warm-start", str(warm_dir)])
    rows = common.read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    for r in rows:
        assert np.isfinite(r["val_elbo"]) and 0 <= r["test_acc"] <= 1
    expected_calls = {"dense": 10, "sfe": 1, "sfe-plus": 2, "sum-and-sample": 2, "gumbel": 1,
                      "st-gumbel": 1}
    if method in expected_calls:
        assert rows[-1]["calls_mean"] == expected_calls[method]
    else:
        assert 1 <= rows[-1]["calls_mean"] <= 10
    test = json.loads((out / "test.json").read_text())
    assert test["best_epoch"] in (1, 2, 3) and "test_acc" in test
    q = [test[f"test_calls_{k}"] for k in ("p10", "p25", "median", "p75", "p90")]   # bit-VAE names
    assert q == sorted(q) and 1 <= q[0] and q[-1] <= 10
    if method == "sparsemax":            # the data source: the four verified MNIST files
        from experiments.data import FILES
        source = json.loads((out / "config.json").read_text())["data"]
        assert source["dir"] == str((data_dir / "mnist").resolve())
        assert source["sha256"] == {f: i.sha256 for (d, f), i in FILES.items() if d == "mnist"}


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
def test_warm_start_loads_the_labelled_model(warm_dir):
    rng = np.random.default_rng(0)
    model = ssvae.SSVAE(rng)
    ssvae.warm_start(model, warm_dir, None)
    saved = common.load_checkpoint(warm_dir / "best.npz")["model"]
    for name, p in model.named_parameters():
        np.testing.assert_array_equal(p.data, saved[name])


def test_warm_start_epochs_train_the_labelled_loss_first_with_the_methods_class_loss(
        tmp_path, data_dir, monkeypatch):
    """--warm-start-epochs 2 --epochs 1: two labelled-only epochs (sparsemax loss for the
    sparsemax model, no estimator call), then one full epoch; only that one can be best."""
    seen = []
    real = ssvae.sparsemax_loss

    def spy(scores, targets):
        seen.append(int(scores.shape[0]))
        return real(scores, targets)

    monkeypatch.setattr(ssvae, "sparsemax_loss", spy)
    out = tmp_path / "run"
    ssvae.main(["--method", "sparsemax", "--out", str(out), "--data-dir", str(data_dir), *SMALL,
                "--epochs", "1", "--warm-start-epochs", "2"])
    rows = common.read_metrics(out / "metrics.jsonl")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "warm-start"), (2, "warm-start"),
                                                        (3, "train")]
    assert "calls_mean" not in rows[0] and "calls_mean" in rows[2]     # no unlabelled term
    assert seen                                                          # the sparsemax loss ran
    assert json.loads((out / "test.json").read_text())["best_epoch"] == 3
    assert json.loads((out / "config.json").read_text())["warm_start_epochs"] == 2




@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
@pytest.mark.parametrize("method", ["sfe", "sparsemax"])
def test_resume_equals_uninterrupted(method, tmp_path, data_dir):
    base = ["--method", method, "--data-dir", str(data_dir), *SMALL[:-2]]
    full, part = tmp_path / "full", tmp_path / "part"
    ssvae.main([*base, "--out", str(full), "--epochs", "2"])
    ssvae.main([*base, "--out", str(part), "--epochs", "1"])
    ssvae.main([*base, "--out", str(part), "--epochs", "2", "--resume"])
    strip = [{k: v for k, v in r.items() if k != "seconds"}
             for r in common.read_metrics(full / "metrics.jsonl")]
    again = [{k: v for k, v in r.items() if k != "seconds"}
             for r in common.read_metrics(part / "metrics.jsonl")]
    assert strip == again
    a = common.load_checkpoint(full / "last.npz")
    b = common.load_checkpoint(part / "last.npz")
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k])
    assert a["estimator"] == b["estimator"] and a["rng"] == b["rng"]


@pytest.mark.parametrize("argv, needle", [
    (["--method", "softmax"], "--method"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--max-train", "x"], "--max-train"),
    (["--labeled-only", "--warm-start", "x"], "exclude"),
    (["--labeled-only", "--warm-start-epochs", "2"], "exclude"),
    (["--warm-start-epochs", "-1"], "--warm-start-epochs"),
    (["--method", "sfe-plus", "--sfe-plus-baseline", "mean"], "--sfe-plus-baseline"),
    (["--resume"], "no checkpoint"),
    (["--warm-start", "/nonexistent"], "--warm-start"),
])
def test_bad_cli_values_exit_2_with_one_line(argv, needle, tmp_path, request):
    # never download; the --warm-start check comes after the data is loaded, so it needs the data
    data = ["--data-dir", str(request.getfixturevalue("data_dir"))] if "/nonexistent" in argv else []
    proc = subprocess.run([sys.executable, "-m", "experiments.ssvae", "--out", str(tmp_path / "o"),
                           "--max-train", "300", "--max-test", "10", "--no-download", *data, *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr
