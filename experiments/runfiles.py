"""Files a run writes, shared by the experiments: atomic writes, JSON,
checkpoints (exact round trip), ``metrics.jsonl`` and the progress display.
Re-exported by :mod:`experiments.common`.

Nothing here imports CuPy: checkpoints take NumPy arrays (move device arrays
with ``refimpl.backend.to_numpy`` first).
"""
import contextlib
import json
import math
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_open", "atomic_write_bytes", "write_json", "read_json",
           "save_checkpoint", "load_checkpoint", "MetricsLog", "read_metrics", "truncate_metrics",
           "summarize_calls", "stats", "run_seconds", "untimed", "TIMING_KEYS",
           "experiment_of", "finite_or_none", "comparable", "differing_keys", "describe", "BOOKKEEPING_KEYS",
           "progress", "Progress", "RunClock", "format_seconds"]

CHECKPOINT_FORMAT = "sparsemarg-checkpoint"
CHECKPOINT_VERSION = 1
_TREE_KEY = "__tree__"          # npz entry holding the JSON skeleton of the state
_ARRAY_MARK = "__ndarray__"     # {"__ndarray__": key}: a numpy array stored in the npz
_SCALAR_MARK = "__npscalar__"   # {"__npscalar__": key}: a numpy scalar stored as a 0-d array
_TUPLE_MARK = "__tuple__"       # {"__tuple__": [...]}: a tuple (JSON has only lists)
_MARKS = (_ARRAY_MARK, _SCALAR_MARK, _TUPLE_MARK)


# =========================================================================== atomic files

@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Write ``path`` all-or-nothing: yield a temp file in the same directory, then
    fsync and ``os.replace`` it over ``path``.  On any exception ``path`` is untouched.

    New files get mode 0644; an existing file keeps its permission bits.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f"{path.suffix}.tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory):
    """Make a rename in ``directory`` durable (best effort; not all systems allow it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data):
    """Replace the file ``path`` by ``data`` (bytes) atomically."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def _json_default(obj):
    """JSON encoder fallback: numpy scalars and arrays become Python values and lists."""
    if isinstance(obj, (np.generic, np.ndarray)):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_json(path, obj):
    """Write ``obj`` as indented JSON (numpy values converted) to ``path`` atomically."""
    text = json.dumps(obj, indent=2, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json(path):
    """Parse the JSON file ``path``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


# =========================================================================== checkpoints

def _check_key(key, where):
    """Dict keys must be strings without '/' (the flattening separator)."""
    if not isinstance(key, str) or not key or "/" in key or key in _MARKS + (_TREE_KEY,):
        raise ValueError(f"checkpoint state: key {key!r} at {where or '<root>'} must be a non-empty "
                         f"string without '/' and not one of {_MARKS + (_TREE_KEY,)}")


def _flatten(value, where, arrays):
    """JSON skeleton of ``value``; its numpy arrays/scalars go into ``arrays`` under '/' keys."""
    if isinstance(value, dict):
        for k in value:
            _check_key(k, where)
        return {k: _flatten(v, f"{where}/{k}" if where else k, arrays) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_flatten(v, f"{where}/{i}", arrays) for i, v in enumerate(value)]
        return {_TUPLE_MARK: items} if isinstance(value, tuple) else items
    if isinstance(value, (np.ndarray, np.generic)):
        if value.dtype.hasobject:
            raise TypeError(f"checkpoint state: {where} is an object array; store plain values")
        arrays[where] = np.asarray(value)
        return {_ARRAY_MARK if isinstance(value, np.ndarray) else _SCALAR_MARK: where}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"checkpoint state: {where} has type {type(value).__name__}; use numpy arrays "
                    "(refimpl.backend.to_numpy for device arrays), Python scalars, str, list, dict")


def save_checkpoint(path, state):
    """Save the nested dict ``state`` to ``path`` (an ``.npz``) atomically.

    Leaves may be numpy arrays and scalars, Python scalars, ``None``, strings,
    and lists/tuples/dicts of these (e.g. ``rng.bit_generator.state``).  Arrays
    are stored under '/'-joined keys; the rest goes into a JSON skeleton.
    """
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    arrays = {}
    tree = _flatten(state, "", arrays)
    meta = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "tree": tree}
    arrays[_TREE_KEY] = np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def _unflatten(node, arrays):
    """Inverse of :func:`_flatten`."""
    if isinstance(node, list):
        return [_unflatten(v, arrays) for v in node]
    if isinstance(node, dict):
        if len(node) == 1 and next(iter(node)) in _MARKS:
            (mark, ref), = node.items()
            if mark == _TUPLE_MARK:
                return tuple(_unflatten(v, arrays) for v in ref)
            return arrays[ref] if mark == _ARRAY_MARK else arrays[ref][()]
        return {k: _unflatten(v, arrays) for k, v in node.items()}
    return node


def load_checkpoint(path):
    """Load a checkpoint written by :func:`save_checkpoint`: the same nested dict, exactly.

    Raises ``FileNotFoundError`` if ``path`` is missing and ``ValueError`` if
    it is not a checkpoint of this format.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path} is not a readable checkpoint ({exc}); delete it or run "
                         "without --resume") from exc
    try:
        meta = json.loads(arrays.pop(_TREE_KEY).tobytes().decode("utf-8"))
        assert meta["format"] == CHECKPOINT_FORMAT and meta["version"] == CHECKPOINT_VERSION
    except (KeyError, AssertionError, ValueError) as exc:
        raise ValueError(f"{path} is not a {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} file; "
                         "delete it or run without --resume") from exc
    return _unflatten(meta["tree"], arrays)


