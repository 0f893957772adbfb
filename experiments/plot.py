"""Plots of experiment runs: decoder calls, ELBO, accuracy, rate-distortion.

    python -m experiments.plot RUN_DIR                      # PNGs into RUN_DIR
    python -m experiments.plot RUN_DIR [RUN_DIR ...] --out figs/bitvae_   # overlays

A run directory holds ``metrics.jsonl`` (one JSON object per epoch, keys such
as ``epoch``, ``train_elbo``, ``val_elbo``, ``rate``, ``distortion``,
``calls_mean``, ``calls_median``, ``calls_p10/25/75/90``, ``val_acc`` / ``val_success``,
``test_acc``), ``config.json`` (at least ``method``) and optionally
``test.json``.  Missing keys are skipped: a figure with nothing to show is not
written.  Matplotlib (Agg, no display needed) is imported inside the functions.
"""
import sys
from pathlib import Path

from experiments.common import (atomic_open, cli_error, describe, differing_keys, experiment_of, finite_or_none,
                                make_parser, read_json, read_metrics)

__all__ = ["load_run", "label_runs", "plot_run", "plot_runs", "main"]

CALL_BAND = ("calls_p25", "calls_p75")
CALL_TAILS = ("calls_p10", "calls_p90")
ELBO_KEYS = (("train_elbo", "-", "train"), ("val_elbo", "--", "validation"))
ACC_KEYS = (("train_acc", ":", "train"), ("val_acc", "--", "validation"), ("test_acc", "-", "test"),
            ("val_success", "--", "validation success"))    # signal_game (formerly val_acc)
FIGURES = ("calls", "elbo", "accuracy", "rate_distortion")
SHORT_RUN = 30          # series with at most this many points also get a marker at each point


# --------------------------------------------------------------------------- reading

def load_run(run_dir):
    """``dict(dir, label, config, metrics, test)`` of one run directory.

    ``metrics`` is the list of per-epoch records, ``test`` the dict of
    ``test.json`` or ``{}``; ``label`` is ``config["label"]``, else
    ``config["method"]``, else the directory name.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    config = _read_optional_json(run_dir / "config.json")
    test = _read_optional_json(run_dir / "test.json")
    label = config.get("label") or config.get("method") or run_dir.name
    return {"dir": run_dir, "label": str(label), "config": config,
            "metrics": read_metrics(run_dir / "metrics.jsonl"), "test": test}


def _read_optional_json(path):
    """The JSON object in ``path``, or ``{}`` when the file is missing."""
    return read_json(path) if path.exists() else {}


def _series(metrics, key):
    """``(epochs, values)`` of the records with a finite ``key`` (epoch defaults to 1, 2, ...)."""
    xs, ys = [], []
    for i, record in enumerate(metrics, 1):
        y = finite_or_none(record.get(key))
        if y is not None:
            xs.append(finite_or_none(record.get("epoch")) or i)
            ys.append(y)
    return xs, ys


def _test_value(test, key):
    """``test[key]`` or ``test["test_" + key]`` as a finite float, else None."""
    for name in (key, "test_" + key):
        if finite_or_none(test.get(name)) is not None:
            return float(test[name])
    return None


def _rd_point(run):
    """``(rate, distortion)`` of a run: test.json, else the best-val-ELBO epoch, else the last."""
    rate, distortion = _test_value(run["test"], "rate"), _test_value(run["test"], "distortion")
    if rate is not None and distortion is not None:
        return rate, distortion
    rows = [r for r in run["metrics"]
            if finite_or_none(r.get("rate")) is not None and finite_or_none(r.get("distortion")) is not None]
    if not rows:
        return None
    best = [r for r in rows if finite_or_none(r.get("val_elbo")) is not None]
    row = max(best, key=lambda r: r["val_elbo"]) if best else rows[-1]
    return row["rate"], row["distortion"]


# --------------------------------------------------------------------------- drawing

def _new_axes(title, xlabel, ylabel):
    """A fresh (figure, axes) on the Agg canvas, without pyplot's global state."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError as exc:
        raise RuntimeError("plotting needs matplotlib: pip install matplotlib "
                           "(or pip install -e '.[plot]')") from exc
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _save(fig, path):
    """Write ``fig`` as PNG to ``path`` atomically; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return path


def _marker(xs):
    """Matplotlib keywords: a marker per point for short series (one epoch is a point, not
    an invisible line)."""
    return {"marker": "o", "markersize": 3} if len(xs) <= SHORT_RUN else {}


def _draw_calls(ax, run, color):
    """Median line, p25-p75 band, p10/p90 dotted (mean dashed if no median); True if drawn."""
    m = run["metrics"]
    xs, med = _series(m, "calls_median")
    if not xs:
        xs, mean = _series(m, "calls_mean")
        if xs:
            ax.plot(xs, mean, "--", color=color, label=f"{run['label']} (mean)", **_marker(xs))
        return bool(xs)
    ax.plot(xs, med, "-", color=color, label=f"{run['label']} (median)", **_marker(xs))
    (bx, lo), (_, hi) = _series(m, CALL_BAND[0]), _series(m, CALL_BAND[1])
    if bx and len(lo) == len(hi) == len(bx):
        ax.fill_between(bx, lo, hi, color=color, alpha=0.25, linewidth=0)
    for key in CALL_TAILS:
        tx, ty = _series(m, key)
        if tx:
            ax.plot(tx, ty, ":", color=color, linewidth=1)
    return True


def _draw_lines(ax, run, color, keys):
    """One line per ``(key, style, name)`` present in the run's metrics; True if any."""
    drawn = False
    for key, style, name in keys:
        xs, ys = _series(run["metrics"], key)
        if xs:
            ax.plot(xs, ys, style, color=color, label=f"{run['label']} {name}", **_marker(xs))
            drawn = True
    return drawn


