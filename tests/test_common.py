"""experiments.common (CLI, atomic files, checkpoints, metrics, progress) and experiments.plot."""
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments import common

ROOT = Path(__file__).resolve().parents[1]


def _assert_same(a, b, where="state"):
    """Exact equality of nested checkpoint values, types and dtypes included."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}/{i}")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"), where
    elif isinstance(a, float) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, where


# --------------------------------------------------------------------------- checkpoints

def test_checkpoint_round_trip_is_exact(tmp_path):
    rng = np.random.default_rng(42)
    rng.normal(size=7)
    state = {
        "params": {"enc": {"W": rng.normal(size=(3, 4)).astype(np.float32), "b": np.zeros(4)},
                   "list": [np.arange(3), np.array(True), np.empty((0, 2))]},
        "adam": {"step": 17, "beta": (0.9, 0.999), "m": [np.float64(1e-300), np.int8(-3)]},
        "rng": rng.bit_generator.state,
        "meta": {"method": "topk", "lr": 0.002, "best": float("-inf"), "nan": float("nan"),
                 "none": None, "flag": False, "empty": {}, "big": 2 ** 127 + 5},
    }
    path = tmp_path / "ckpt.npz"
    common.save_checkpoint(path, state)
    loaded = common.load_checkpoint(path)
    _assert_same(state, loaded)
    resumed = np.random.default_rng()
    resumed.bit_generator.state = loaded["rng"]
    assert np.array_equal(resumed.normal(size=5), rng.normal(size=5))


@pytest.mark.parametrize("state, error", [
    ({"a/b": 1}, ValueError), ({3: 1}, ValueError), ({"__tuple__": 1}, ValueError),
    ({"x": object()}, TypeError), ({"x": np.array([None])}, TypeError), ([1], TypeError),
])
def test_checkpoint_rejects_bad_state(tmp_path, state, error):
    with pytest.raises(error):
        common.save_checkpoint(tmp_path / "c.npz", state)


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    common.save_checkpoint(path, {"epoch": 1, "w": np.ones(3)})

    def explode(f, **arrays):
        f.write(b"PK partial bytes")
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(np, "savez", explode)
    with pytest.raises(KeyboardInterrupt):
        common.save_checkpoint(path, {"epoch": 2, "w": np.zeros(3)})
    monkeypatch.undo()
    assert common.load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def test_atomic_write_bytes_and_json(tmp_path):
    path = tmp_path / "x.json"
    common.write_json(path, {"a": np.float32(0.5), "b": np.arange(2), "p": Path("/r")})
    assert common.read_json(path) == {"a": 0.5, "b": [0, 1], "p": "/r"}
    with pytest.raises(RuntimeError):
        with common.atomic_open(path) as f:
            f.write(b"half")
            raise RuntimeError("boom")
    assert common.read_json(path)["b"] == [0, 1]
    common.atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and len(list(tmp_path.iterdir())) == 1


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        common.load_checkpoint(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(ValueError, match="without --resume"):
        common.load_checkpoint(tmp_path / "junk.npz")
    np.savez(tmp_path / "plain.npz", a=np.ones(2))
    with pytest.raises(ValueError, match="not a sparsemarg-checkpoint"):
        common.load_checkpoint(tmp_path / "plain.npz")


# --------------------------------------------------------------------------- metrics

def test_metrics_log_append_read_truncate(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with common.MetricsLog(path, keep_epochs=0) as log:
        for epoch in (1, 2, 3):
            log.log({"epoch": epoch, "loss": np.float32(1.0 / epoch)})
    assert [r["epoch"] for r in common.read_metrics(path)] == [1, 2, 3]
    with common.MetricsLog(path, keep_epochs=2) as log:  # resume from the epoch-2 checkpoint
        log.log({"epoch": 3, "loss": 0.1})
    records = common.read_metrics(path)
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[-1]["loss"] == 0.1
    with common.MetricsLog(path, keep_epochs=0):
        pass
    assert common.read_metrics(path) == []


def test_read_metrics_tolerates_only_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "lo')
    assert common.read_metrics(path) == [{"epoch": 1}]
    path.write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        common.read_metrics(path)
    assert common.read_metrics(tmp_path / "none.jsonl") == []


def test_summarize_calls():
    calls = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55])
    s = common.summarize_calls(calls, prefix="calls_")
    assert set(s) == {f"calls_{k}" for k in ("mean", "median", "p10", "p25", "p75", "p90")}
    assert s["calls_mean"] == calls.mean() and s["calls_median"] == np.median(calls)
    assert s["calls_p25"] == np.percentile(calls, 25) and s["calls_p90"] == np.percentile(calls, 90)
    assert all(type(v) is float for v in s.values())
    with pytest.raises(ValueError, match="empty"):
        common.summarize_calls(np.array([]))


def test_progress_logs_one_line_when_not_a_tty():
    out = io.StringIO()
    bar = common.progress(range(4), total=4, desc="epoch 3", file=out)
    for i in bar:
        bar.set_postfix(loss=1.0 / (i + 1), calls=12.0)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("epoch 3: 4/4 steps") and "loss=0.25" in lines[0] and "calls=12" in lines[0]


def test_progress_draws_a_bar_on_a_tty():
    pytest.importorskip("tqdm")

    class Tty(io.StringIO):
        def isatty(self):
            return True
    out = Tty()
    bar = common.progress(range(3), total=3, desc="epoch 1", file=out)
    for _ in bar:
        bar.set_postfix(loss=0.5)
    assert "it/s" in out.getvalue()  # tqdm's bar
    last = out.getvalue().split("\r")[-1]
    assert last.startswith("epoch 1: 3/3 steps in ") and last.endswith("s, loss=0.5\n")


# --------------------------------------------------------------------------- CLI

def _parser():
    parser = common.make_parser("test", prog="exp")
    return common.add_common_args(parser, epochs=100, batch_size=64)


def test_parser_defaults():
    args = _parser().parse_args([])
    assert (args.backend, args.seed, args.epochs, args.batch_size, args.lr) == ("numpy", 42, 100, 64, None)
    assert (args.dtype, args.max_train, args.resume, args.data_dir, args.out) == ("float32", None, False,
                                                                                  None, None)
    assert args.download is True and _parser().parse_args(["--no-download"]).download is False


@pytest.mark.parametrize("argv", [
    ["--epochs", "0"], ["--batch-size", "x"], ["--lr", "-1"], ["--lr", "nan"], ["--seed", "-2"],
    ["--backend", "jax"], ["--dtype", "float16"], ["--max-train", "1.5"], ["--bogus"],
])
def test_bad_values_exit_2_with_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("exp: error: ")


def test_cli_error_and_select_backend(capsys, monkeypatch):
    assert common.select_backend("numpy") is np
    import refimpl.backend

    def no_gpu(name):
        raise RuntimeError("backend 'cupy': CuPy is installed but no GPU is visible\n(details)")
    monkeypatch.setattr(refimpl.backend, "get_xp", no_gpu)
    with pytest.raises(SystemExit) as exc:
        common.select_backend("cupy", "exp")
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("exp: error: --backend cupy: backend 'cupy': CuPy is installed "
                                       "but no GPU is visible (details)\n")


def test_prepare_out_dir(tmp_path, capsys):
    out = common.prepare_out_dir(tmp_path / "a" / "b", "exp")
    assert out.is_dir() and list(out.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit) as exc:
        common.prepare_out_dir(tmp_path / "file" / "sub", "exp")
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not a writable directory" in err


# --------------------------------------------------------------------------- run directories

_HOLD_LOCK = ("import sys, time; from experiments.rundir import lock_run_dir; "
              "lock_run_dir(sys.argv[1]); print('locked', flush=True); time.sleep(60)")


def _hold_lock(out):
    """A separate process that holds the lock of ``out`` until killed."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(out)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def _exit_2(capsys, fn):
    with pytest.raises(SystemExit) as exc:
        fn()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_run_directory_lock_is_exclusive_and_a_killed_holder_s_lock_is_taken_over(tmp_path,
                                                                                    capsys):
    holder = _hold_lock(tmp_path)
    try:
        err = _exit_2(capsys, lambda: common.run_directory(tmp_path, "exp").__enter__())
        assert f"in use by another run (PID {holder.pid}," in err
    finally:
        holder.kill()                      # SIGKILL: the lock file stays, with the dead PID
        holder.wait()
    assert (tmp_path / ".lock").read_text() == f"{holder.pid}\n"
    with common.run_directory(tmp_path, "exp") as out:
        assert out == tmp_path and (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"
    with common.run_directory(tmp_path, "exp"):         # released when the block ends
        pass


def test_stale_lock_file_of_a_dead_pid_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(f"{dead.pid}\n")
    with common.run_directory(tmp_path, "exp"):
        assert (tmp_path / ".lock").read_text() == f"{os.getpid()}\n"


def test_a_directory_holding_a_run_needs_resume_or_overwrite(tmp_path, capsys):
    run_files = ["config.json", "metrics.jsonl", "test.json", "best.npz", "last.npz", "elbo.png"]
    for name in run_files + ["notes.txt", "other.png.bak"]:
        (tmp_path / name).write_text("x")
    err = _exit_2(capsys, lambda: common.run_directory(tmp_path, "exp").__enter__())
    assert "already holds a run (config.json, metrics.jsonl" in err and "--overwrite" in err
    assert all((tmp_path / n).exists() for n in run_files)      # nothing touched
    with common.run_directory(tmp_path, "exp", resume=True):
        assert all((tmp_path / n).exists() for n in run_files)
    with common.run_directory(tmp_path, "exp", overwrite=True):
        left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [".lock", "notes.txt", "other.png.bak"]       # only the run's files went
    err = _exit_2(capsys, lambda: common.run_directory(tmp_path, "exp", resume=True,
                                                       overwrite=True).__enter__())
    assert "--resume and --overwrite exclude each other" in err


@pytest.mark.parametrize("resume", [False, True])
def test_stale_temporary_files_are_removed_at_start_and_resume(tmp_path, resume):
    stale = [".best.k2j4x.npz.tmp", ".last.ab_c.npz.tmp", ".config.q1.json.tmp",
             ".metrics.zz.jsonl.tmp", ".checkpoint.77.npz.tmp"]
    keep = [".notes.x.txt.tmp", "data.tmp"]
    for name in stale + keep:
        (tmp_path / name).write_text("x")
    with common.run_directory(tmp_path, "exp", resume=resume):
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".lock"] + keep)


