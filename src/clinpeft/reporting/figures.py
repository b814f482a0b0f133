"""Report figures (matplotlib, Agg backend: files only, no display): ROC curves and macro AUROC bars.

    roc_<task>.png      one ROC curve per Table 3 row on the task's test notes
    macro_auroc.png     macro AUROC of each row with its 95% bootstrap interval as error bars

The figures only draw what stats.py computed; they hold no note text.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: report runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clinpeft.reporting.runs import Row  # noqa: E402
from clinpeft.reporting.stats import Table3Stats, task_file_stem  # noqa: E402


def write_plots(out: Path, stats: Table3Stats, rows: list[Row], tasks: list[str],
                macro: dict[str, float | None]) -> dict[str, Path]:
    """roc_<task>.png for every task with predictions; macro_auroc.png when some run has predictions.
    `macro`: row name -> macro AUROC in % (as in Table 3). Returns {file name: path}."""
    written = {}
    for task in tasks:
        curves, kind = _roc_curves(stats, rows, task)
        if not curves:
            continue
        title = f"{task.upper()}: ROC curves on the test notes"
        if kind == "multilabel":
            title += "\nmacro-averaged over labels (mean TPR at each FPR), as Table 3's macro AUROC"
        elif kind == "multiclass":
            title += "\nmacro-averaged one-vs-rest curve (mean TPR at each FPR); legend: Table 3's AUROC"
        name = f"roc_{task_file_stem(task)}.png"
        written[name] = roc_figure(out / name, title, curves)
    for task in tasks:
        stem = task_file_stem(task)
        pr = [(f"{row.name} (AUPRC {100 * c.clinical['auprc']:.1f})", c.pr[0], c.pr[1], c.clinical.get("prevalence"))
              for row in rows if (c := stats.cells.get((row.name, task))) is not None and c.pr is not None
              and "auprc" in c.clinical]
        if pr:
            written[f"pr_{stem}.png"] = pr_figure(out / f"pr_{stem}.png", f"{task.upper()}: precision-recall on the "
                                                  "test notes (AP; dotted: prevalence)", pr)
        rel = [(row.name, c.reliability, c.clinical.get("ece")) for row in rows
               if (c := stats.cells.get((row.name, task))) is not None and c.reliability]
        if rel:
            written[f"reliability_{stem}.png"] = reliability_figure(
                out / f"reliability_{stem}.png", f"{task.upper()}: reliability (10 equal-width bins)", rel)
    if not any(cell.boot is not None for cell in stats.cells.values()):
        return written  # only recorded numbers, nothing resampled: the table says it all
    bars = _macro_bars(stats, rows, macro)
    if bars:
        written["macro_auroc.png"] = macro_bar_figure(out / "macro_auroc.png",
                                                      "Macro AUROC over tasks, test split", bars)
    return written


def _roc_curves(stats: Table3Stats, rows: list[Row], task: str) -> tuple[list[tuple], str | None]:
    """([(legend text, fpr, tpr)] of the rows with a ROC curve for `task`, the task type of the last one)."""
    curves, kind = [], None
    for row in rows:
        cell = stats.cells.get((row.name, task))
        if cell is None or cell.roc is None:
            continue
        kind, (fpr, tpr) = cell.preds.task_type, cell.roc
        table = "" if cell.auroc is None else f"{100 * cell.auroc:.1f}"
        label = f"{row.name} (AUROC {table})"  # the table's value: the plot never shows another definition
        curves.append((label, fpr, tpr))
    return curves, kind


def _macro_bars(stats: Table3Stats, rows: list[Row], macro: dict[str, float | None]) -> list[tuple]:
    """[(row name, macro AUROC in %, interval low, interval high)] of the rows with a macro average."""
    bars = []
    for row in rows:
        value = macro.get(row.name)
        if value is None or not math.isfinite(value):
            continue
        ci = stats.macro_ci.get(row.name)
        low, high = (100 * ci[0], 100 * ci[1]) if ci else (None, None)
        bars.append((row.name, value, low, high))
    return bars


def roc_figure(path: Path, title: str, curves: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """Writes one ROC plot: curves = [(legend text, false positive rates, true positive rates)],
    with the chance diagonal. Returns path."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    for label, fpr, tpr in curves:
        ax.plot(fpr, tpr, linewidth=1.6, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance (AUROC 50)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)")
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def macro_bar_figure(path: Path, title: str, bars: list[tuple[str, float, float | None, float | None]]) -> Path:
    """Writes horizontal bars of macro AUROC (x 100) per row, top row first: bars = [(row name,
    value, interval low, interval high)], error bars where the interval is known. Returns path."""
    names = [b[0] for b in bars]
    values = np.array([b[1] for b in bars], dtype=float)
    lows = np.array([b[1] - b[2] if b[2] is not None else 0.0 for b in bars])
    highs = np.array([b[3] - b[1] if b[3] is not None else 0.0 for b in bars])
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * len(bars)), dpi=110)
    y = np.arange(len(bars))[::-1]  # first row at the top, as in the table
    ax.barh(y, values, xerr=np.vstack([lows, highs]), color="#4C72B0", alpha=0.85,
            error_kw={"ecolor": "black", "capsize": 3, "linewidth": 1})
    for yi, value, high in zip(y, values, highs):
        ax.text(value + high + 0.5, yi, f"{value:.1f}", va="center", fontsize=8)
    ax.axvline(50, color="grey", linestyle=":", linewidth=1)  # chance
    ax.set_yticks(y, names, fontsize=8)
    low_edge = min(50.0, float(np.nanmin(values - lows))) if len(bars) else 50.0
    ax.set_xlim(max(0.0, low_edge - 5), 100)
    ax.set_xlabel("Macro AUROC (%), error bars: 95% bootstrap interval")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def pr_figure(path: Path, title: str, curves: list[tuple]) -> Path:
    """Writes one precision-recall plot: curves = [(legend text, recall, precision, prevalence)], the
    prevalence (a random score's AP) as a dotted line per curve when it is one number. Returns path."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    for label, recall, precision, prevalence in curves:
        (line,) = ax.plot(recall, precision, linewidth=1.6, label=label, drawstyle="steps-post")
        if isinstance(prevalence, float):
            ax.axhline(prevalence, color=line.get_color(), linestyle=":", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def reliability_figure(path: Path, title: str, rows: list[tuple]) -> Path:
    """Writes a reliability diagram: rows = [(name, bins of evaluation.clinical.reliability, ECE)]: observed
    frequency against mean predicted probability per non-empty bin (marker area ~ bin size). Returns path."""
    fig, ax = plt.subplots(figsize=(6.4, 5.6), dpi=110)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfect calibration")
    for name, bins, ece in rows:
        x = [b["confidence"] for b in bins]
        y = [b["observed"] for b in bins]
        sizes = np.array([b["count"] for b in bins], dtype=float)
        label = name if ece is None else f"{name} (ECE {ece:.3f})"
        (line,) = ax.plot(x, y, marker="o", linewidth=1.2, markersize=3, label=label)
        ax.scatter(x, y, s=10 + 90 * sizes / sizes.max(), color=line.get_color(), alpha=0.4)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Mean predicted probability in bin", ylabel="Observed frequency")
    ax.set_title(title, fontsize=10)
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
