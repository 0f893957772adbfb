"""The strict CPU stand-in for CuPy (tests/strict_cupy) and the host-sync budgets.

1. The stand-in is not vacuous: it refuses what CuPy refuses, and typical bugs
   planted in code that runs fine on NumPy fail under it the way CuPy fails.
2. Host syncs per training step, counted under the stand-in (docs/benchmarks.md,
   "Host syncs"): at most 1 per bit-VAE step for top-k, SFE and Gumbel outside
   log points; at most 1 per SparseMAP active-set iteration (+ a constant).
3. One short run of every method of the three experiments with ``--backend cupy``.
"""
import json

import numpy as np
import pytest

import strict_cupy as cp
from nets import Adam, Tensor
from nets.estimators import make_estimator
from refimpl import bitvector_oracle, sparsemap, sparsemap_vjp, topk_sparsemax
from refimpl.backend import to_numpy, xp_of

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def dev(a):
    return cp.asarray(np.asarray(a))


# --------------------------------------------------------------------------- 1. strictness

def test_manifest_is_the_minimum_supported_cupy():
    assert cp.MANIFEST["cupy_version"] == "14.0.0"              # setup.cfg: cupy-cuda1Nx>=14
    assert "put_along_axis" in cp.MANIFEST["names"]             # new in CuPy 14


def test_device_arrays_are_not_numpy_arrays():
    a = dev([1.0, 2.0, 3.0])
    assert not isinstance(a, np.ndarray) and xp_of(a) is cp
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError, match="Unsupported type"):
        a + np.ones(3)
    with pytest.raises(TypeError, match="Unsupported type"):
        np.ones(3) * a
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.concatenate([a, np.ones(3)])
    np.testing.assert_array_equal(to_numpy(a), [1.0, 2.0, 3.0])
    total = cp.sum(a)
    assert isinstance(total, cp.ndarray) and total.shape == ()    # 0-d device array, as CuPy
    assert isinstance(a.max(), cp.ndarray)
    assert isinstance(np.sum(a), cp.ndarray)                       # __array_function__ dispatch


def test_names_keywords_and_index_rules_of_the_manifest():
    a = dev(np.arange(6.0))
    with pytest.raises(AttributeError, match="no attribute 'cumulative_sum'"):
        cp.cumulative_sum(a)                                       # NumPy 2.1 has it, CuPy 14 not
    with pytest.raises(TypeError, match="unexpected keyword argument 'initial'"):
        cp.max(a, initial=0.0)                                     # NumPy keyword, not CuPy's
    with pytest.raises(NotImplementedError, match="kind"):
        cp.argsort(a, kind="quicksort")
    with pytest.raises(TypeError, match="slice"):
        a[:cp.sum(a > 2)]
    with pytest.raises(TypeError, match="Python index"):
        range(cp.sum(a > 2))
    assert int(cp.sum(a > 2)) == 3                                 # explicit: a counted sync


def test_singular_solve_returns_nan_as_cupy_does():
    out = cp.linalg.solve(dev(np.zeros((2, 2))), dev(np.ones(2)))
    assert np.isnan(to_numpy(out)).all()


def test_syncs_are_counted_by_line():
    a = dev(np.arange(4.0))
    with cp.count_syncs() as log:
        float(a.sum())
        bool(cp.any(a > 1))
        to_numpy(a)
        a[a > 1]                                                   # boolean mask: data-dependent shape
    assert log.n_syncs == 4
    assert sum(n for where, n in log.syncs.items() if where.endswith("backend.py:" +
               where.rsplit(":", 1)[1]) and "refimpl" in where) == 1


# --------------------------------------------------------------------------- 1b. planted bugs

def test_planted_state_dict_with_np_asarray_fails():
    from nets.layers import Linear
    layer = Linear(3, 2, np.random.default_rng(0), xp=cp)

    def buggy_state_dict(module):                    # the bug: np.asarray of a device array
        return {name: np.asarray(p.data) for name, p in module.named_parameters()}
    with pytest.raises(TypeError, match="Implicit conversion"):
        buggy_state_dict(layer)
    state = layer.state_dict()                       # the real one copies with to_numpy
    assert all(isinstance(v, np.ndarray) for v in state.values())


def test_planted_host_noise_in_a_device_op_fails():
    scores = dev(np.zeros((4, 3)))
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="Unsupported type"):
        cp.argmax(scores + rng.gumbel(size=scores.shape), axis=1)     # the bug
    cp.argmax(scores + cp.asarray(rng.gumbel(size=scores.shape)), axis=1)   # the fix


def test_planted_device_scalar_as_slice_bound_fails():
    probs = dev([0.5, 0.5, 0.0, 0.0])
    with pytest.raises(TypeError, match="slice"):
        probs[:cp.sum(probs > 0)]                                      # the bug
    assert probs[:int(cp.sum(probs > 0))].shape == (2,)                 # the fix: explicit sync


def test_planted_function_missing_from_the_manifest_fails(monkeypatch):
    """CuPy 13 has no put_along_axis: the default top-k fails on its first call."""
    scores = dev(np.random.default_rng(0).standard_normal((3, 6)))
    topk_sparsemax(scores, 2)                                          # fine on CuPy 14
    monkeypatch.delitem(cp._NAMES, "put_along_axis")
    monkeypatch.setattr(cp, "_CACHE", {})
    with pytest.raises(AttributeError, match="put_along_axis"):
        topk_sparsemax(scores, 2)


