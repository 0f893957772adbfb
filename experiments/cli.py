"""Command-line pieces shared by the experiments: a parser whose bad values
exit 2 with one line, the common options, argparse types, the backend and
the output directory.  Re-exported by :mod:`experiments.common`."""
import argparse
import math
import sys
import tempfile
from pathlib import Path

__all__ = ["make_parser", "add_common_args", "add_backend_arg", "add_seed_arg", "add_out_arg",
           "add_data_dir_arg", "add_resume_arg", "add_training_args", "add_max_train_arg",
           "add_dtype_arg", "add_eval_args", "add_sfe_plus_baseline_arg", "add_argument_with_alias", "cli_error", "positive_int",
           "nonnegative_int", "int_at_least", "positive_float", "nonnegative_float", "select_backend", "prepare_out_dir"]


# =========================================================================== CLI

class _OneLineParser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line, ``prog: error: message``, and exit 2."""

    def error(self, message):
        cli_error(self, f"{message} (see --help)")


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` only where it informs: not for None, not for
    on/off flags, not where the help text already names the default."""

    def _get_help_string(self, action):
        if (action.default is None or isinstance(action.default, bool)
                or "default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def make_parser(description, prog=None):
    """An ``argparse.ArgumentParser`` that reports bad values as ONE line and exits 2."""
    return _OneLineParser(prog=prog, description=description, formatter_class=_DefaultsFormatter)


def cli_error(parser_or_prog, message):
    """Print ``prog: error: message`` (one line) to stderr and exit with status 2."""
    prog = getattr(parser_or_prog, "prog", None) or str(parser_or_prog or Path(sys.argv[0]).name)
    one_line = " ".join(str(message).split())
    print(f"{prog}: error: {one_line}", file=sys.stderr)
    sys.exit(2)


def positive_int(text):
    """argparse type: an integer >= 1 (the check is ``refimpl.numerics.check_positive_int``)."""
    from refimpl.numerics import check_positive_int  # noqa: PLC0415  (keeps this module light to import)
    try:
        return check_positive_int(int(text), "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None


def nonnegative_int(text):
    """argparse type: an integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def int_at_least(low):
    """argparse type factory: an integer >= ``low``."""
    def check(text):
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value
    check.__name__ = f"int_at_least_{low}"
    return check


def nonnegative_float(text):
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_float(text):
    """argparse type: a finite float > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text!r}")
    return value


class _DeprecatedAlias(argparse._StoreAction):
    """A store action whose old option strings still work, with one deprecation line on stderr."""

    def __init__(self, option_strings, dest, deprecated=(), **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.deprecated = tuple(deprecated)

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string in self.deprecated:
            print(f"{parser.prog}: warning: {option_string} is deprecated; use "
                  f"{self.option_strings[0]}", file=sys.stderr)
        super().__call__(parser, namespace, values, option_string)


def add_argument_with_alias(parser, name, *old, **kwargs):
    """``parser.add_argument(name, *old, ...)`` where the ``old`` option strings are
    deprecated aliases of ``name``: they still work and print one warning line on stderr.
    ``--help`` names them after ``name``."""
    return parser.add_argument(name, *old, action=_DeprecatedAlias, deprecated=old, **kwargs)


def add_backend_arg(parser, default="numpy"):
    """``--backend {numpy,cupy}``."""
    parser.add_argument("--backend", choices=("numpy", "cupy"), default=default,
                        help="array backend (cupy needs CuPy and a GPU)")


def add_seed_arg(parser, default=42):
    """``--seed INT`` (any integer >= 0)."""
    parser.add_argument("--seed", type=nonnegative_int, default=default, help="random seed")


def add_out_arg(parser, default=None):
    """``--out DIR``: where config, checkpoints, metrics.jsonl and plots go."""
    parser.add_argument("--out", metavar="DIR", default=default,
                        help="output directory (config.json, metrics.jsonl, checkpoints)")


def add_data_dir_arg(parser):
    """``--data-dir DIR`` (the folder holding ``fashion-mnist/`` and ``mnist/``) and
    ``--no-download`` (``args.download`` is True unless given)."""
    parser.add_argument("--data-dir", metavar="DIR", default=None,
                        help="folder with fashion-mnist/ and mnist/ (else $REFIMPL_DATA, "
                             "~/.cache/refimpl, /usr/share/datasets, then download)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="never download missing datasets; fail with a list of places looked")


def add_resume_arg(parser):
    """``--resume``: continue from the checkpoint in ``--out``; ``--overwrite``: replace the
    run there (see :mod:`experiments.rundir`)."""
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in --out")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in --out (its config, metrics, test "
                             "results, checkpoints and plots; nothing else) and start afresh")


def add_training_args(parser, epochs, batch_size, lr=None):
    """``--epochs N``, ``--batch-size N``, ``--lr X`` (``lr=None``: the method's paper value)."""
    parser.add_argument("--epochs", type=positive_int, default=epochs, help="training epochs")
    parser.add_argument("--batch-size", type=positive_int, default=batch_size, help="batch size")
    parser.add_argument("--lr", type=positive_float, default=lr,
                        help="Adam learning rate (default: the paper's value for the method)")


def add_max_train_arg(parser):
    """``--max-train N``: use only the first N training examples (smoke runs)."""
    parser.add_argument("--max-train", metavar="N", type=positive_int, default=None,
                        help="use only the first N training examples")


def add_dtype_arg(parser, default="float32"):
    """``--dtype {float32,float64}``."""
    parser.add_argument("--dtype", choices=("float32", "float64"), default=default,
                        help="floating-point precision of parameters and activations")


def add_eval_args(parser, *, eval_batch_size, eval_help,
                  log_help="steps between progress lines when stderr is not a terminal"):
    """``--eval-batch-size N`` (``eval_help`` says what a batch holds) and ``--log-every N``."""
    parser.add_argument("--eval-batch-size", metavar="N", type=positive_int, default=eval_batch_size,
                        help=eval_help)
    parser.add_argument("--log-every", metavar="N", type=positive_int, default=50, help=log_help)


def add_sfe_plus_baseline_arg(parser):
    """``--sfe-plus-baseline {detached,authors}`` (used by ``sfe-plus`` only; ignored otherwise)."""
    parser.add_argument("--sfe-plus-baseline", choices=("detached", "authors"), default="detached",
                        help="sfe-plus: the second sample's loss as a constant baseline (paper) or "
                             "with its gradient kept, as the authors' code (the decoder then also "
                             "gets -log q(z1) grad l(z2)); ignored by other methods")


def add_common_args(parser, *, epochs, batch_size, lr=None, seed=42, dtype="float32", data=True):
    """Add every common option; ``data=False`` leaves out ``--data-dir``/``--no-download``.
    Returns ``parser``."""
    add_backend_arg(parser)
    add_seed_arg(parser, seed)
    add_out_arg(parser)
    if data:
        add_data_dir_arg(parser)
    add_resume_arg(parser)
    add_training_args(parser, epochs, batch_size, lr)
    add_max_train_arg(parser)
    add_dtype_arg(parser, dtype)
    return parser


def select_backend(name, parser_or_prog=None):
    """``refimpl.backend.get_xp(name)``, or a one-line CLI error (exit 2) if unavailable."""
    from refimpl.backend import get_xp  # noqa: PLC0415  (keeps this module light to import)
    try:
        return get_xp(name)
    except (RuntimeError, ValueError) as exc:
        cli_error(parser_or_prog, f"--backend {name}: {exc}")


def prepare_out_dir(path, parser_or_prog=None):
    """Create ``path`` (with parents) and check it is writable; ``Path``, or exit 2."""
    if path is None:
        cli_error(parser_or_prog, "--out DIR is required")
    out = Path(path).expanduser()
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        cli_error(parser_or_prog, f"--out {str(out)!r} is not a writable directory "
                                  f"({exc.strerror or exc}); choose another --out")
    return out