def _draw_rd(ax, run, color):
    """One labelled (rate, distortion) point; True if the run has one."""
    point = _rd_point(run)
    if point is None:
        return False
    ax.scatter([point[0]], [point[1]], color=color, label=run["label"])
    ax.annotate(run["label"], point, textcoords="offset points", xytext=(4, 4), fontsize=8)
    return True


def _figure(runs, kind):
    """The figure ``kind`` (one of FIGURES) over ``runs``, or None if nothing to draw."""
    title, xlabel, ylabel = {
        "calls": ("Decoder calls per example", "epoch", "decoder calls"),
        "elbo": ("ELBO (nats)", "epoch", "ELBO"),
        "accuracy": ("Accuracy", "epoch", "accuracy"),
        "rate_distortion": ("Rate-distortion (nats)", "rate", "distortion"),
    }[kind]
    fig, ax = _new_axes(title, xlabel, ylabel)
    drawn = False
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        if kind == "calls":
            drawn |= _draw_calls(ax, run, color)
        elif kind == "elbo":
            drawn |= _draw_lines(ax, run, color, ELBO_KEYS)
        elif kind == "accuracy":
            drawn |= _draw_lines(ax, run, color, ACC_KEYS)
        else:
            drawn |= _draw_rd(ax, run, color)
    if not drawn:
        return None
    if kind == "calls":
        _maybe_log_scale(ax)
        ax.text(0.99, 0.01, "line: median, band: p25-p75, dotted: p10/p90", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, alpha=0.7)
    if xlabel == "epoch":
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)
    return fig


def _maybe_log_scale(ax):
    """Use a log y axis when the plotted values span two decades or more."""
    lo, hi = ax.dataLim.y0, ax.dataLim.y1
    if lo > 0 and hi / lo >= 100:
        ax.set_yscale("log")


def _write_figures(runs, path_for):
    """Write every figure that has data; ``path_for(kind)`` gives its file. List of paths."""
    written = []
    for kind in FIGURES:
        fig = _figure(runs, kind)
        if fig is not None:
            written.append(_save(fig, path_for(kind)))
    return written


# --------------------------------------------------------------------------- public

def plot_run(run_dir):
    """Write ``calls.png``, ``elbo.png``, ``accuracy.png``, ``rate_distortion.png``
    (those with data) into ``run_dir``; return the paths written."""
    run = load_run(run_dir)
    return _write_figures([run], lambda kind: run["dir"] / f"{kind}.png")


def plot_run_or_explain(run_dir, log, prog=""):
    """:func:`plot_run`, or one line on ``log`` saying why the plots were
    skipped (e.g. no matplotlib): a finished run never fails on its plots."""
    try:
        return plot_run(run_dir)
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"{prog + ': ' if prog else ''}plots skipped: {exc}", file=log)
        return []


def _prefixed(out_prefix, kind):
    """``<out_prefix><kind>.png``, adding '_' unless the prefix ends in '/', '_', '-' or '.'."""
    prefix = str(out_prefix)
    sep = "" if prefix.endswith(("/", "_", "-", ".")) else "_"
    return Path(f"{prefix}{sep}{kind}.png")


def label_runs(runs):
    """Set each run's ``label`` for an overlay: its ``config["label"]`` if given, else the
    config values that differ between the runs (``topk, lr=0.001``), else the directory
    name.  Raises ValueError when the runs are of different experiments."""
    kinds = sorted({experiment_of(r["config"]) for r in runs} - {"None"})      # "None": unknown
    if len(kinds) > 1:
        listing = "; ".join(f"{r['dir']}: {experiment_of(r['config'])}" for r in runs)
        raise ValueError(f"the runs mix experiments ({', '.join(kinds)}: {listing}); "
                         "overlay runs of one experiment")
    keys = differing_keys([r["config"] for r in runs if r["config"]])
    for run in runs:
        given, config = run["config"].get("label"), run["config"]
        run["label"] = str(given) if given else describe(config, keys) if keys and config else run["dir"].name
    return runs


def plot_runs(run_dirs, out_prefix):
    """Overlay several runs of one experiment (one colour each, labelled by what differs
    between them, :func:`label_runs`); write ``<out_prefix>_<figure>.png``; return paths."""
    runs = label_runs([load_run(d) for d in run_dirs])
    return _write_figures(runs, lambda kind: _prefixed(out_prefix, kind))


def main(argv=None):
    """CLI: ``python -m experiments.plot RUN_DIR [RUN_DIR ...] [--out FILE_PREFIX]``."""
    parser = make_parser("Plot decoder calls, ELBO, accuracy and rate-distortion of runs.",
                         prog="python -m experiments.plot")
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories")
    parser.add_argument("--out", metavar="FILE_PREFIX", default=None,
                        help="write overlays to FILE_PREFIX_<figure>.png (needed for several runs)")
    args = parser.parse_args(argv)
    if args.out is None and len(args.run_dirs) > 1:
        cli_error(parser, "several RUN_DIRs need --out FILE_PREFIX for the overlay")
    try:
        if args.out is None:
            written = plot_run(args.run_dirs[0])
        else:
            written = plot_runs(args.run_dirs, args.out)
    except (OSError, RuntimeError, ValueError) as exc:
        cli_error(parser, str(exc))
    for path in written:
        print(path)
    if not written:
        print("nothing to plot: no known keys in metrics.jsonl / test.json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