# --------------------------------------------------------------------------- 2. sync budgets

BITS_METHODS = {"topk": {"k": 10}, "sfe": {}, "sfe-plus": {}, "gumbel": {}, "st-gumbel": {}}


def _bitvae_step_syncs(method, options, D, steps=2):
    from experiments.bitvae import batch_objective
    from experiments.bitvae_model import BitVAE
    model = BitVAE(D, np.random.default_rng(0), xp=cp)
    est = make_estimator(method, "bits", **options)
    opt, rng = Adam(model.parameters(), lr=1e-3), np.random.default_rng(0)
    x = cp.asarray(np.random.default_rng(1).integers(0, 256, (8, 784), dtype=np.uint8))
    counts = []
    for _ in range(steps):
        with cp.count_syncs() as log:
            objective, _ = batch_objective(model, est, x, rng)
            opt.zero_grad()
            objective.backward()
            opt.step()
        counts.append(log)
    return counts


@pytest.mark.parametrize("method", sorted(BITS_METHODS))
def test_bitvae_step_has_at_most_one_host_sync(method):
    for log in _bitvae_step_syncs(method, BITS_METHODS[method], D=32):
        assert log.n_syncs <= 1, log.report()


def test_bitvae_epoch_syncs_only_at_log_points(data_dir):
    """A whole train_epoch: 1 sync per step + the log points (2 syncs each)."""
    from experiments import bitvae
    parser = bitvae.build_parser()
    args = parser.parse_args(["--method", "topk", "--max-train", "48", "--batch-size", "16",
                              "--log-every", "1000", "--data-dir", str(data_dir)])
    args = bitvae.resolve_args(args, parser) or args
    run = bitvae.Run(args, cp)
    images = cp.asarray(np.random.default_rng(0).integers(0, 256, (48, 784), dtype=np.uint8))
    with cp.count_syncs() as log:
        bitvae.train_epoch(run, images, 1, args)
    steps = 48 // 16
    assert log.n_syncs <= steps + 2, log.report()


SPARSEMAP_SYNC_CONSTANT = 4     # validation, warm-start certification, final support, VJP face check (docs/benchmarks.md)


@pytest.mark.parametrize("D", [32, 128])
def test_sparsemap_has_at_most_one_host_sync_per_iteration(D):
    t = cp.asarray(np.random.default_rng(D).standard_normal((64, D)))
    with cp.count_syncs() as log:
        result = sparsemap(t, bitvector_oracle)
        sparsemap_vjp(result, cp.ones_like(result.weights))
    assert log.n_syncs <= result.n_iter + SPARSEMAP_SYNC_CONSTANT, log.report()


def test_estimators_still_raise_on_bad_input_with_one_sync():
    est = make_estimator("topk", "bits", k=4)
    t = Tensor(dev(np.full((2, 5), np.nan)))
    with pytest.raises(ValueError, match="NaN or infinite"):
        est(t, lambda idx, z: Tensor(cp.zeros(idx.shape[0])))
    good = Tensor(dev(np.random.default_rng(0).standard_normal((2, 5))))
    with pytest.raises(ValueError, match="non-finite"):
        est(good, lambda idx, z: Tensor(cp.full(idx.shape[0], np.nan)))


# --------------------------------------------------------------------------- 3. the experiments

def test_bitvae_every_method_runs_on_the_standin(cupy_backend, tmp_path, data_dir):
    from experiments import bitvae
    for method in bitvae.METHODS:
        out = tmp_path / method
        code = bitvae.main(["--method", method, "--backend", "cupy", "--epochs", "1",
                            "--max-train", "32", "--batch-size", "32", "--nll-samples", "2",
                            "--max-test", "8", "--eval-batch-size", "32", "--out", str(out),
                            "--data-dir", str(data_dir)])
        assert code == 0, method
        config = json.loads((out / "config.json").read_text())
        assert "stand-in" in config["versions"]["cupy"]


def test_ssvae_every_method_runs_on_the_standin(cupy_backend, tmp_path, data_dir):
    from experiments import ssvae
    for method in ssvae.METHODS:
        ssvae.main(["--method", method, "--backend", "cupy", "--max-train", "130",
                    "--max-test", "32", "--batch-size", "32", "--epochs", "1",
                    "--out", str(tmp_path / method), "--data-dir", str(data_dir)])
        assert (tmp_path / method / "metrics.jsonl").is_file()


def test_signal_game_every_method_runs_on_the_standin(cupy_backend, tmp_path):
    from experiments import signal_game as sg
    for method in sg.METHODS:
        sg.main(["--method", method, "--backend", "cupy", "--steps", "4", "--steps-per-epoch",
                 "2", "--n-concepts", "24", "--per-concept", "6", "--feature-dim", "48",
                 "--vocab", "16", "--hidden", "24", "--embedding", "12", "--game-size", "4",
                 "--batch-size", "16", "--val-games", "32", "--max-test", "32",
                 "--out", str(tmp_path / method)])
        assert (tmp_path / method / "metrics.jsonl").is_file()
