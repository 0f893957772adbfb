"""Figures of :mod:`experiments.report` (matplotlib, Agg): curves of the selected settings.

Each curve is the mean over seeds at the epochs every seed reached, with a band of one
standard error; legends name only what differs between the curves (the method, and the
hyperparameters whose selected values differ).
"""
from pathlib import Path

from experiments.common import describe, differing_keys, finite_or_none, stats

__all__ = ["draw", "legend_labels", "mean_curve"]

CURVES = {"bitvae": ("val_elbo", "train_elbo"), "ssvae": ("val_elbo", "val_acc", "train_elbo"),
          "signal_game": ("val_success", "val_acc", "train_loss")}
TITLES = {"val_elbo": "validation ELBO", "train_elbo": "training ELBO", "val_acc": "validation accuracy",
          "val_success": "validation success", "train_loss": "training loss"}


def mean_curve(runs, key):
    """``(epochs, mean, se)`` of ``key`` over the runs, at the epochs all of them logged."""
    series = []
    for run in runs:
        points = {}
        for i, rec in enumerate(run["metrics"], 1):
            value = finite_or_none(rec.get(key))
            if value is not None:
                points[rec.get("epoch", i)] = value
        series.append(points)
    if not series or not all(series):
        return [], [], []
    epochs = sorted(set.intersection(*(set(s) for s in series)))
    means, ses = [], []
    for e in epochs:
        summary = stats([s[e] for s in series])
        means.append(summary["mean"])
        ses.append(summary["se"] or 0.0)             # one seed: no band
    return epochs, means, ses


def legend_labels(groups):
    """One label per group with a selection: the keys whose values differ between them."""
    chosen = [g for g in groups if g["best"] is not None]
    items = [{**g["group"], **g["best"]["values"]} for g in chosen]
    keys = differing_keys(items) or ["method"]
    return [describe(it, keys) for it in items]


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt  # noqa: PLC0415
    plt.close(fig)
    return path


def draw(experiment, groups, out):
    """Write the PNGs into ``out``; returns their paths (a figure with no data is not written)."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    out = Path(out)
    chosen = [g for g in groups if g["best"] is not None]
    labels = legend_labels(groups)
    paths = []
    for key in CURVES[experiment]:
        curves = [(label, mean_curve(g["best"]["runs"], key)) for g, label in zip(chosen, labels)]
        curves = [(label, c) for label, c in curves if c[0]]
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, (x, m, se) in curves:
            line, = ax.plot(x, m, marker="o" if len(x) < 20 else None, label=label)
            ax.fill_between(x, [a - b for a, b in zip(m, se)], [a + b for a, b in zip(m, se)],
                            color=line.get_color(), alpha=0.25, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(TITLES.get(key, key))
        ax.set_title(f"{experiment}: {TITLES.get(key, key)} (mean ± s.e. over seeds)", fontsize=9)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / f"curves_{key}.png"))
    calls = [(label, mean_curve(g["best"]["runs"], "calls_median"), mean_curve(g["best"]["runs"], "calls_p25"),
              mean_curve(g["best"]["runs"], "calls_p75")) for g, label in zip(chosen, labels)]
    calls = [c for c in calls if c[1][0]]
    if calls:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, (x, m, _), low, high in calls:
            line, = ax.plot(x, m, marker="o" if len(x) < 20 else None, label=label)
            if low[0] and high[0] and low[0] == x and high[0] == x:
                ax.fill_between(x, low[1], high[1], color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("decoder calls per example")
        ax.set_yscale("log")
        ax.set_title(f"{experiment}: training decoder calls, median (band: quartiles; mean over seeds)",
                     fontsize=9)
        ax.legend(fontsize=8)
        paths.append(_save(fig, out / "calls.png"))
    if experiment == "bitvae":
        points = [(label, g["summary"].get("rate"), g["summary"].get("distortion"))
                  for g, label in zip(chosen, labels)]
        points = [p for p in points if p[1] and p[2]]
        if points:
            fig, ax = plt.subplots(figsize=(5, 4))
            for label, rate, dist in points:
                ax.errorbar(rate["mean"], dist["mean"], xerr=rate["se"] or 0, yerr=dist["se"] or 0,
                            marker="o", linestyle="none", label=label, capsize=3)
            ax.set_xlabel("rate (nats)")
            ax.set_ylabel("distortion (nats)")
            ax.set_title("test rate-distortion (mean ± s.e. over seeds)", fontsize=9)
            ax.legend(fontsize=8)
            paths.append(_save(fig, out / "rate_distortion.png"))
    return paths
