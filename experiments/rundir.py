"""A run's output directory (``--out``), safe against a second run and a killed one.
Re-exported by :mod:`experiments.common`.

* **Lock**: ``--out/.lock`` holds the owner's PID and an exclusive ``flock`` for
  the run's life.  A second run on the same directory exits 2 naming that PID.
  The kernel drops the lock when its process dies (even by ``kill -9``), so a
  lock file left by a dead run is simply taken over.
* **No mixing**: starting without ``--resume`` in a directory that holds a run
  exits 2; ``--overwrite`` first deletes the run's own files (:data:`RUN_FILES`
  and their temporary files), never anything else.
* **Leftovers**: temporary files of :func:`experiments.runfiles.atomic_open`
  (``.config.*.json.tmp`` ...) left by a killed run are removed at start and resume.

POSIX only (``fcntl``, imported when a lock is taken).
"""
import contextlib
import os
from pathlib import Path

from .cli import cli_error, prepare_out_dir
from .runfiles import read_json

__all__ = ["RUN_FILES", "LOCK_NAME", "CHECKPOINTS", "run_directory", "lock_run_dir", "RunLock",
           "stale_temp_files", "clear_run_files", "resume_checkpoint", "check_resume",
           "renamed_config", "RENAMED_OPTIONS"]

LOCK_NAME = ".lock"
# Every file a run writes into --out (checkpoint.npz: the ssvae/signal_game checkpoint
# before it was renamed last.npz; still cleared, and still resumed from).
RUN_FILES = ("config.json", "metrics.jsonl", "test.json", "best.npz", "last.npz",
             "checkpoint.npz", "calls.png", "elbo.png", "accuracy.png", "rate_distortion.png")
# Files whose presence means "this directory holds a run": all but the plots.
_RUN_MARKERS = tuple(name for name in RUN_FILES if not name.endswith(".png"))
# What --resume continues from, in order of preference.
CHECKPOINTS = ("last.npz", "checkpoint.npz")


# Config keys renamed with their options (old -> new); the old name is a deprecated alias.
RENAMED_OPTIONS = {"max_eval": "max_test", "test_games": "max_test"}


def resume_checkpoint(out):
    """The checkpoint ``--resume`` continues from: ``out/last.npz``, else the
    ``checkpoint.npz`` of a run written before the rename; ``None`` if neither exists."""
    for name in CHECKPOINTS:
        if (Path(out) / name).is_file():
            return Path(out) / name
    return None


def check_resume(out, config, parser_or_prog, length_key):
    """Exit 2 (one line) unless ``out`` can be resumed with ``config``: a checkpoint is there
    and the saved ``config.json`` (old option names renamed) equals ``config`` in every key
    but ``length_key`` (``epochs`` / ``steps``: a resumed run may train longer)."""
    if resume_checkpoint(out) is None:
        cli_error(parser_or_prog, f"--resume: no checkpoint (last.npz) in {out}; run without --resume")
    old = renamed_config(read_json(Path(out) / "config.json"))
    diff = sorted(k for k in config if k != length_key and old.get(k) != config[k])
    if diff:
        cli_error(parser_or_prog, f"--resume: options differ from the saved run in {diff}")


def renamed_config(config):
    """``config`` (a saved config.json) with the keys of renamed options under their new names."""
    return {RENAMED_OPTIONS.get(k, k): v for k, v in config.items()}


class RunLock:
    """The held lock of one run directory; :meth:`release` (or process exit) frees it."""

    def __init__(self, path, fd):
        self.path, self._fd = Path(path), fd

    def release(self):
        """Unlock and close (idempotent); the lock file stays (it is harmless)."""
        if self._fd is not None:
            import fcntl  # noqa: PLC0415
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def lock_run_dir(out, parser_or_prog=None):
    """Take the exclusive lock of the directory ``out``; a :class:`RunLock`, or exit 2 with
    one line naming the PID of the run holding it."""
    import fcntl  # noqa: PLC0415  (POSIX; imported here so the module imports everywhere)
    path = Path(out) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        cli_error(parser_or_prog, f"--out {str(out)!r} is in use by another run (PID {holder}, "
                                  f"lock {path}); wait for it, stop it, or choose another --out")
    os.ftruncate(fd, 0)                       # a dead run's PID (its lock died with it) goes
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return RunLock(path, fd)


def stale_temp_files(out):
    """Temporary files of an interrupted atomic write of a run file (``.best.x1y2.npz.tmp``)."""
    out = Path(out)
    found = []
    for name in RUN_FILES:
        stem, suffix = os.path.splitext(name)
        found += out.glob(f".{stem}.*{suffix}.tmp")
    return sorted(set(found))


def clear_run_files(out):
    """Delete the run's files (:data:`RUN_FILES`) and their temporary files from ``out``;
    returns the names removed.  Other files are left alone."""
    out = Path(out)
    removed = []
    for path in [out / name for name in RUN_FILES] + stale_temp_files(out):
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    return removed


def _holds_run(out):
    return [name for name in _RUN_MARKERS if (Path(out) / name).exists()]


@contextlib.contextmanager
def run_directory(path, parser_or_prog=None, *, resume=False, overwrite=False):
    """Create ``path`` and hold its lock while the block runs; yields the ``Path``.

    Exits 2 (one line) when another run holds it, when it holds a run and neither
    ``resume`` nor ``overwrite`` is set, or when both are.  ``overwrite`` deletes the
    run's files first; stale temporary files are removed in every case.
    """
    if resume and overwrite:
        cli_error(parser_or_prog, "--resume and --overwrite exclude each other")
    out = prepare_out_dir(path, parser_or_prog)
    lock = lock_run_dir(out, parser_or_prog)
    try:
        for tmp in stale_temp_files(out):
            tmp.unlink(missing_ok=True)
        if overwrite:
            clear_run_files(out)
        elif not resume and (held := _holds_run(out)):
            cli_error(parser_or_prog, f"--out {str(out)!r} already holds a run "
                                      f"({', '.join(held)}); add --resume to continue "
                                      "it, --overwrite to replace it, or choose another --out")
        yield out
    finally:
        lock.release()
