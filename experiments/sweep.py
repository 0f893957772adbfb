"""Grids of experiment runs from a TOML spec, resumable, on local processes or a Dask cluster.

    python -m experiments.sweep SPEC.toml --root DIR [--workers N] [--dry-run]
    python -m experiments.sweep SPEC.toml --root DIR --engine dask --scheduler tcp://HOST:8786

The spec names one experiment, its methods, the seeds, the hyperparameter lists and the
options every run shares (names as the experiment's options, ``-`` or ``_``)::

    experiment = "signal_game"            # bitvae, ssvae or signal_game
    methods = ["sparsemax", "sfe-01"]
    seeds = [322, 323, 324]
    [grid]                                 # the Cartesian product of these lists
    lr = [0.01, 0.005, 0.001]
    entropy_coeff = [0.1, 0.05, 0.01]
    [options]                              # passed to every run (true = a flag)
    steps = 50000
    [method_options.sfe-01]                # optional: options of one method only
    batch_size = 32

Each run gets its own directory under ``--root``, named from its method, grid values and
seed (``sparsemax_lr=0.01_entropy_coeff=0.1_seed=322``); its command's output goes to
``--root/_logs/NAME.log``.  Rerunning a sweep completes it: a run whose ``test.json``
exists and whose ``config.json`` holds the requested options is skipped, one with a
checkpoint (``last.npz`` or ``checkpoint.npz``) is resumed with ``--resume``, a directory
whose ``config.json`` disagrees with the request is left untouched and reported failed.

Each run is a subprocess ``python -m experiments.<name>`` with ``OPENBLAS_NUM_THREADS``
(and the OpenMP/MKL equivalents) set to ``--threads`` so that parallel runs do not
oversubscribe the cores.  A failed run does not stop the sweep; the failures are listed
at the end with their logs and the exit status is 1.  Dask (``pip install
sparsemarg[sweep]``) is imported only by the dask engine; a task whose worker is lost is
rescheduled by Dask and resumes from the run's checkpoint.
"""
import concurrent.futures
import functools
import itertools
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from experiments.common import cli_error, make_parser, positive_int, resume_checkpoint

__all__ = ["SpecError", "Run", "load_spec", "expand", "run_state", "run_one", "run_local",
           "run_dask", "main"]

EXPERIMENTS = ("bitvae", "ssvae", "signal_game")
SPEC_KEYS = {"experiment", "methods", "seeds", "grid", "options", "method_options"}
RESERVED = {"method", "seed", "out", "resume", "overwrite"}
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
PROJECT_DIR = Path(__file__).resolve().parents[1]


class SpecError(ValueError):
    """A sweep spec that cannot be expanded (message names the key and the fix)."""


@dataclass
class Run:
    """One run of a sweep: its directory name, experiment and options (``_`` names)."""
    name: str
    experiment: str
    options: dict = field(default_factory=dict)

    def argv(self, out_dir, resume=False, overwrite=False):
        """The command line of this run writing into ``out_dir``."""
        args = [sys.executable, "-m", f"experiments.{self.experiment}"]
        for key, value in self.options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value is not False:
                args += [flag, _format(value)]
        args += ["--out", str(out_dir)]
        if resume:
            args.append("--resume")
        if overwrite:
            args.append("--overwrite")
        return args

    def to_dict(self):
        return {"name": self.name, "experiment": self.experiment, "options": dict(self.options)}


# =========================================================================== the spec

def _toml():
    try:
        import tomllib  # noqa: PLC0415  (Python >= 3.11)
    except ModuleNotFoundError:  # pragma: no cover - Python 3.9/3.10
        import tomli as tomllib  # noqa: PLC0415
    return tomllib


def load_spec(path):
    """The spec in the TOML file ``path`` as a dict (``SpecError`` if unreadable)."""
    toml = _toml()
    try:
        with open(path, "rb") as f:
            return toml.load(f)
    except OSError as exc:
        raise SpecError(f"cannot read spec {str(path)!r}: {exc.strerror}") from None
    except toml.TOMLDecodeError as exc:
        raise SpecError(f"spec {str(path)!r} is not valid TOML: {exc}") from None


def _format(value):
    """A value as a command-line word and a directory-name part (repr of floats: 5e-05)."""
    return repr(value) if isinstance(value, float) else str(value)


