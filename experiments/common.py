"""Infrastructure shared by the experiments (bitvae, ssvae, signal_game).

* CLI: :func:`make_parser` (bad values exit 2 with one line), :func:`add_common_args`
  and the single-option helpers, :func:`cli_error`, the argparse types
  :func:`positive_int`, :func:`nonnegative_int`, :func:`positive_float`,
  :func:`select_backend`, :func:`prepare_out_dir`.
* Files: :func:`atomic_open`, :func:`atomic_write_bytes`, :func:`write_json`,
  :func:`read_json`, :func:`save_checkpoint` / :func:`load_checkpoint`.
* Logging: :class:`MetricsLog` (``metrics.jsonl``, one JSON object per line),
  :func:`read_metrics`, :func:`truncate_metrics`, :func:`summarize_calls`,
  :func:`progress`, :class:`RunClock` (the whole run's ETA).
* Run directories: :func:`run_directory` (lock, refusal without --resume, --overwrite,
  stale temporary files), in :mod:`experiments.rundir`.

The pieces live in :mod:`experiments.cli`, :mod:`experiments.runfiles` and
:mod:`experiments.rundir`;
this module gathers them under one name.  Nothing here imports CuPy: checkpoints take NumPy arrays (move device arrays
with ``refimpl.backend.to_numpy`` first).
"""
from .cli import *  # noqa: F401,F403
from .cli import __all__ as _cli_all
from .runfiles import *  # noqa: F401,F403
from .runfiles import __all__ as _files_all
from .rundir import *  # noqa: F401,F403
from .rundir import __all__ as _dir_all

__all__ = _cli_all + _files_all + _dir_all
