"""experiments.signal_game and experiments.signal_data: ops, gradients through the real
game, receiver calls, game sampling, synthetic and real features, smoke runs, resume, CLI."""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import refimpl
from experiments import common
from experiments import signal_data as sd
from experiments import signal_game as sg
from nets import Tensor
from refimpl.gradcheck import check_vjp

from _params import assign, flat

ROOT = Path(__file__).resolve().parents[1]
SMALL_DATA = ["--n-concepts", "24", "--per-concept", "6", "--feature-dim", "48"]
SMALL_NET = ["--vocab", "16", "--hidden", "24", "--embedding", "12", "--game-size", "4",
             "--batch-size", "32", "--val-games", "64", "--max-test", "96"]


# --------------------------------------------------------------------------- ops

def test_pair_scores_matches_gather_and_its_gradient():
    rng = np.random.default_rng(0)
    B, C, E, n = 4, 3, 5, 9
    idx = np.array([2, 0, 2, 3, 0, 2, 1, 3, 3])
    msg, cand = rng.normal(size=(n, E)), rng.normal(size=(B, C, E))
    out = sg.pair_scores(Tensor(msg), Tensor(cand), idx)
    np.testing.assert_allclose(out.data, np.einsum("ne,nce->nc", msg, cand[idx]), atol=1e-12)
    u = rng.normal(size=(n, C))
    m_t, c_t = Tensor(msg, requires_grad=True), Tensor(cand, requires_grad=True)
    sg.pair_scores(m_t, c_t, idx).backward(u)
    np.testing.assert_allclose(m_t.grad, np.einsum("nc,nce->ne", u, cand[idx]), atol=1e-12)
    g_cand = np.zeros_like(cand)
    np.add.at(g_cand, idx, u[:, :, None] * msg[:, None, :])
    np.testing.assert_allclose(c_t.grad, g_cand, atol=1e-12)

    def f(x):
        return sg.pair_scores(Tensor(x), Tensor(cand), idx).data

    def vjp(x, w):
        t = Tensor(x, requires_grad=True)
        sg.pair_scores(t, Tensor(cand), idx).backward(w)
        return t.grad

    check_vjp(f, vjp, msg, piece=lambda x: np.zeros(1, bool))


def test_embed_rows_and_straight_value():
    rng = np.random.default_rng(1)
    table = Tensor(rng.normal(size=(6, 3)), requires_grad=True)
    cols = np.array([1, 4, 1, 0])
    out = sg.embed_rows(table, cols)
    np.testing.assert_array_equal(out.data, table.data[cols])
    g = rng.normal(size=(4, 3))
    out.backward(g)
    expected = np.zeros((6, 3))
    np.add.at(expected, cols, g)
    np.testing.assert_allclose(table.grad, expected, atol=1e-12)
    t = Tensor(rng.normal(size=5), requires_grad=True)
    sv = sg.straight_value(np.array([0, 1, 1, 0, 1.0]), t * 3.0)
    np.testing.assert_array_equal(sv.data, [0, 1, 1, 0, 1])
    sv.sum().backward()
    np.testing.assert_allclose(t.grad, np.full(5, 3.0))


# --------------------------------------------------------------------------- model gradients

def _tiny(method, seed=0):
    rng = np.random.default_rng(seed)
    data = sd.make_synthetic_features(seed=seed, n_concepts=8, per_concept=3, dim=6)
    game = sg.Game(rng, 6, dtype=np.float64, hidden=5, vocab=7, embedding=4,
                   message_init="embedding")
    game.sender2.weight.data *= 60.0          # logits / 10 spread enough for a sparse support
    images, target = sd.sample_games(data, 5, 3, rng)
    return game, sg.make_estimator_for(method), data.features.astype(np.float64), images, target