def _key(name, where):
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", name):
        raise SpecError(f"{where}: option name {name!r} is not an option name such as 'lr'")
    key = name.replace("-", "_")
    if key in RESERVED:
        raise SpecError(f"{where}: '{name}' is set by the sweep (methods, seeds, --root); remove it")
    return key


def _scalar(value, where):
    if isinstance(value, bool) or isinstance(value, (int, float, str)):
        return value
    raise SpecError(f"{where}: {value!r} is not a number, string or boolean")


def _list(spec, key, kind):
    values = spec.get(key)
    if not isinstance(values, list) or not values:
        raise SpecError(f"'{key}' must be a non-empty list, e.g. {key} = [{kind}]")
    return values


def expand(spec, known_options=None):
    """The list of :class:`Run` of a spec dict, in order method x grid x seed.

    ``known_options`` (a set of ``_`` option names) rejects names the experiment lacks.
    """
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise SpecError(f"unknown spec key(s) {', '.join(sorted(unknown))}; allowed: "
                        f"{', '.join(sorted(SPEC_KEYS))}")
    experiment = spec.get("experiment")
    if experiment not in EXPERIMENTS:
        raise SpecError(f"'experiment' must be one of {', '.join(EXPERIMENTS)}, not {experiment!r}")
    methods = _list(spec, "methods", '"sparsemax"')
    seeds = _list(spec, "seeds", "42")
    if not all(isinstance(m, str) for m in methods):
        raise SpecError("'methods' must be a list of strings")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise SpecError("'seeds' must be a list of non-negative integers")
    if len(set(methods)) < len(methods) or len(set(seeds)) < len(seeds):
        raise SpecError("'methods' and 'seeds' must not repeat a value")
    grid, options, per_method = {}, {}, {}
    for name, values in _table(spec, "grid").items():
        if not isinstance(values, list) or not values:
            raise SpecError(f"grid.{name} must be a non-empty list of values")
        grid[_key(name, "grid")] = [_scalar(v, f"grid.{name}") for v in values]
    for name, value in _table(spec, "options").items():
        options[_key(name, "options")] = _scalar(value, f"options.{name}")
    for method, table in _table(spec, "method_options").items():
        if method not in methods:
            raise SpecError(f"method_options.{method}: '{method}' is not in 'methods'")
        if not isinstance(table, dict):
            raise SpecError(f"method_options.{method} must be a table of options")
        per_method[method] = {_key(k, f"method_options.{method}"): _scalar(v, f"method_options.{method}.{k}")
                              for k, v in table.items()}
    for key in grid:
        if key in options or any(key in t for t in per_method.values()):
            raise SpecError(f"'{key}' is both in [grid] and a fixed option; keep one")
    if known_options is not None:
        names = set(grid) | set(options) | {k for t in per_method.values() for k in t}
        bad = sorted(names - set(known_options))
        if bad:
            raise SpecError(f"{experiment} has no option(s) {', '.join('--' + b.replace('_', '-') for b in bad)}"
                            f" (see python -m experiments.{experiment} --help)")
    runs = []
    for method in methods:
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            for seed in seeds:
                parts = [method] + [f"{k}={_format(v)}" for k, v in point.items()] + [f"seed={seed}"]
                name = re.sub(r"[^A-Za-z0-9_.=+-]", "-", "_".join(parts))
                opts = {"method": method, "seed": seed, **options, **per_method.get(method, {}), **point}
                runs.append(Run(name, experiment, opts))
    return runs


def _table(spec, key):
    table = spec.get(key, {})
    if not isinstance(table, dict):
        raise SpecError(f"'{key}' must be a table ([{key}])")
    return table


def experiment_options(experiment):
    """The ``_`` names of the options in ``python -m experiments.<experiment> --help``."""
    out = subprocess.run([sys.executable, "-m", f"experiments.{experiment}", "--help"],
                         capture_output=True, text=True, cwd=PROJECT_DIR, env=_env(1), check=False)
    return {m.replace("-", "_") for m in re.findall(r"(?<![\w-])--([a-z][a-z0-9-]*)", out.stdout)}


@functools.lru_cache(maxsize=None)
def _options_cached(experiment):
    return frozenset(experiment_options(experiment))


# =========================================================================== one run