def test_progress_off_a_terminal_logs_every_n_steps_with_the_run_eta():
    out = io.StringIO()
    clock = common.RunClock(total_steps=10, evals_left=2, test_cost=3.0)
    bar = common.progress(range(5), total=5, desc="epoch 1/2", file=out, log_every=2, clock=clock)
    for i in bar:
        bar.set_postfix(loss=float(i))
    lines = out.getvalue().splitlines()
    assert len(lines) == 3                                  # steps 2 and 4, then the summary
    assert lines[0].startswith("epoch 1/2: 2/5 steps, ") and ", ETA " in lines[0]
    assert ", run ETA " in lines[0] and lines[0].endswith("loss=1")
    assert lines[1].startswith("epoch 1/2: 4/5 steps, ") and lines[1].endswith("loss=3")
    assert lines[2].startswith("epoch 1/2: 5/5 steps in ")
    assert clock.steps == 5 and clock.steps_left == 5


def test_run_clock_counts_training_evaluation_and_the_test_phase():
    clock = common.RunClock(total_steps=100, steps_done=40, evals_left=3, test_cost=5.0)
    assert clock.eta() is None                               # nothing timed yet
    for _ in range(10):
        clock.add_step(0.5)
    clock.add_eval(2.0)
    # 50 steps left at 0.5 s, 2 validations left and 5 validation passes of test at 2 s
    assert clock.eta() == 50 * 0.5 + (2 + 5) * 2.0
    assert common.format_seconds(3723) == "1:02:03" and common.format_seconds(65.4) == "1:05"