# =========================================================================== metrics

class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per line, flushed and fsynced.

    ``keep_epochs=None`` appends to whatever is there; ``keep_epochs=E`` first
    drops every record after epoch E (``E=0`` for a fresh run, the checkpoint's
    epoch for ``--resume``), see :func:`truncate_metrics`.
    """

    def __init__(self, path, keep_epochs=None):
        self.path = Path(path)
        if keep_epochs is not None:
            truncate_metrics(self.path, keep_epochs)
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, record):
        """Append the dict ``record`` as one line (numpy values converted)."""
        if not isinstance(record, dict):
            raise TypeError(f"MetricsLog.log: record must be a dict, got {type(record).__name__}")
        self._file.write(json.dumps(record, default=_json_default) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self):
        """Close the file (idempotent)."""
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_metrics(path):
    """The records of ``metrics.jsonl`` as a list of dicts ([] if the file is missing).

    A torn last line (a crash mid-write) is ignored; a bad line elsewhere raises
    ``ValueError`` naming the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines):  # last line without a newline: an interrupted write
                break
            raise ValueError(f"{path}:{i}: not a JSON line ({exc})") from exc
    return records


def truncate_metrics(path, epochs):
    """Keep the records of ``path`` up to the first one whose ``epoch`` exceeds ``epochs``.

    Rewrites the file atomically (creating it empty if missing); returns the kept records.
    """
    kept = []
    for record in read_metrics(path):
        if record.get("epoch") is not None and record["epoch"] > epochs:
            break
        kept.append(record)
    text = "".join(json.dumps(r) + "\n" for r in kept)
    atomic_write_bytes(path, text.encode("utf-8"))
    return kept


def summarize_calls(calls, prefix=""):
    """Summary of decoder calls per example, ``calls`` of shape ``(N,)``:
    ``{prefix+"mean", prefix+"median", prefix+"p10", "p25", "p75", "p90"}`` as floats.

    Use ``prefix="calls_"`` for the keys :mod:`experiments.plot` reads.
    """
    calls = np.asarray(calls, dtype=np.float64).ravel()
    if calls.size == 0:
        raise ValueError("summarize_calls: calls is empty; pass one count per example")
    p10, p25, p50, p75, p90 = np.percentile(calls, [10, 25, 50, 75, 90])
    stats = {"mean": calls.mean(), "median": p50, "p10": p10, "p25": p25, "p75": p75, "p90": p90}
    return {prefix + k: float(v) for k, v in stats.items()}


