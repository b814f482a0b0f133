"""clinical.md and subgroups.md of `clinpeft report`: the numbers a clinical reviewer asks for beyond AUROC.

Everything comes from the cells stats.py filled from each run's predictions.csv (and predictions_val.csv for
the operating point); definitions in clinpeft/evaluation/clinical.py. Intervals are 95% percentile bootstrap
intervals on the same resamples as the AUROC's.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from clinpeft.reporting.runs import Row
from clinpeft.reporting.stats import Table3Stats, largest_gap

CLINICAL_COLUMNS = ["Model", "Task", "AUROC", "AUPRC", "Prevalence", "Brier", "ECE", "Other AUROC",
                    "Sensitivity", "PPV", "Specificity", "Threshold"]


def _num(value, scale: float = 100.0, digits: int = 1) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return ""
    return f"{scale * value:.{digits}f}"


def _with(value, ci, scale: float = 100.0, digits: int = 1) -> str:
    text = _num(value, scale, digits)
    if text and ci and all(isinstance(v, (int, float)) and math.isfinite(v) for v in ci):
        text += f" [{scale * ci[0]:.{digits}f}, {scale * ci[1]:.{digits}f}]"
    return text


def _prevalence(value) -> str:
    if isinstance(value, dict):
        return " / ".join(f"{100 * v:.0f}" for v in value.values())
    return _num(value)


def clinical_frame(stats: Table3Stats, rows: list[Row], tasks: list[str]) -> pd.DataFrame:
    """One line per (row, task) with predictions: AUROC, AUPRC (x100) with prevalence (%), Brier and ECE
    (x100), the other AUROC definition (multiclass one-vs-rest; multilabel micro), and for binary tasks
    sensitivity / PPV / specificity (%) on test at the threshold fixed on validation."""
    records = []
    for row in rows:
        for task in tasks:
            cell = stats.cells.get((row.name, task))
            if cell is None or not cell.clinical:
                continue
            c = cell.clinical
            if "error" in c:
                records.append([row.name, task.upper(), _with(cell.auroc, cell.ci), c["error"], *[""] * 8])
                continue
            other = ""
            if "auroc_ovr" in c:
                other = f"one-vs-rest {_num(c['auroc_ovr'])}"
            elif "auroc_micro" in c:
                other = f"micro {_num(c['auroc_micro'])}"
            op = c.get("operating_point") or {}
            test = op.get("test") or {}
            records.append([
                row.name, task.upper(), _with(cell.auroc, cell.ci), _with(c.get("auprc"), c.get("auprc_ci")),
                _prevalence(c.get("prevalence")), _with(c.get("brier"), c.get("brier_ci")),
                _with(c.get("ece"), c.get("ece_ci")), other,
                _with(test.get("sensitivity"), c.get("sensitivity_ci")), _with(test.get("ppv"), c.get("ppv_ci")),
                _with(test.get("specificity"), c.get("specificity_ci")),
                f"{op['threshold']:.3f}" if isinstance(op.get("threshold"), float) else op.get("error", "")[:60],
            ])
    return pd.DataFrame(records, columns=CLINICAL_COLUMNS)


def clinical_notes(stats: Table3Stats) -> list[str]:
    return [
        "AUROC: as Table 3 (multiclass one-vs-one, multilabel macro over labels); 'Other AUROC' gives the "
        "multiclass one-vs-rest macro and the multilabel micro AUROC (every note-label pair).",
        "AUPRC: average precision (x100; macro over classes one-vs-rest / labels with a positive). A random "
        "model's AUPRC equals the prevalence (%, per class for multiclass): read them together.",
        "Brier: mean squared error of the predicted probabilities (x100; lower is better; multiclass: sum over "
        "classes). ECE: expected calibration error (x100), 10 equal-width probability bins weighted by size "
        "(binary: P(class 1); multiclass: top-class confidence; multilabel: every note-label pair).",
        f"Sensitivity, PPV, specificity (%): on test, calling a note positive when P(class 1) >= the threshold "
        f"that reaches specificity {stats.specificity:g} on the validation split (predictions_val.csv); blank "
        "for runs without validation predictions (run before this version) and for non-binary tasks.",
        f"[lo, hi]: 95% percentile bootstrap interval, {stats.n_resamples} resamples, the same resamples as the "
        "AUROC interval.",
    ]


def subgroup_frame(stats: Table3Stats, rows: list[Row], tasks: list[str]) -> pd.DataFrame:
    """One line per (row, task, subgroup column, group): notes, AUROC, AUPRC, Brier, ECE with intervals; and a
    'largest gap' line per (row, task, column): best minus worst group AUROC."""
    records = []
    for row in rows:
        for task in tasks:
            cell = stats.cells.get((row.name, task))
            if cell is None:
                continue
            for column, groups in cell.subgroups.items():
                for g in groups:
                    records.append([row.name, task.upper(), column, g["group"], g["n"],
                                    _with(g.get("auroc"), g.get("auroc_ci")), _with(g.get("auprc"), g.get("auprc_ci")),
                                    _with(g.get("brier"), g.get("brier_ci")), _with(g.get("ece"), g.get("ece_ci"))])
                gap = largest_gap(groups)
                text = f"{100 * gap[0]:.1f} points ({gap[1]} over {gap[2]})" if gap else "fewer than 2 groups scored"
                records.append([row.name, task.upper(), column, "largest AUROC gap", "", text, "", "", ""])
    return pd.DataFrame(records, columns=["Model", "Task", "Column", "Group", "Notes", "AUROC", "AUPRC", "Brier",
                                          "ECE"])


SUBGROUP_NOTES = [
    "Per group: the run's test notes whose task CSV column has that value (carried into predictions.csv). "
    "AUROC / AUPRC / Brier / ECE x100 as in clinical.md; intervals resample each group's notes on its own "
    "(stream '<task>|<column>=<value>'). Blank: undefined (the group has one class only).",
    "Largest gap: best minus worst group AUROC among groups where it is defined. Small groups have wide "
    "intervals: a gap inside them is not evidence of a difference.",
]


def write_clinical(out: Path, stats: Table3Stats, rows: list[Row], tasks: list[str], markdown) -> dict[str, Path]:
    """clinical.md/.csv (when some cell has clinical metrics) and subgroups.md/.csv (when subgroups were asked).
    `markdown(title, frame, notes)` renders a document (tables.markdown_document)."""
    written = {}
    frame = clinical_frame(stats, rows, tasks)
    if not frame.empty:
        (out / "clinical.md").write_text(markdown("Clinical metrics on the test split", frame, clinical_notes(stats)),
                                         encoding="utf-8")
        frame.to_csv(out / "clinical.csv", index=False)
        written.update({"clinical.md": out / "clinical.md", "clinical.csv": out / "clinical.csv"})
    if stats.subgroup_columns:
        frame = subgroup_frame(stats, rows, tasks)
        notes = list(SUBGROUP_NOTES)
        missing = [c for c in stats.subgroup_columns if c not in set(frame["Column"])]
        if missing:
            notes.append(f"No predictions.csv holds the column(s) {', '.join(missing)} (task CSVs without them, or "
                         "runs from before this version).")
        (out / "subgroups.md").write_text(markdown("Subgroups", frame, notes), encoding="utf-8")
        frame.to_csv(out / "subgroups.csv", index=False)
        written.update({"subgroups.md": out / "subgroups.md", "subgroups.csv": out / "subgroups.csv"})
    return written
