"""Model selection and test statistics of a sweep, as the paper's App. B, in Markdown and PNG.

    python -m experiments.report SWEEP_ROOT [SWEEP_ROOT ...] --out DIR [--by KEY]

Every directory under ``SWEEP_ROOT`` holding a ``config.json`` is a run (``_logs`` and
other folders without one are ignored); all runs must be of one experiment.  Runs are
grouped by ``method`` (and the ``--by`` keys; the bit-VAE also by ``bits``); inside a group a
*setting* is one value of each hyperparameter, the config keys other than ``seed`` that differ
between the runs.

Selection (App. B): per group, the setting with the best mean over seeds of each run's
best validation value -- validation ELBO (``val_elbo``) for bitvae and ssvae, validation
success (``val_success``, before the vocabulary change ``val_acc``) for the signal game;
ties go to the setting listed first.  Only finished runs (``test.json`` present) count.

Statistics over the seeds of the selected setting: mean, sample standard deviation
(``ddof=1``; undefined for one seed) and standard error ``std / sqrt(n)`` of each test
quantity present in ``test.json``, of the decoder calls (mean, median, quartiles) and of the
training wall time (``train_seconds``).

Writes ``DIR/report.md`` (tables, also in the shape of the paper's Table 1, Fig. 1 right
and Fig. 2 right: :mod:`experiments.report_paper`), ``DIR/report.json`` (the same numbers) and, with
matplotlib (``pip install sparsemarg[plot]``), ``DIR/curves_<key>.png`` (validation and
training curves of the selected settings: mean over seeds with a standard-error band),
``DIR/calls.png`` (training decoder calls: median with the mean quartiles) and, for the
bit-VAE, ``DIR/rate_distortion.png``.  Legends name what differs between the curves.
"""
import json
import math
import sys
from pathlib import Path

from experiments.common import (atomic_open, cli_error, comparable, differing_keys, experiment_of, finite_or_none,
                                make_parser, read_json, read_metrics, stats)
from experiments.report_paper import paper_table

__all__ = ["load_sweep", "select", "summarize", "write_report", "main"]

VALIDATION = {"bitvae": ("val_elbo",), "ssvae": ("val_elbo",), "signal_game": ("val_success", "val_acc")}
# (column, candidate keys in test.json): the first key present is used
TEST = {
    "bitvae": (("ELBO", ("test_elbo", "elbo")), ("NLL (bits/dim)", ("test_nll_bits_per_dim", "nll_bits_per_dim")),
               ("rate", ("test_rate", "rate")), ("distortion", ("test_distortion", "distortion"))),
    "ssvae": (("accuracy", ("test_acc", "test_accuracy")), ("ELBO", ("test_elbo", "elbo"))),
    "signal_game": (("success", ("test_success", "test_acc")),),
}
CALLS = (("calls mean", ("test_calls_mean", "calls_mean")), ("calls median", ("test_calls_median", "calls_median")),
         ("calls p25", ("test_calls_p25", "calls_p25")), ("calls p75", ("test_calls_p75", "calls_p75")))
# the epochs' wall seconds (test.json train_seconds): what each method cost on the sweep's machine
TIMING = (("train seconds", ("train_seconds",)),)
# group keys besides method and --by: the bit-VAE's latent size is a condition, not a hyperparameter
GROUP_BY = {"bitvae": ("bits",)}
NOT_HYPER = {"seed"}            # besides common.BOOKKEEPING_KEYS: seeds are averaged over, not selected


class ReportError(ValueError):
    """A sweep folder that cannot be reported (message names the folder and the fix)."""


# =========================================================================== reading

def _roots(root):
    """``root`` (one path, or a list of them) as a list of Paths."""
    return [Path(r) for r in ([root] if isinstance(root, (str, Path)) else root)]


def load_sweep(root):
    """``(experiment, runs)`` of one sweep root or a list of them (e.g. the D = 32 and D = 128
    bit-VAE sweeps, for one table): runs are dicts ``name, dir, config, metrics, test`` sorted by
    name; with several roots a run's name is ``<root's name>/<run>``."""
    roots = _roots(root)
    runs = []
    for base in roots:
        if not base.is_dir():
            raise ReportError(f"sweep root {str(base)!r} is not a directory")
        for path in sorted(p for p in base.iterdir() if p.is_dir() and (p / "config.json").exists()):
            try:
                config = read_json(path / "config.json")
                test = read_json(path / "test.json") if (path / "test.json").exists() else None
                metrics = read_metrics(path / "metrics.jsonl")
            except ValueError as exc:
                raise ReportError(f"{path}: unreadable run files ({exc})") from None
            name = path.name if len(roots) == 1 else f"{base.name}/{path.name}"
            runs.append({"name": name, "dir": str(path), "config": config, "metrics": metrics, "test": test})
    root = ", ".join(str(r) for r in roots)
    if not runs:
        raise ReportError(f"no run directory (with config.json) under {root!r}")
    if len({r["name"] for r in runs}) < len(runs):
        raise ReportError(f"the sweep roots {root} share a folder name; give them different names")
    kinds = sorted({experiment_of(r["config"]) for r in runs})
    if len(kinds) > 1:
        raise ReportError(f"{root} mixes experiments {', '.join(kinds)}; report one sweep at a time")
    if kinds[0] not in VALIDATION:
        raise ReportError(f"{root}: config.json 'experiment' is {kinds[0]!r}, not one of {', '.join(VALIDATION)}")
    return kinds[0], runs