@pytest.mark.parametrize("method", ["dense", "sparsemax"])
def test_gradient_through_the_game_matches_finite_differences(method):
    game, est, x, images, target = _tiny(method)
    params = game.parameters()
    theta0 = flat(params)

    def obj():
        return sg.step_objective(game, est, method, x, images, target, np.random.default_rng(0), 0.1)

    def f(theta):
        assign(params, theta)
        return np.array([obj()[0].item()])

    def vjp(theta, u):
        assign(params, theta)
        game.zero_grad()
        obj()[0].backward()
        return u[0] * np.concatenate([p.grad.ravel() for p in params])

    def piece(theta):
        assign(params, theta)
        logits = game.sender_logits(x[images[np.arange(5), target]]).data
        return refimpl.sparsemax(logits) > 0 if method == "sparsemax" else np.ones(1, bool)

    if method == "sparsemax":
        assert piece(theta0).sum(1).min() < 7, "the test needs a partial support somewhere"
    check_vjp(f, vjp, theta0, piece=piece, n_directions=3, eps=1e-6, rtol=1e-5, atol=1e-8)


def test_receiver_calls_equal_support_sizes():
    game, est, x, images, target = _tiny("sparsemax", seed=2)
    before = game.receiver_rows
    _, e = sg.step_objective(game, est, "sparsemax", x, images, target, np.random.default_rng(0), 0.1)
    logits = game.sender_logits(x[images[np.arange(5), target]]).data
    support = (refimpl.sparsemax(logits) > 0).sum(axis=1)
    np.testing.assert_array_equal(e.calls, support)
    assert game.receiver_rows - before == int(support.sum())


def test_evaluate_marginalised_success_is_the_expectation():
    game, _, x, images, target = _tiny("dense", seed=3)
    ev = sg.evaluate(game, "dense", x, images, target)
    logits = game.sender_logits(x[images[np.arange(5), target]]).data
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    cand = np.einsum("bcf,fe->bce", x[images], game.project.weight.data)
    scores = np.einsum("me,bce->bmc", game.messages.data, cand)          # (B, vocab, C)
    correct = scores.argmax(-1) == target[:, None]
    assert ev["success"] == pytest.approx((p * correct).sum(1).mean(), rel=1e-9)
    assert ev["calls_mean"] == 7
    top = logits.argmax(1)
    assert ev["acc_argmax"] == pytest.approx(correct[np.arange(5), top].mean())
    ev_sfe = sg.evaluate(game, "sfe-nll", x, images, target)
    assert ev_sfe["calls_mean"] == 1 and ev_sfe["success"] == ev["acc_argmax"]
    # marginalised: both columns are the expectation
    assert ev["success_argmax"] == ev["success_sampled"] == ev["success"]
    assert ev_sfe["success_argmax"] == ev_sfe["success"]


@pytest.mark.parametrize("method", ["sfe-nll", "st-gumbel", "gumbel"])
def test_sampled_success_by_hand(method):
    """success_sampled: one message per game from the evaluation rng -- Gumbel-max hard sample
    (SFE, ST) or the relaxed softmax(s + g) (Gumbel) -- then the receiver's argmax."""
    game, _, x, images, target = _tiny("dense", seed=3)
    ev = sg.evaluate(game, method, x, images, target, rng=np.random.default_rng(9))
    logits = game.sender_logits(x[images[np.arange(5), target]]).data
    noisy = logits + np.random.default_rng(9).gumbel(size=logits.shape)
    if method == "gumbel":
        y = np.exp(noisy - noisy.max(1, keepdims=True))
        msg = (y / y.sum(1, keepdims=True)) @ game.messages.data
    else:
        msg = game.messages.data[noisy.argmax(1)]
    cand = np.einsum("bcf,fe->bce", x[images], game.project.weight.data)
    correct = np.einsum("be,bce->bc", msg, cand).argmax(1) == target
    assert ev["success_sampled"] == pytest.approx(correct.mean())


# --------------------------------------------------------------------------- data

def test_synthetic_features_are_seeded_normalised_and_structured():
    a = sd.make_synthetic_features(seed=3, n_concepts=10, per_concept=20, dim=256)
    b = sd.make_synthetic_features(seed=3, n_concepts=10, per_concept=20, dim=256)
    np.testing.assert_array_equal(a.features, b.features)
    assert a.features.shape == (200, 256) and a.features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a.features, axis=1), 1.0, atol=1e-5)
    cos = a.features @ a.features.T
    same = a.concepts[:, None] == a.concepts[None, :]
    off = ~np.eye(200, dtype=bool)
    assert cos[same & off].mean() > cos[~same].mean() + 0.2


