"""experiments.sweep: a 4-run tiny signal-game grid on the local engine (2 workers) and on a
real dask.distributed LocalCluster (2 worker processes); skip-finished, resume-partial,
bad specs.  The reference for the results is the local engine's own output (same seeds,
numpy backend: the runs are deterministic) and the run's own test.json before a resume."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import sweep
from experiments.common import CHECKPOINTS, untimed

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "experiments" / "sweeps" / "tiny_signal_game.toml"


def _runs():
    return sweep.expand(sweep.load_spec(TINY))


def _untimed(path):
    """``test.json`` without its timing keys (equal runs differ only there)."""
    return untimed(json.loads(Path(path).read_text()))


def _tests(root):
    return {run.name: _untimed(root / run.name / "test.json") for run in _runs()}


@pytest.fixture(scope="module")
def local_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("local")
    results = sweep.run_local(_runs(), root, workers=2)
    assert [r["status"] for r in results] == ["ok"] * 4, results
    return root


def test_expand_names_and_options():
    runs = _runs()
    assert [r.name for r in runs] == ["sparsemax_lr=0.01_seed=322", "sparsemax_lr=0.01_seed=323",
                                      "sfe-01_lr=0.01_seed=322", "sfe-01_lr=0.01_seed=323"]
    assert runs[2].options["method"] == "sfe-01" and runs[2].options["steps"] == 20
    argv = runs[0].argv("/x")
    assert argv[argv.index("--lr") + 1] == "0.01" and argv[-2:] == ["--out", "/x"]


def test_local_engine_writes_every_run(local_root):
    for run in _runs():
        config = json.loads((local_root / run.name / "config.json").read_text())
        assert config["method"] == run.options["method"] and config["seed"] == run.options["seed"]
        assert config["lr"] == 0.01
        assert (local_root / "_logs" / f"{run.name}.log").exists()


def test_skip_finished_and_resume_partial(local_root):
    runs = _runs()
    before = _tests(local_root)
    stamp = {r.name: (local_root / r.name / "test.json").stat().st_mtime_ns for r in runs}
    # a crash after the last checkpoint, before the test: test.json missing, checkpoint kept
    partial = local_root / runs[1].name
    (partial / "test.json").unlink()
    results = sweep.run_local(runs, local_root, workers=2)
    assert [r["status"] for r in results] == ["done", "ok", "done", "done"]
    assert results[1]["resumed"]
    log = (local_root / "_logs" / f"{runs[1].name}.log").read_text()
    assert "--resume" in [line for line in log.splitlines() if line.startswith("#")][-1]
    assert _tests(local_root) == before
    for r in runs:
        if r.name != runs[1].name:
            assert (local_root / r.name / "test.json").stat().st_mtime_ns == stamp[r.name]


def test_conflicting_directory_fails_and_is_left_alone(tmp_path):
    run = _runs()[0]
    (tmp_path / run.name).mkdir()
    other = dict(run.options, lr=0.5)
    (tmp_path / run.name / "config.json").write_text(json.dumps(other))
    (tmp_path / run.name / "test.json").write_text("{}")
    result = sweep.run_one(run, tmp_path)
    assert result["status"] == "failed" and "lr=0.5" in result["error"]
    assert json.loads((tmp_path / run.name / "config.json").read_text())["lr"] == 0.5


def _epochs(run_dir):
    path = run_dir / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "experiments.sweep", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, check=False)


def test_cli_failure_exit_1_lists_log(tmp_path):
    spec = tmp_path / "bad_run.toml"
    spec.write_text('experiment = "signal_game"\nmethods = ["sparsemax"]\nseeds = [1]\n'
                    '[options]\nsteps = 2\ngame_size = 4\nn_concepts = 2\n')   # 2 concepts < 4
    out = _cli(spec, "--root", tmp_path / "root")
    assert out.returncode == 1, out.stderr
    assert "FAILED sparsemax_seed=1" in out.stderr and "_logs/sparsemax_seed=1.log" in out.stderr


@pytest.mark.parametrize("text, words", [
    ('experiment = "nope"\nmethods = ["a"]\nseeds = [1]\n', "'experiment' must be one of"),
    ('experiment = "signal_game"\nmethods = []\nseeds = [1]\n', "'methods' must be a non-empty list"),
    ('experiment = "signal_game"\nmethods = ["dense"]\nseeds = [1]\n[grid]\nlearning_rate = [1]\n',
     "has no option(s) --learning-rate"),
    ('experiment = "signal_game"\nmethods = ["dense"]\nseeds = [1]\n[options]\nseed = 3\n', "set by the sweep"),
    ('experiment = "signal_game"\nmethods = ["dense"\n', "not valid TOML"),
])
def test_bad_spec_exits_2_with_one_line(tmp_path, text, words):
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    out = _cli(spec, "--root", tmp_path / "root")
    assert out.returncode == 2 and words in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


def test_dry_run_lists_runs(tmp_path):
    out = _cli(TINY, "--root", tmp_path, "--dry-run")
    assert out.returncode == 0
    assert [line.split()[:2] for line in out.stdout.splitlines()] == [["new", r.name] for r in _runs()]
    assert not any(tmp_path.iterdir())


def test_dask_engine_equals_local(local_root, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        results = sweep.run_dask(_runs(), tmp_path, cluster.scheduler_address)
    assert [r["status"] for r in results] == ["ok"] * 4, results
    assert _tests(tmp_path) == _tests(local_root)


@pytest.mark.slow
def test_dask_lost_worker_resumes_from_checkpoint(tmp_path):
    """SIGKILL one of the two worker processes while both run: Dask reschedules the lost
    task, the run resumes from its checkpoint (its log shows a second, --resume command)
    and every result equals the local engine's on the same grid."""
    import os
    import signal
    import threading
    import time
    distributed = pytest.importorskip("distributed")
    spec = sweep.load_spec(TINY)
    spec["options"] = dict(spec["options"], steps=4000, steps_per_epoch=100)
    runs = sweep.expand(spec)
    local = sweep.run_local(runs, tmp_path / "local", workers=2)
    assert [r["status"] for r in local] == ["ok"] * 4
    root = tmp_path / "dask"
    results = {}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        thread = threading.Thread(target=lambda: results.update(
            out=sweep.run_dask(runs, root, cluster.scheduler_address)))
        thread.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:        # both workers mid-run, past a checkpoint
            started = [r for r in runs if any((root / r.name / c).exists() for c in CHECKPOINTS)
                       and not (root / r.name / "test.json").exists()
                       and _epochs(root / r.name) <= 25]          # of 40: far from the end
            if len(started) >= 2:
                break
            time.sleep(0.05)
        assert len(started) >= 2, "no run reached a checkpoint in 60 s"
        nanny = next(iter(cluster.workers.values()))
        os.kill(nanny.process.pid, signal.SIGKILL)
        thread.join(120)
    assert not thread.is_alive()
    assert [r["status"] for r in results["out"]] == ["ok"] * 4, results["out"]
    headers = [[line for line in (root / "_logs" / f"{r.name}.log").read_text().splitlines()
                if line.startswith("# ")] for r in runs]
    assert any(len(h) == 2 and "--resume" in h[1] for h in headers), headers
    assert _tests(root) == {r.name: _untimed(tmp_path / "local" / r.name / "test.json")
                            for r in runs}