def _first(record, keys):
    for key in keys:
        if record and finite_or_none(record.get(key)) is not None:
            return float(record[key])
    return None


def _hyperparameters(runs, group_keys):
    """Config keys (other than seeds and the group keys) whose values differ between runs of
    one group (a method's default that differs only between methods is not one)."""
    groups = {}
    for run in runs:
        groups.setdefault(tuple(comparable(run["config"].get(k)) for k in group_keys), []).append(run)
    ignore = NOT_HYPER | set(group_keys)
    return sorted({k for members in groups.values()
                   for k in differing_keys([r["config"] for r in members], ignore=ignore)})


def validation_key(experiment, runs):
    """The validation key the runs log (the first of ``VALIDATION[experiment]`` present)."""
    for key in VALIDATION[experiment]:
        if any(finite_or_none(rec.get(key)) is not None for r in runs for rec in r["metrics"]):
            return key
    return VALIDATION[experiment][0]


# =========================================================================== statistics

def best_validation(run, key):
    """A run's best (largest) validation ``key`` over its epochs, or None; warm-start epochs
    (``phase == "warm-start"``, the ssVAE's labelled-only start) do not count, as in the run's
    own choice of its best epoch."""
    values = [v for v in (_first(rec, (key,)) for rec in run["metrics"] if rec.get("phase") != "warm-start")
              if v is not None]
    return max(values) if values else None


def select(experiment, runs, by=()):
    """Per group (method and ``by`` keys): every setting's validation statistics and the best one.

    Returns a list of groups ``dict(group, settings, best, hyper)``; a setting is
    ``dict(values, runs, validation)`` (``values``: the hyperparameters' values).
    """
    group_keys = ("method",) + tuple(by) + tuple(k for k in GROUP_BY.get(experiment, ()) if k not in by)
    hyper = _hyperparameters(runs, group_keys)
    key = validation_key(experiment, runs)
    groups = {}
    for run in runs:
        gkey = tuple(comparable(run["config"].get(k)) for k in group_keys)
        skey = tuple(comparable(run["config"].get(k)) for k in hyper)
        groups.setdefault(gkey, {}).setdefault(skey, []).append(run)
    result = []
    for gkey, settings in groups.items():
        rows = []
        for skey, members in settings.items():
            finished = [r for r in members if r["test"] is not None]
            vals = [v for v in (best_validation(r, key) for r in finished) if v is not None]
            rows.append({"values": dict(zip(hyper, skey)), "runs": members, "validation": stats(vals),
                         "unfinished": [r["name"] for r in members if r["test"] is None]})
        scored = [s for s in rows if s["validation"]["mean"] is not None]
        best = max(scored, key=lambda s: s["validation"]["mean"]) if scored else None   # first of ties
        result.append({"group": dict(zip(group_keys, gkey)), "settings": rows, "best": best, "hyper": hyper,
                       "validation_key": key})
    return result


def summarize(experiment, setting):
    """Test statistics over the finished seeds of one setting: ``{column: stats}``, and
    ``"train calls"``: the decoder calls per training example in each run's last epoch
    (``calls_mean`` of its last ``metrics.jsonl`` record; the paper's Fig. 1 and 3 count these)."""
    finished = [r for r in setting["runs"] if r["test"] is not None]
    out = {}
    for column, keys in TEST[experiment] + CALLS + TIMING:
        values = [v for v in (_first(r["test"], keys) for r in finished) if v is not None]
        if values:
            out[column] = stats(values)
    last = [v for v in (_first(r["metrics"][-1], ("calls_mean",)) for r in finished if r["metrics"])
            if v is not None]
    if last:
        out["train calls"] = stats(last)
    return out


# =========================================================================== writing

def _fmt(x, digits=4):
    if x is None:
        return "—"
    if x != 0 and abs(x) >= 10 ** (digits - 1):     # no exponent: 4149, 191.9, 140
        return f"{x:.{max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))}f}"
    return f"{x:.{digits}g}"


def _pm(s):
    if s["std"] is None:
        return f"{_fmt(s['mean'])} (n=1)"
    return f"{_fmt(s['mean'])} ± {_fmt(s['std'])} (s.e. {_fmt(s['se'], 2)})"


