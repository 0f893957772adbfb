"""The tables of :mod:`experiments.report` in the shape of the paper's: Table 1 (signal game),
Fig. 1 right (semisupervised VAE) and Fig. 2 right (bit-vector VAE).

Rows are the paper's methods in its order, under its headings (a method the paper does not
list goes last, under "Other"); a cell is the selected setting's mean over seeds with the
spread the paper uses (standard deviation for Table 1 and Fig. 2, standard error for Fig. 1)
and the number of seeds.  The bit-VAE gets one column pair per latent size ``bits``.  Decoder
calls are the test ones for Table 1 (the receiver's calls per test game) and the training ones
of the last epoch for the VAEs (as the paper's Fig. 1 and Fig. 3 count them).
"""
__all__ = ["paper_table", "PAPER"]

_MC = "*Monte Carlo*"
_MARGINAL = "*Marginalization*"
# experiment -> (title, spread, columns (header, summary column, scale), rows (heading, methods))
PAPER = {
    "signal_game": (
        "Table 1 (shape): communication success on the test games, mean ± std over seeds",
        "std", (("Comm. succ. (%)", "success", 100.0), ("Dec. calls", "calls mean", 1.0)),
        ((_MC, (("sfe-01", "SFE (0/1)"), ("sfe-nll", "SFE (NLL)"), ("sfe-plus", "SFE+"),
                ("gumbel", "Gumbel"), ("st-gumbel", "ST Gumbel"))),
         (_MARGINAL, (("dense", "Dense"), ("sparsemax", "Sparse (proposed)"))))),
    "ssvae": (
        "Fig. 1 right (shape): semisupervised VAE test results, mean ± standard error over seeds",
        "se", (("Accuracy (%)", "accuracy", 100.0), ("ELBO", "ELBO", 1.0),
               ("Dec. calls (training)", "train calls", 1.0)),
        ((_MC, (("sfe", "SFE"), ("sfe-plus", "SFE+"), ("sum-and-sample", "Sum&Sample"),
                ("gumbel", "Gumbel"), ("st-gumbel", "ST Gumbel"))),
         (_MARGINAL, (("dense", "Dense"), ("sparsemax", "Sparsemax (proposed)"))))),
    "bitvae": (
        "Fig. 2 right (shape): bit-vector VAE test NLL (bits/dim), mean ± std over seeds",
        "std", (("NLL (bits/dim)", "NLL (bits/dim)", 1.0), ("Dec. calls (training)", "train calls", 1.0)),
        ((_MC, (("sfe", "SFE"), ("sfe-plus", "SFE+"), ("gumbel", "Gumbel"), ("st-gumbel", "ST Gumbel"))),
         ("*Sparse (proposed)*", (("topk", "Top-k sparsemax"), ("sparsemap", "SparseMAP"),
                                  ("sparsemap-budget", "SparseMAP (budget)"))))),
}


def _cell(stats, spread, scale):
    """``"93.37 ± 0.42"`` (``spread`` of ``stats`` times ``scale``); the mean alone for one seed."""
    if stats is None or stats["mean"] is None:
        return "—"
    mean = stats["mean"] * scale
    if stats[spread] is None:
        return f"{mean:.2f} (n=1)"
    return f"{mean:.2f} ± {stats[spread] * scale:.2f}"


def _columns(groups):
    """The distinct values of the group keys besides ``method`` (e.g. ``{"bits": 32}``), sorted
    (numbers before text)."""
    seen = []
    for g in groups:
        rest = {k: v for k, v in g["group"].items() if k != "method"}
        if rest not in seen:
            seen.append(rest)
    def order(split):
        return tuple((0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)) for v in split.values())
    return sorted(seen, key=order)


def paper_table(experiment, groups):
    """Markdown lines of the paper-shaped table of ``experiment`` from the report's ``groups``
    (each with ``group``, ``best`` and ``summary``), or ``[]`` for an unknown experiment."""
    if experiment not in PAPER:
        return []
    title, spread, columns, sections = PAPER[experiment]
    splits = _columns(groups)
    header = ["Method"]
    for split in splits:
        suffix = ", ".join(f"{k}={v}" for k, v in split.items())
        header += [f"{name}{', ' + suffix if suffix else ''}" for name, _, _ in columns] + ["seeds"]
    known = {m for _, methods in sections for m, _ in methods}
    other = sorted({str(g["group"]["method"]) for g in groups} - known)
    sections = sections + (("*Other*", tuple((m, m) for m in other)),) if other else sections
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for heading, methods in sections:
        present = [(m, name) for m, name in methods if any(g["group"]["method"] == m for g in groups)]
        if not present:
            continue
        lines.append("| " + heading + " |" + " |" * (len(header) - 1))
        for method, name in present:
            row = [name]
            for split in splits:
                g = next((g for g in groups if g["group"]["method"] == method
                          and all(g["group"].get(k) == v for k, v in split.items())), None)
                summary = g["summary"] if g and g["best"] else {}
                row += [_cell(summary.get(col), spread, scale) for _, col, scale in columns]
                row.append(str(g["best"]["validation"]["n"]) if g and g["best"] else "0")
            lines.append("| " + " | ".join(row) + " |")
    return lines + [""]