def test_plot_cli_error_is_one_line_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.plot", str(tmp_path / "a"),
                           str(tmp_path / "b")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "need --out" in proc.stderr


# --------------------------------------------------------------------------- plotting

def _fake_run(root, method, with_rate=True, n_epochs=4, name=None, **config):
    run = root / (name or method)
    run.mkdir()
    common.write_json(run / "config.json", {"method": method, **config})
    with common.MetricsLog(run / "metrics.jsonl", keep_epochs=0) as log:
        for e in range(1, n_epochs + 1):
            rec = {"epoch": e, "train_elbo": -300.0 + 10 * e, "val_elbo": -305.0 + 9 * e}
            if with_rate:
                rec.update(rate=20.0 - e, distortion=280.0 - 5 * e)
                rec.update(common.summarize_calls(np.arange(1, 11) * e, prefix="calls_"))
            else:
                rec.update(val_acc=0.5 + 0.1 * e, calls_mean=3.0)
            log.log(rec)
    if with_rate:
        common.write_json(run / "test.json", {"rate": 15.0, "distortion": 262.0, "elbo": -277.0})
    return run


def _is_png(path):
    return Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_run_writes_pngs(tmp_path):
    pytest.importorskip("matplotlib")
    from experiments import plot
    run = _fake_run(tmp_path, "topk")
    written = plot.plot_run(run)
    assert sorted(p.name for p in written) == ["calls.png", "elbo.png", "rate_distortion.png"]
    assert all(_is_png(p) for p in written)