def stats(values):
    """``dict(n, mean, std, se, median)`` of a list of floats (e.g. one test figure over
    seeds): sample std (``ddof=1``) and ``se = std / sqrt(n)``, both None for n < 2."""
    n = len(values)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "se": None, "median": None}
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    ordered = sorted(values)
    median = (ordered[(n - 1) // 2] + ordered[n // 2]) / 2
    return {"n": n, "mean": mean, "std": std, "se": None if std is None else std / math.sqrt(n),
            "median": median}


# test.json keys that measure time: equal runs differ only in these
TIMING_KEYS = ("seconds", "cpu_seconds", "train_seconds")


def run_seconds(records, start, cpu_start):
    """The timing keys of ``test.json``: ``seconds`` / ``cpu_seconds``, the test phase's
    wall and CPU time since ``start = time.perf_counter()`` / ``cpu_start =
    time.process_time()``, and ``train_seconds``, the sum of the epochs' ``seconds`` in
    ``records`` (the run's :func:`read_metrics`: training and validation, over every resume)."""
    train = sum(float(r.get("seconds", 0.0)) for r in records)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "train_seconds": train}


def untimed(result):
    """``result`` (a ``test.json`` dict) without :data:`TIMING_KEYS`: what equal runs share."""
    return {k: v for k, v in result.items() if k not in TIMING_KEYS}


# =========================================================================== configs

# config.json keys that say how or where a run ran, not what it computes
BOOKKEEPING_KEYS = frozenset({"label", "out", "resume", "overwrite", "data_dir", "experiment", "argv",
                              "versions", "download", "no_download", "data", "data_source", "pid",
                              "host", "started"})
# configs written before they named their experiment: a key only that experiment records
_EXPERIMENT_MARKS = (("bits", "bitvae"), ("labeled_only", "ssvae"), ("game_size", "signal_game"))


def experiment_of(config):
    """``config["experiment"]``, else the experiment whose own option the config records,
    else ``"None"``."""
    if config.get("experiment"):
        return str(config["experiment"])
    return next((name for key, name in _EXPERIMENT_MARKS if key in config), "None")


def finite_or_none(value):
    """A JSON value as a finite float, or None (missing, null, NaN, inf, bool, not a number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def comparable(value):
    """``value`` in a form ``set`` can hold (lists and dicts as their sorted JSON)."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def differing_keys(configs, ignore=()):
    """The keys, sorted (``method`` first), whose values differ between the dicts
    ``configs``, other than :data:`BOOKKEEPING_KEYS` and ``ignore``; a missing key counts
    as None."""
    keys = {k for c in configs for k in c} - BOOKKEEPING_KEYS - set(ignore)
    diff = [k for k in keys if len({comparable(c.get(k)) for c in configs}) > 1]
    return sorted(diff, key=lambda k: (k != "method", k))


def describe(config, keys):
    """``"topk, lr=0.001, seed=43"``: the values of ``keys`` in ``config`` (the method bare)."""
    return ", ".join(str(config.get(k)) if k == "method" else f"{k}={config.get(k)}" for k in keys)


# =========================================================================== progress

def _format_postfix(values):
    """``"loss=1.234, calls=5.6"``: floats to 4 significant digits."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def format_seconds(seconds):
    """``"1:02:03"`` (h:mm:ss) or ``"2:03"`` (m:ss)."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class RunClock:
    """The whole run's ETA: the training steps left at the measured seconds per step, plus
    the evaluation passes left at their measured mean time, plus the test phase, costed as
    ``test_cost`` evaluation passes (an estimate the experiment may refine).

    :class:`Progress` feeds it the training steps (``steps=True``); the experiment calls
    :meth:`add_eval` after each evaluation pass (the test phase shows its own progress).
    No array is touched: it costs no host sync.
    """

    def __init__(self, total_steps, steps_done=0, evals_left=0, test_cost=0.0):
        self.steps_left, self.evals_left, self.test_cost = total_steps - steps_done, evals_left, test_cost
        self.step_seconds = self.eval_seconds = 0.0
        self.steps = self.evals = 0
        self.test_started = None

    def add_step(self, seconds):
        """One training step took ``seconds``."""
        self.steps, self.step_seconds = self.steps + 1, self.step_seconds + seconds
        self.steps_left = max(0, self.steps_left - 1)

    def add_eval(self, seconds):
        """One evaluation pass (validation) took ``seconds``."""
        self.evals, self.eval_seconds = self.evals + 1, self.eval_seconds + seconds
        self.evals_left = max(0, self.evals_left - 1)

    def eta(self):
        """Seconds left in the run, or None before a step was timed."""
        if not self.steps and self.steps_left:
            return None
        per_eval = self.eval_seconds / self.evals if self.evals else 0.0
        per_step = self.step_seconds / self.steps if self.steps else 0.0
        return self.steps_left * per_step + (self.evals_left + self.test_cost) * per_eval


class Progress:
    """Iterate with a tqdm bar on a terminal; off a terminal (or without tqdm), one
    flushed line every ``log_every`` items; always one summary line when done.

    Use :meth:`set_postfix` for the running loss / decoder calls (only at points that
    already synced).  With a :class:`RunClock` (``clock``), each item is timed as a
    training step (``steps=True``) and the lines and the bar show the whole run's ETA.
    """

    def __init__(self, iterable, total=None, desc="", file=None, log_every=50, clock=None,
                 unit="steps"):
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.file = file if file is not None else sys.stderr
        self.log_every, self.clock = max(1, int(log_every)), clock
        self.postfix, self.count, self._bar = {}, 0, None
        if getattr(self.file, "isatty", lambda: False)():
            with contextlib.suppress(ImportError):
                from tqdm import tqdm  # noqa: PLC0415
                self._bar = tqdm(total=total, desc=desc, file=self.file, leave=False)

    def _run_eta(self):
        eta = self.clock.eta() if self.clock is not None else None
        return None if eta is None else format_seconds(eta)

    def set_postfix(self, **values):
        """Show ``values`` (e.g. ``loss=..., calls=...``) on the bar and in the lines."""
        self.postfix.update(values)
        if self._bar is not None:
            eta = self._run_eta()
            text = _format_postfix(self.postfix) + (f", run ETA {eta}" if eta else "")
            self._bar.set_postfix_str(text, refresh=False)

    def __iter__(self):
        start = last = time.perf_counter()
        try:
            for item in self.iterable:
                yield item
                self.count += 1
                now = time.perf_counter()
                if self.clock is not None and self.unit == "steps":
                    self.clock.add_step(now - last)
                last = now
                if self._bar is not None:
                    self._bar.update(1)
                elif self.count % self.log_every == 0 and self.count != self.total:
                    self._line(now - start)
        finally:
            self._finish(time.perf_counter() - start)

    def _line(self, seconds):
        """Off a terminal: ``desc: 50/860 steps, 12.3s, ETA 3:10, run ETA 1:02:03, loss=...``."""
        parts = [f"{self.desc}: {self.count}" + (f"/{self.total}" if self.total else "")
                 + f" {self.unit}, {seconds:.1f}s"]
        if self.total:
            parts.append(f"ETA {format_seconds(seconds / self.count * (self.total - self.count))}")
        eta = self._run_eta()
        if eta:
            parts.append(f"run ETA {eta}")
        if self.postfix:
            parts.append(_format_postfix(self.postfix))
        print(", ".join(parts), file=self.file, flush=True)

    def _finish(self, seconds):
        """Close the bar and print the one-line summary."""
        if self._bar is not None:
            self._bar.close()
        total = f"/{self.total}" if self.total is not None else ""
        extra = f", {_format_postfix(self.postfix)}" if self.postfix else ""
        print(f"{self.desc}: {self.count}{total} {self.unit} in {seconds:.1f}s{extra}", file=self.file,
              flush=True)


def progress(iterable, total=None, desc="", file=None, log_every=50, clock=None, unit="steps"):
    """A :class:`Progress` over ``iterable`` (tqdm bar on a TTY, else a line every
    ``log_every`` items; one summary line per loop always)."""
    return Progress(iterable, total=total, desc=desc, file=file, log_every=log_every, clock=clock,
                    unit=unit)