def test_crash_before_first_checkpoint_restarts(tmp_path, local_root):
    # config.json as requested, no checkpoint, no test.json: the run starts again afresh
    run = _runs()[0]
    (tmp_path / run.name).mkdir()
    (tmp_path / run.name / "config.json").write_text((local_root / run.name / "config.json").read_text())
    assert sweep.run_state(run, tmp_path) == ("new", "")
    result = sweep.run_one(run, tmp_path)
    assert result["status"] == "ok" and not result["resumed"]
    assert _untimed(tmp_path / run.name / "test.json") == _tests(local_root)[run.name]


@pytest.mark.parametrize("spec_path", sorted((ROOT / "experiments" / "sweeps").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_committed_specs_expand_with_real_options(spec_path):
    spec = sweep.load_spec(spec_path)
    runs = sweep.expand(spec, known_options=sweep._options_cached(spec["experiment"]))
    grid = 1
    for values in spec.get("grid", {}).values():
        grid *= len(values)
    assert len(runs) == len(spec["methods"]) * grid * len(spec["seeds"])
    assert len({r.name for r in runs}) == len(runs)
    stated = [int(n) for n in re.findall(r"= (\d+) runs", spec_path.read_text())]
    assert stated == [len(runs)] or spec_path.stem.startswith("tiny"), stated   # the header's count
    if spec_path.stem.endswith("_cpu"):                # the reduced sweeps: >= 3 seeds per method
        assert len(spec["seeds"]) >= 3