def test_plot_runs_overlay_and_cli(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from experiments import plot
    a, b = _fake_run(tmp_path, "sparsemap"), _fake_run(tmp_path, "sfe", with_rate=False)
    (b / "config.json").unlink()  # label falls back to the directory name
    written = plot.plot_runs([a, b], tmp_path / "figs" / "cmp")
    assert sorted(p.name for p in written) == ["cmp_accuracy.png", "cmp_calls.png", "cmp_elbo.png",
                                               "cmp_rate_distortion.png"]
    assert all(_is_png(p) for p in written)
    assert plot.main([str(a), str(b), "--out", str(tmp_path / "cli-")]) == 0
    assert _is_png(tmp_path / "cli-calls.png")
    assert str(tmp_path / "cli-calls.png") in capsys.readouterr().out.splitlines()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot.plot_run(empty) == []


def test_plot_overlay_labels_runs_by_what_differs(tmp_path):
    from experiments import plot
    runs = [_fake_run(tmp_path, "topk", name=f"r{i}", experiment="bitvae", lr=lr, seed=seed,
                      out=str(tmp_path / f"r{i}"), versions={"numpy": "x"})
            for i, (lr, seed) in enumerate([(1e-3, 42), (2e-3, 42), (2e-3, 43)])]
    labels = [r["label"] for r in plot.label_runs([plot.load_run(d) for d in runs])]
    assert labels == ["lr=0.001, seed=42", "lr=0.002, seed=42", "lr=0.002, seed=43"]
    other = _fake_run(tmp_path, "sfe", name="r3", experiment="bitvae", lr=1e-3, seed=42)
    labels = [r["label"] for r in plot.label_runs([plot.load_run(d) for d in (runs[0], other)])]
    assert labels == ["topk", "sfe"]                       # only the method differs
    same = [plot.load_run(runs[1]), plot.load_run(runs[1])]
    assert [r["label"] for r in plot.label_runs(same)] == ["r1", "r1"]   # nothing differs


def test_plot_refuses_to_mix_experiments(tmp_path, capsys):
    from experiments import plot
    a = _fake_run(tmp_path, "topk", experiment="bitvae")
    b = _fake_run(tmp_path, "sparsemax", experiment="signal_game")
    with pytest.raises(ValueError, match="mix experiments.*bitvae, signal_game"):
        plot.plot_runs([a, b], tmp_path / "cmp")
    with pytest.raises(SystemExit) as exc:
        plot.main([str(a), str(b), "--out", str(tmp_path / "cmp")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "overlay runs of one experiment" in err[0]
    assert not list(tmp_path.glob("cmp*"))


def test_plot_marks_the_points_of_short_runs(tmp_path):
    pytest.importorskip("matplotlib")
    from experiments import plot
    one = plot.load_run(_fake_run(tmp_path, "topk", n_epochs=1))
    long = plot.load_run(_fake_run(tmp_path, "sfe", n_epochs=plot.SHORT_RUN + 1))
    fig = plot._figure([one, long], "elbo")
    markers = {line.get_label(): line.get_marker() for line in fig.axes[0].lines}
    assert markers["topk train"] == "o" and markers["topk validation"] == "o"   # 1 epoch: a point
    assert markers["sfe train"] in ("None", None, "")
    fig = plot._figure([one], "calls")
    assert fig.axes[0].lines[0].get_marker() == "o"