def run_state(run, root):
    """``("done" | "resume" | "new" | "conflict", detail)`` of a run's directory.

    The requested options are compared with the ones ``config.json`` records (options it
    does not record, such as ``no_download``, cannot differ); the method's default of an
    option the spec leaves out is not compared.
    """
    out = Path(root) / run.name
    config_path = out / "config.json"
    if config_path.exists():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict):
            diff = [k for k, v in run.options.items() if k in config and not _same(config[k], v)]
            if diff:
                shown = ", ".join(f"{k}={config[k]!r} (requested {run.options[k]!r})" for k in diff)
                return "conflict", f"{out} holds another run: {shown}; move it or use another --root"
    if (out / "test.json").exists() and config_path.exists():
        return "done", ""
    if config_path.exists() and resume_checkpoint(out) is not None:
        return "resume", ""
    return "new", ""


def _same(a, b):
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _env(threads):
    env = dict(os.environ)
    for var in THREAD_VARS:
        env[var] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_DIR)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.setdefault("MPLBACKEND", "Agg")
    return env


def _die_with_parent():  # pragma: no cover - runs in the child before exec
    """Linux: the run is killed when the process that started it dies (a lost Dask worker)."""
    try:
        import ctypes  # noqa: PLC0415
        import signal  # noqa: PLC0415
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def run_one(run, root, threads=1, overwrite_flag=False):
    """Run (or skip, or resume) one run; return a result dict, never raise for a failed run.

    ``run`` is a :class:`Run` or its :meth:`Run.to_dict`.  Keys: ``name``, ``status``
    (``done`` skipped as finished, ``ok``, ``failed``), ``log``, ``returncode``,
    ``seconds``, ``resumed``, ``error``.
    """
    if isinstance(run, dict):
        run = Run(**run)
    root = Path(root).resolve()
    out = root / run.name
    log = root / "_logs" / f"{run.name}.log"
    state, detail = run_state(run, root)
    result = {"name": run.name, "status": "done", "log": str(log), "returncode": 0,
              "seconds": 0.0, "resumed": state == "resume", "error": ""}
    if state == "done":
        return result
    if state == "conflict":
        return {**result, "status": "failed", "returncode": None, "error": detail}
    out.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    # starting afresh in a non-empty directory: experiments that refuse to reuse one need
    # --overwrite; given when the leftovers are this run's own (config.json as requested,
    # no checkpoint: nothing to keep) or when the sweep was asked to (--overwrite)
    leftovers = any(p.name != ".lock" for p in out.iterdir())
    own = (out / "config.json").exists()
    overwrite = (state == "new" and leftovers and (own or overwrite_flag)
                 and "overwrite" in _options_cached(run.experiment))
    argv = run.argv(out, resume=state == "resume", overwrite=overwrite)
    start = time.perf_counter()
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv[1:])}\n")
        f.flush()
        code = subprocess.call(argv, stdout=f, stderr=subprocess.STDOUT, cwd=PROJECT_DIR,
                               env=_env(threads), stdin=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    result.update(returncode=code, seconds=time.perf_counter() - start)
    if code != 0:
        return {**result, "status": "failed", "error": f"exit status {code}"}
    if not (out / "test.json").exists():
        return {**result, "status": "failed", "error": "exited 0 without writing test.json"}
    return {**result, "status": "ok"}


# =========================================================================== engines

class _Progress:
    """runs done / running / failed: a tqdm bar on a terminal, else one log line per change."""

    def __init__(self, total, stream=sys.stderr):
        self.total, self.done, self.running, self.failed = total, 0, 0, 0
        self.stream, self.lock = stream, threading.Lock()
        self.bar = None
        if stream.isatty():
            from tqdm import tqdm  # noqa: PLC0415
            self.bar = tqdm(total=total, unit="run", file=stream, dynamic_ncols=True)

    def start(self):
        with self.lock:
            self.running += 1
            self._show()

    def finish(self, result, was_running=True):
        with self.lock:
            self.running -= 1 if was_running else 0
            self.done += 1
            self.failed += result["status"] == "failed"
            if self.bar is not None:
                self.bar.update(1)
            self._show(result)

    def _show(self, result=None):
        text = f"{self.done}/{self.total} done, {self.running} running, {self.failed} failed"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{self.running} running, {self.failed} failed")
        elif result is not None:
            what = {"done": "skipped (finished)", "ok": "finished", "failed": "FAILED"}[result["status"]]
            print(f"sweep: {text} | {result['name']} {what} {result['seconds']:.1f}s", file=self.stream,
                  flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def run_local(runs, root, workers=1, threads=1, overwrite_flag=False, stream=sys.stderr):
    """Run ``runs`` with at most ``workers`` subprocesses at a time; the list of results."""
    progress = _Progress(len(runs), stream)

    def task(run):
        progress.start()
        result = run_one(run, root, threads, overwrite_flag)
        progress.finish(result)
        return result

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(task, runs))
    finally:
        progress.close()


def run_dask(runs, root, scheduler, threads=1, overwrite_flag=False, stream=sys.stderr, retries=2):
    """Run ``runs`` as tasks of the Dask cluster at ``scheduler`` (an address or a Client)."""
    from distributed import Client, as_completed  # noqa: PLC0415  (optional extra [sweep])
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    progress = _Progress(len(runs), stream)
    try:
        futures = {client.submit(run_one, run.to_dict(), str(root), threads, overwrite_flag,
                                 key=f"sweep-{run.name}-{os.getpid()}", pure=False, retries=retries): run
                   for run in runs}
        progress.running = len(futures)   # submitted: running or queued on the cluster
        results = {}
        for future in as_completed(futures):
            run = futures[future]
            try:
                result = future.result()
            except Exception as exc:  # noqa: BLE001  (a task lost more often than Dask allows)
                result = {"name": run.name, "status": "failed", "log": str(Path(root) / "_logs" /
                          f"{run.name}.log"), "returncode": None, "seconds": 0.0, "resumed": False,
                          "error": f"dask: {type(exc).__name__}: {exc}"}
            results[run.name] = result
            progress.finish(result)
        return [results[run.name] for run in runs]
    finally:
        progress.close()
        if client is not scheduler:
            client.close()


# =========================================================================== CLI

def build_parser():
    parser = make_parser(__doc__.split("\n\n")[0], prog="python -m experiments.sweep")
    parser.add_argument("spec", metavar="SPEC.toml", help="the sweep's TOML spec")
    parser.add_argument("--root", required=True, metavar="DIR", help="folder of the run directories")
    parser.add_argument("--engine", choices=("local", "dask"), default="local",
                        help="local: subprocesses on this machine; dask: tasks on a dask.distributed cluster")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="local engine: runs at the same time")
    parser.add_argument("--scheduler", metavar="ADDRESS", help="dask engine: the scheduler's address")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="OPENBLAS/OMP/MKL threads of each run")
    parser.add_argument("--overwrite", action="store_true",
                        help="pass --overwrite to a run that starts afresh in a directory holding files "
                             "other than its own config.json (those are always replaced)")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and their state; run nothing")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.engine == "dask" and not args.scheduler:
        cli_error(parser, "--engine dask needs --scheduler ADDRESS (e.g. tcp://127.0.0.1:8786)")
    if args.engine == "local" and args.scheduler:
        cli_error(parser, "--scheduler is for --engine dask")
    try:
        spec = load_spec(args.spec)
        runs = expand(spec)
        runs = expand(spec, _options_cached(runs[0].experiment))     # run_one reuses the cache
    except SpecError as exc:
        cli_error(parser, str(exc))
    root = Path(args.root)
    if args.dry_run:
        try:
            for run in runs:
                state, detail = run_state(run, root)
                print(f"{state:8s} {run.name}  {' '.join(run.argv(root / run.name)[3:])}", flush=True)
        except BrokenPipeError:          # `... --dry-run | head`
            sys.stderr.close()
            return 0
        print(f"{len(runs)} runs", file=sys.stderr)
        return 0
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.engine == "local":
        results = run_local(runs, root, args.workers, args.threads, args.overwrite)
    else:
        try:
            import distributed  # noqa: F401,PLC0415
        except ImportError:
            cli_error(parser, "--engine dask needs dask.distributed: pip install 'sparsemarg[sweep]'")
        results = run_dask(runs, root, args.scheduler, args.threads, args.overwrite)
    failed = [r for r in results if r["status"] == "failed"]
    counts = {s: sum(r["status"] == s for r in results) for s in ("ok", "done", "failed")}
    print(f"sweep: {len(results)} runs in {time.perf_counter() - start:.1f}s: {counts['ok']} ran, "
          f"{counts['done']} already finished, {counts['failed']} failed", file=sys.stderr)
    for r in failed:
        print(f"  FAILED {r['name']}: {r['error']}; log {r['log']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