def _label(values):
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "—"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def markdown(experiment, groups, root):
    """The report's Markdown text."""
    metric = groups[0]["validation_key"] if groups else VALIDATION[experiment][0]
    where = ", ".join(f"`{r}`" for r in _roots(root))
    lines = [f"# Sweep report: {experiment}", "", f"Runs under {where}. Selection per "
             f"{' and '.join(groups[0]['group']) if groups else 'method'}: the setting with the best mean "
             f"over seeds of the best `{metric}`; then test statistics over its seeds (mean ± sample std, "
             "standard error).", ""]
    names = [c for c, _ in TEST[experiment] + CALLS] + ["train calls"] + [c for c, _ in TIMING]
    columns = [c for c in names if any(g["best"] and c in g["summary"] for g in groups)]
    rows = []
    for g in groups:
        if g["best"] is None:
            rows.append([_label(g["group"]), "no finished run", "0"] + ["—"] * (len(columns) + 1))
            continue
        s = g["summary"]
        pending = sum(len(setting["unfinished"]) for setting in g["settings"])
        chosen = _label(g["best"]["values"]) + (
            f" (provisional: {pending} unfinished run{'s' if pending > 1 else ''})" if pending else "")
        rows.append([_label(g["group"]), chosen, g["best"]["validation"]["n"],
                     _fmt(g["best"]["validation"]["mean"])]
                    + [_pm(s[c]) if c in s else "—" for c in columns])
    lines += ["## Test results of the selected settings", ""]
    lines += _table(["group", "selected", "seeds", f"mean best {metric}"] + columns, rows)
    lines += ["", "## In the paper's shape", ""] + paper_table(experiment, groups)
    lines += ["", "## Every setting (validation)", ""]
    rows = []
    for g in groups:
        for s in g["settings"]:
            v = s["validation"]
            rows.append([_label(g["group"]), _label(s["values"]), v["n"],
                         _pm(v) if v["n"] else "—", "**selected**" if s is g["best"] else "",
                         ", ".join(s["unfinished"]) or ""])
    lines += _table(["group", "setting", "seeds", f"best {metric}", "", "unfinished runs"], rows)
    return "\n".join(lines) + "\n"


def _jsonable(groups):
    out = []
    for g in groups:
        best = g["best"]
        out.append({"group": g["group"], "hyperparameters": g["hyper"], "validation_key": g["validation_key"],
                    "selected": None if best is None else best["values"],
                    "selected_runs": [] if best is None else [r["name"] for r in best["runs"]],
                    "validation": None if best is None else best["validation"],
                    "test": g["summary"],
                    "settings": [{"values": s["values"], "validation": s["validation"],
                                  "runs": [r["name"] for r in s["runs"]], "unfinished": s["unfinished"]}
                                 for s in g["settings"]]})
    return out


def write_report(root, out, by=(), figures=True):
    """Select, summarize and write ``out/report.md``, ``out/report.json`` and the figures.

    Returns ``(groups, figure paths)``.
    """
    experiment, runs = load_sweep(root)
    groups = select(experiment, runs, by)
    for g in groups:
        g["summary"] = summarize(experiment, g["best"]) if g["best"] else {}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "report.md", "w") as f:
        f.write(markdown(experiment, groups, root))
    with atomic_open(out / "report.json", "w") as f:
        json.dump({"experiment": experiment, "groups": _jsonable(groups)}, f, indent=2)
    paths = []
    if figures:
        from experiments import report_figures  # noqa: PLC0415  (matplotlib only when drawing)
        paths = report_figures.draw(experiment, groups, out)
    return groups, paths


def main(argv=None):
    parser = make_parser(__doc__.split("\n\n")[0], prog="python -m experiments.report")
    parser.add_argument("root", metavar="SWEEP_ROOT", nargs="+",
                        help="the --root of a sweep (several: one report over their runs, e.g. the "
                             "bit-VAE's D = 32 and D = 128 sweeps)")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, report.json, PNGs")
    parser.add_argument("--by", action="append", default=[], metavar="KEY",
                        help="config key that splits groups besides method, e.g. bits (repeatable)")
    parser.add_argument("--no-figures", action="store_true", help="tables only")
    args = parser.parse_args(argv)
    figures = not args.no_figures
    if figures:
        try:
            import matplotlib  # noqa: F401,PLC0415
        except ImportError:
            print("report: matplotlib not installed, tables only (pip install 'sparsemarg[plot]')",
                  file=sys.stderr)
            figures = False
    try:
        groups, paths = write_report(args.root, args.out, args.by, figures)
    except (ReportError, OSError) as exc:
        cli_error(parser, str(exc))
    for g in groups:
        chosen = "no finished run" if g["best"] is None else _label(g["best"]["values"])
        print(f"{_label(g['group'])}: {chosen}")
    print(f"wrote {Path(args.out) / 'report.md'}" + (f" and {len(paths)} figures" if paths else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