def test_sample_games_distinct_concepts_and_fixed_seed():
    data = sd.make_synthetic_features(seed=0, n_concepts=20, per_concept=4, dim=8)
    images, target = sd.fixed_games(data, 300, 16, 7)
    images2, target2 = sd.fixed_games(data, 300, 16, 7)
    np.testing.assert_array_equal(images, images2)
    np.testing.assert_array_equal(target, target2)
    concepts = data.concepts[images]
    assert all(len(set(row)) == 16 for row in concepts)
    assert target.min() >= 0 and target.max() < 16
    assert len(np.unique(target)) == 16        # every position is used
    with pytest.raises(ValueError, match="distinct concepts"):
        sd.sample_games(data, 2, 21, np.random.default_rng(0))


def test_load_features_npz(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.random((12, 5)) + 0.1
    labels = np.array(["cat", "dog", "owl"] * 4)
    np.savez(tmp_path / "f.npz", features=feats, concepts=labels)
    data = sd.load_features_npz(tmp_path / "f.npz")
    assert data.n_concepts == 3 and data.features.shape == (12, 5)
    np.testing.assert_allclose(np.linalg.norm(data.features, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(data.concepts, np.tile([0, 1, 2], 4))
    np.savez(tmp_path / "bad.npz", features=feats)
    with pytest.raises(ValueError, match="missing"):
        sd.load_features_npz(tmp_path / "bad.npz")
    feats[3] = 0
    np.savez(tmp_path / "zero.npz", features=feats, concepts=labels)
    with pytest.raises(ValueError, match="zero"):
        sd.load_features_npz(tmp_path / "zero.npz")


# --------------------------------------------------------------------------- runs

def _run(tmp_path, method, *extra, name=None, steps=60, per_epoch=20):
    out = tmp_path / (name or method)
    sg.main(["--method", method, "--out", str(out), "--steps", str(steps),
             "--steps-per-epoch", str(per_epoch),
             *SMALL_DATA, *SMALL_NET, *extra])
    return out


@pytest.mark.parametrize("method", sg.METHODS)
def test_smoke_every_method(method, tmp_path):
    out = _run(tmp_path, method, "--lr", "0.01", steps=400, per_epoch=100)
    rows = common.read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [100, 200, 300, 400]
    assert all(np.isfinite(r["train_loss"]) for r in rows)
    test = json.loads((out / "test.json").read_text())
    assert 0 <= test["test_success"] <= 1 and test["random_guess"] == 0.25
    # the receiver's NLL on the fixed validation games (deterministic for every method)
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    if method in sg.ZERO_ONE:      # the reported training loss is the 0/1 error
        assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert "val_success_sampled" in rows[-1] and "val_success_argmax" in rows[-1]
    assert test["test_success_argmax"] == test["test_success"]
    if method in sg.MARGINALISED:
        assert test["test_success_sampled"] == test["test_success_argmax"]
    if method == "dense":
        assert rows[-1]["calls_mean"] == 16 and test["test_calls_mean"] == 16
        # the bit-VAE's names for the calls' quantiles, on every game: all 16
        assert all(test[f"test_calls_{q}"] == 16 for q in ("median", "p10", "p25", "p75", "p90"))
    elif method == "sparsemax":   # quantiles of the per-game support sizes, in order
        q = [test[f"test_calls_{k}"] for k in ("p10", "p25", "median", "p75", "p90")]
        assert q == sorted(q) and 1 <= q[0] and q[-1] <= 16
        assert 1 <= rows[-1]["calls_mean"] <= 16
    else:
        assert rows[-1]["calls_mean"] == (2 if method == "sfe-plus" else 1)
        assert test["test_calls_mean"] == 1


def test_marginalised_game_learns(tmp_path):
    out = _run(tmp_path, "sparsemax", "--lr", "0.01", steps=200)
    test = json.loads((out / "test.json").read_text())
    assert test["test_success"] > 0.6        # chance is 0.25


def test_sampled_success_differs_from_argmax_for_a_trained_sampling_game(tmp_path):
    out = _run(tmp_path, "st-gumbel", "--lr", "0.01", steps=200, per_epoch=100)
    test = json.loads((out / "test.json").read_text())
    assert test["test_success_argmax"] > 0.4          # trained (chance is 0.25)
    assert test["test_success_sampled"] != test["test_success_argmax"]


def test_features_file_runs(tmp_path):
    data = sd.make_synthetic_features(seed=5, n_concepts=10, per_concept=4, dim=20)
    path = tmp_path / "feats.npz"
    np.savez(path, features=data.features * 3.0, concepts=data.concepts * 7)
    out = _run(tmp_path, "dense", "--features", str(path), steps=20)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["n_images"] == 40 and cfg["n_features"] == 20 and cfg["n_data_concepts"] == 10


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
@pytest.mark.parametrize("method", ["sfe-01", "sparsemax"])
def test_resume_equals_uninterrupted(method, tmp_path):
    full = _run(tmp_path, method, name="full", steps=60)
    part = _run(tmp_path, method, name="part", steps=20)
    _run(tmp_path, method, "--resume", name="part", steps=60)
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(common.read_metrics(full / "metrics.jsonl")) == \
        strip(common.read_metrics(part / "metrics.jsonl"))
    a, b = (common.load_checkpoint(d / "last.npz") for d in (full, part))
    for k in a["model"]:
        np.testing.assert_array_equal(a["model"][k], b["model"][k])
    assert a["estimator"] == b["estimator"] and a["rng"] == b["rng"]
    assert common.untimed(json.loads((full / "test.json").read_text())) == \
        common.untimed(json.loads((part / "test.json").read_text()))


@pytest.mark.slow    # an end-to-end CLI run: skipped by the quick loop, run by CI
def test_resume_from_a_run_written_before_the_rename(tmp_path, capsys):
    # checkpoint.npz (now last.npz) and config.json's test_games (now max_test) still resume
    full = _run(tmp_path, "sparsemax", name="full", steps=40)
    part = _run(tmp_path, "sparsemax", name="part", steps=20)
    (part / "last.npz").rename(part / "checkpoint.npz")
    cfg = json.loads((part / "config.json").read_text())
    cfg["test_games"] = cfg.pop("max_test")
    (part / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    _run(tmp_path, "sparsemax", "--resume", name="part", steps=40)
    assert any(line.startswith("test: success ") for line in capsys.readouterr().err.splitlines())
    assert common.untimed(json.loads((full / "test.json").read_text())) == \
        common.untimed(json.loads((part / "test.json").read_text()))


@pytest.mark.parametrize("argv, needle", [
    (["--method", "reinforce"], "--method"),
    (["--steps", "0"], "--steps"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--variation", "-1"], "--variation"),
    (["--features", "/nonexistent.npz"], "--features"),
    (["--game-size", "30"], "--game-size"),
    (["--resume"], "no checkpoint"),
    (["--activation", "gelu"], "--activation"),
    (["--method", "sfe-plus", "--sfe-plus-baseline", "mean"], "--sfe-plus-baseline"),
])
def test_bad_cli_values_exit_2_with_one_line(argv, needle, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.signal_game", "--out", str(tmp_path / "o"),
                           *SMALL_DATA, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


# --------------------------------------------------------------------------- run directories

def _cli(out, *extra, steps=40):
    return [sys.executable, "-m", "experiments.signal_game", "--method", "sparsemax", "--out",
            str(out), "--steps", str(steps), "--steps-per-epoch", "2", *SMALL_DATA, *SMALL_NET,
            *extra]


def test_second_run_on_one_out_exits_2_and_a_killed_run_leaves_nothing_in_the_way(tmp_path):
    """Two processes on one --out: the second exits 2 naming the first's PID; after kill -9
    of the first, a rerun without --resume is refused, --resume continues, and the killed
    run's temporary files are gone."""
    out = tmp_path / "run"
    first = subprocess.Popen(_cli(out, steps=10_000_000), cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (out / "last.npz").exists():          # locked and checkpointed
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        second = subprocess.run(_cli(out), cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
        assert f"in use by another run (PID {first.pid}," in second.stderr
    finally:
        first.kill()
        first.wait()
    (out / ".checkpoint.k1l2.npz.tmp").write_bytes(b"as left by kill -9 mid-write")
    again = subprocess.run(_cli(out), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "already holds a run" in again.stderr, again.stderr
    resumed = subprocess.run(_cli(out, "--resume", steps=4), cwd=ROOT, capture_output=True,
                             text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert not list(out.glob(".*.tmp")) and (out / "test.json").is_file()
    assert json.loads((out / "config.json").read_text())["data"] == {"dataset": "synthetic",
                                                                   "data_seed": 0}
