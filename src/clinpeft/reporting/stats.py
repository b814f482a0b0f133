"""Statistics and per-label lists of `clinpeft report`, from each run's predictions.csv.

Table 3 itself comes from metrics.json (tables.py). This module reads the test predictions that
every `clinpeft finetune` run writes (predictions.csv: id, label, p_<label> per label of
labels.txt) and adds:

- the 95% bootstrap interval of every cell and of each row's macro average (evaluation/bootstrap.py:
  notes sorted by id, one random stream per task, so a cell's interval equals the one in its
  metrics.json up to the rounding of predictions.csv);
- with `--compare ROW`, the paired bootstrap p-value of each cell against the same task of ROW
  (both rows resampled on the same notes; refused when the two runs' test notes differ);
- each cell's ROC points, drawn by figures.py, and labels_<task>.md (best and worst labels of the
  multilabel tasks).

A run without predictions.csv keeps the interval recorded in its metrics.json, if any, and gets
no p-value or curve; a footnote says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve, roc_curve
from tqdm.auto import tqdm

from clinpeft.data.predictions import predicted_cells, read_probability_columns
from clinpeft.data.tasks import extra_columns, read_labels, split_multilabel
from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.bootstrap import (
    Bootstrap,
    PairedTest,
    bootstrap_auroc,
    macro_values,
    paired_p_value,
    paired_test,
    percentile_interval,
)
from clinpeft.evaluation.clinical import (
    DEFAULT_SPECIFICITY,
    MIN_POSITIVES,
    bootstrap_clinical,
    class_support,
    clinical_metrics,
    operating_point,
    reliability,
)
from clinpeft.evaluation.metrics import auroc_binary, auroc_multiclass, auroc_multilabel
from clinpeft.files import read_csv
from clinpeft.reporting.runs import Row, recorded_auroc, recorded_ci, recorded_test
from clinpeft.run_files import LABELS, METRICS, PREDICTIONS, VAL_PREDICTIONS

SIGNIFICANCE = 0.05  # cells with p below this get a mark in the comparison table
N_BEST_WORST = 5  # labels listed at each end in labels_<task>.md


# --------------------------------------------------------------------------- predictions


@dataclass
class Predictions:
    """A run's test predictions: ids (str), y (class indices or (n, L) multi-hot), probs ((n, C))."""

    ids: np.ndarray
    y: np.ndarray
    probs: np.ndarray | None
    labels: list[str]
    task_type: str
    groups: dict[str, np.ndarray] = field(default_factory=dict)  # subgroup columns carried from the task CSV
    predicted: np.ndarray | None = None  # the `predicted` column; computed (argmax / >= 0.5) for older files


def check_prediction_rows(run: dict, file: str, path: Path, n_rows: int) -> None:
    """A predictions file holds as many rows as its run scored (metrics.json's n_examples of that split): a file
    cut short (a copy that stopped, a disk that filled) would otherwise be reported as if it were the whole split."""
    split = "val" if file == VAL_PREDICTIONS else ("test" if isinstance(run.get("test"), dict) else "eval")
    expected = run.get(split, {}).get("n_examples") if isinstance(run.get(split), dict) else None
    if isinstance(expected, int) and not isinstance(expected, bool) and expected != n_rows:
        raise ClinpeftError(f"{path}: {n_rows} rows, but the run scored {expected} {split} notes (metrics.json "
                            f"{split}.n_examples); the file is incomplete: restore it or re-run `clinpeft evaluate`")


def read_predictions(run: dict, file: str = PREDICTIONS) -> Predictions | None:
    """The run's predictions.csv and labels.txt, or None when the run has no predictions.csv.

    Columns: id, label (one label, or comma-joined codes for multilabel tasks), p_<label> for every
    label of labels.txt in that order. Malformed files -> ClinpeftError naming the file and row.
    """
    run_dir = Path(run["_dir"])
    path = run_dir / file
    if not path.is_file():
        return None
    labels_path = run_dir / LABELS
    if not labels_path.is_file():
        raise ClinpeftError(f"{labels_path} not found; predictions.csv needs the run's label vocabulary next to it")
    labels = read_labels(labels_path)
    frame = read_csv(path, (), "predictions file", "re-run `clinpeft evaluate` on the run")
    check_prediction_rows(run, file, path, len(frame))
    columns = ["id", "label", *read_probability_columns(run_dir, labels)]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ClinpeftError(f"{path}: missing column(s) {', '.join(missing[:5])}; expected id, label and p_<label> "
                            f"for each label of {LABELS}")
    try:
        probs = frame[columns[2:]].astype(np.float64).to_numpy()
    except ValueError as exc:
        raise ClinpeftError(f"{path}: a probability is not a number ({exc})") from None
    if not np.all(np.isfinite(probs)):
        row = int(np.flatnonzero(~np.isfinite(probs).all(axis=1))[0]) + 2
        raise ClinpeftError(f"{path}, row {row}: probability is NaN or inf; re-run the evaluation")
    index = {label: i for i, label in enumerate(labels)}
    task_type = str(run.get("task_type") or ("binary" if len(labels) == 2 else "multiclass"))
    if task_type == "multilabel":
        y = np.zeros((len(frame), len(labels)), dtype=np.int8)
        for row, cell in enumerate(frame["label"]):
            for code in split_multilabel(cell):
                if code not in index:
                    raise ClinpeftError(f"{path}, row {row + 2}: label {code!r} is not in {LABELS}")
                y[row, index[code]] = 1
    else:
        unknown = sorted(set(frame["label"]) - set(index))
        if unknown:
            raise ClinpeftError(f"{path}: label(s) {', '.join(map(repr, unknown[:5]))} not in {LABELS}")
        y = frame["label"].map(index).to_numpy(dtype=np.int64)
    groups = {name: frame[name].to_numpy(dtype=str) for name in extra_columns(frame) if name not in columns}
    predicted = (frame["predicted"].to_numpy(dtype=str) if "predicted" in frame.columns
                 else np.asarray(predicted_cells(task_type, probs, labels), dtype=str))
    return Predictions(frame["id"].to_numpy(dtype=str), y, probs, labels, task_type, groups, predicted)


def _same_notes(a: Predictions, b: Predictions, dir_a, dir_b) -> None:
    """Refuse a paired comparison unless both runs scored the same notes with the same gold labels."""
    ids_a, ids_b = set(a.ids.tolist()), set(b.ids.tolist())
    if ids_a != ids_b:
        only_a, only_b = len(ids_a - ids_b), len(ids_b - ids_a)
        raise ClinpeftError(
            f"--compare: {dir_a} and {dir_b} were tested on different notes ({only_a} ids only in the first, "
            f"{only_b} only in the second); a paired test needs the same test split, compare rows evaluated on it"
        )
    order_a, order_b = np.argsort(a.ids, kind="stable"), np.argsort(b.ids, kind="stable")
    if a.labels != b.labels or not np.array_equal(a.y[order_a], b.y[order_b]):
        raise ClinpeftError(f"--compare: {dir_a} and {dir_b} have different gold labels for the same note ids; "
                            "they were not evaluated on the same task data")


# --------------------------------------------------------------------------- statistics


@dataclass
class Cell:
    """A Table 3 cell: test AUROC (fraction), its interval and where the interval came from."""

    auroc: float | None
    ci: tuple[float, float] | None = None
    source: str | None = None  # "predictions.csv" | "metrics.json"
    boot: Bootstrap | None = None
    preds: Predictions | None = None  # ids and gold labels; probs freed once resampled (see below)
    roc: tuple[np.ndarray, np.ndarray] | None = None  # (false positive rates, true positive rates)
    pr: tuple[np.ndarray, np.ndarray] | None = None  # (recall, precision), same averaging as roc
    reliability: list[dict] | None = None  # evaluation.clinical.reliability bins
    clinical: dict = field(default_factory=dict)  # AUPRC, prevalence, Brier, ECE, OvR/micro AUROC, *_ci
    support: dict | None = None  # evaluation.clinical.class_support of the test split
    subgroups: dict[str, list[dict]] = field(default_factory=dict)  # column -> one record per group


@dataclass
class Table3Stats:
    n_resamples: int
    seed: int
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)  # (row name, task) -> Cell
    macro_ci: dict[str, tuple[float, float]] = field(default_factory=dict)  # row name -> interval (fraction)
    compare_row: str | None = None
    paired: dict[tuple[str, str], PairedTest] = field(default_factory=dict)  # (row name, task or "macro")
    notes: list[str] = field(default_factory=list)
    min_positives: int = MIN_POSITIVES
    specificity: float = DEFAULT_SPECIFICITY
    subgroup_columns: list[str] = field(default_factory=list)


def resolve_row(wanted: str, names: list[str]) -> str:
    """The Table 3 row named `wanted`: an exact name, else the only row containing it (case-insensitive)."""
    if wanted in names:
        return wanted
    hits = [name for name in names if wanted.strip().lower() in name.lower()]
    if len(hits) == 1:
        return hits[0]
    listing = "; ".join(repr(n) for n in names)
    if not hits:
        raise ClinpeftError(f"--compare {wanted!r} matches no Table 3 row; the rows are: {listing}")
    raise ClinpeftError(f"--compare {wanted!r} matches {len(hits)} rows ({'; '.join(map(repr, hits))}); "
                        "pass the full row name, as printed in Table 3")


def _columns_truth(preds: Predictions, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth, score) columns whose curves are averaged: binary one column; multiclass one-vs-rest per class;
    multilabel per label. Only columns with both classes."""
    if preds.task_type == "binary":
        truth, score = (preds.y == 1)[:, None], probs[:, -1:]
    elif preds.task_type == "multiclass":
        truth, score = np.eye(len(preds.labels), dtype=bool)[preds.y], probs
    else:
        truth, score = preds.y.astype(bool), probs
    keep = truth.any(axis=0) & ~truth.all(axis=0)
    return truth[:, keep], score[:, keep]


GRID = np.linspace(0.0, 1.0, 201)


def roc_points(preds: Predictions) -> tuple[np.ndarray, np.ndarray] | None:
    """The ROC curve drawn for a run, **the same averaging as the table** (never micro): binary = the ROC of
    P(class 1); multiclass / multilabel = the macro-averaged curve, the mean over classes (one-vs-rest) /
    labels with both classes of their true positive rate at each false positive rate (201 points). Its area
    is close to, but not exactly, the macro AUROC; the legend shows the table's value. None without a column."""
    truth, score = _columns_truth(preds, preds.probs)
    if truth.shape[1] == 0:
        return None
    if preds.task_type == "binary":
        fpr, tpr, _ = roc_curve(truth[:, 0], score[:, 0])
        return fpr, tpr
    tprs = []
    for j in range(truth.shape[1]):
        fpr, tpr, _ = roc_curve(truth[:, j], score[:, j])
        tprs.append(np.interp(GRID, fpr, tpr))
    return GRID, np.mean(tprs, axis=0)


def pr_points(preds: Predictions) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision-recall curve drawn for a run (recall, precision), averaged as `roc_points`: binary for class
    1; otherwise the mean over columns with a positive of the (step, right-continuous) precision at each recall."""
    truth, score = _columns_truth(preds, preds.probs)
    if truth.shape[1] == 0:
        return None
    curves = []
    for j in range(truth.shape[1]):
        precision, recall, _ = precision_recall_curve(truth[:, j], score[:, j])
        if preds.task_type == "binary":
            return recall, precision
        order = np.argsort(recall, kind="stable")
        curves.append(np.interp(GRID, recall[order], precision[order]))
    return GRID, np.mean(curves, axis=0)


def _clinical_cell(cell: Cell, run: dict, preds: Predictions, stream: str, n_resamples: int, seed: int,
                   min_positives: int, specificity: float) -> None:
    """Fills cell.clinical (point values, intervals on the AUROC's resamples, operating point), support, curves."""
    cell.support = class_support(preds.task_type, preds.y, preds.labels, min_positives)
    cell.roc, cell.pr = roc_points(preds), pr_points(preds)
    try:
        cell.clinical = clinical_metrics(preds.task_type, preds.y, preds.probs)
        cell.reliability = reliability(preds.task_type, preds.y, preds.probs)
    except ClinpeftError as exc:
        cell.clinical = {"error": str(exc)}
        return
    threshold = None
    if preds.task_type == "binary":
        val = read_predictions(run, VAL_PREDICTIONS)
        if val is not None:
            try:
                op = operating_point(val.y, val.probs[:, -1], preds.y, preds.probs[:, -1], specificity)
                threshold = op["threshold"]
                cell.clinical["operating_point"] = op
            except ClinpeftError as exc:
                cell.clinical["operating_point"] = {"error": str(exc)}
    if n_resamples:
        cell.clinical.update(bootstrap_clinical(preds.task_type, preds.y, preds.probs, ids=preds.ids,
                                                n_resamples=n_resamples, seed=seed, stream=stream,
                                                threshold=threshold))


def subgroup_records(preds: Predictions, column: str, stream: str, n_resamples: int, seed: int,
                     multi_class: str = "ovo") -> list[dict]:
    """Per value of a subgroup column: notes, AUROC, AUPRC, Brier, ECE and their 95% intervals, each group
    resampled on its own (bootstrap.resample_indices over the group's notes sorted by id, stream
    "<task>|<column>=<value>"). A metric undefined in a group (one class only) is None."""
    records = []
    values = preds.groups[column]
    for value in sorted(set(values.tolist())):
        mask = values == value
        y, p, ids = preds.y[mask], preds.probs[mask], preds.ids[mask]
        record = {"group": value, "n": int(mask.sum()), "auroc": None, "auroc_ci": None}
        try:
            record["auroc"] = _point_auroc(preds.task_type, y, p, multi_class)
            if n_resamples:
                boot = bootstrap_auroc(preds.task_type, y, p, ids=ids, n_resamples=n_resamples, seed=seed,
                                       stream=f"{stream}|{column}={value}", multi_class=multi_class)
                record["auroc_ci"] = list(boot.interval())
        except ClinpeftError:
            pass
        try:
            record.update(clinical_metrics(preds.task_type, y, p))
            if n_resamples:
                record.update(bootstrap_clinical(preds.task_type, y, p, ids=ids, n_resamples=n_resamples, seed=seed,
                                                 stream=f"{stream}|{column}={value}"))
        except ClinpeftError:
            pass
        records.append(record)
    return records


def _point_auroc(task_type: str, y: np.ndarray, probs: np.ndarray, multi_class: str) -> float:
    if task_type == "binary":
        return auroc_binary(y, probs[:, -1])
    if task_type == "multiclass":
        return auroc_multiclass(y, probs, multi_class)
    return auroc_multilabel(y, probs).auroc


def largest_gap(records: list[dict], key: str = "auroc") -> tuple[float, str, str] | None:
    """(max - min of `key` over the groups where it is defined, the best group, the worst group), or None."""
    defined = [(r[key], r["group"]) for r in records if r.get(key) is not None]
    if len(defined) < 2:
        return None
    (low, worst), (high, best) = min(defined), max(defined)
    return float(high - low), best, worst


def table3_statistics(rows: list[Row], tasks: list[str], *, n_resamples: int = 1000, seed: int = 0,
                      compare: str | None = None, progress: bool = False, min_positives: int = MIN_POSITIVES,
                      specificity: float = DEFAULT_SPECIFICITY, subgroups: list[str] = ()) -> Table3Stats:
    """Intervals of every cell and macro average, and the paired p-values against `compare`.

    Cell interval: bootstrap of the run's predictions.csv (n_resamples, seed, stream = the task
    name as recorded in metrics.json), else the "auroc_ci" recorded in metrics.json, else none.
    Macro interval of a row: percentile interval of the mean over the row's tasks of their
    resample-b AUROCs (each task resampled independently); only when every task of the row has
    predictions. Paired p-values: bootstrap.paired_p_value on the two rows' resamples of the same
    notes; the macro's on the resampled macro averages, when both rows have predictions for the
    same tasks.
    """
    stats = Table3Stats(n_resamples=n_resamples, seed=seed, min_positives=min_positives, specificity=specificity,
                        subgroup_columns=list(subgroups))
    reference = resolve_row(compare, [r.name for r in rows]) if compare is not None else None  # fail before work
    no_predictions: list[str] = []
    work = [(row, task) for row in rows for task in tasks if task in row.runs]
    for row, task in tqdm(work, desc="bootstrap", unit="cell", disable=not progress or n_resamples == 0):
        run = row.runs[task]
        cell = Cell(auroc=recorded_auroc(run))
        preds = read_predictions(run)
        multi_class = str(recorded_test(run).get("multi_class", "ovo"))
        stream = str(run.get("task", task))
        if preds is not None:
            cell.preds = preds
            if n_resamples:
                cell.boot = bootstrap_auroc(preds.task_type, preds.y, preds.probs, ids=preds.ids,
                                            n_resamples=n_resamples, seed=seed, stream=stream, multi_class=multi_class)
                cell.ci, cell.source = cell.boot.interval(), PREDICTIONS
            _clinical_cell(cell, run, preds, stream, n_resamples, seed, min_positives, specificity)
            for column in subgroups:
                if column in preds.groups:
                    cell.subgroups[column] = subgroup_records(preds, column, stream, n_resamples, seed, multi_class)
            preds.probs = None  # (notes x labels) float64: ~100 MB for a DIAG run on MIMIC-III; not needed again
        else:
            cell.support = recorded_test(run).get("class_support")
            if run.get("kind") != "probe":  # a linear probe row (reporting/runs.probe_runs) never has them
                no_predictions.append(str(run["_dir"]))
        if cell.ci is None and recorded_ci(run) is not None:
            cell.ci, cell.source = recorded_ci(run), METRICS
        stats.cells[(row.name, task)] = cell

    for row in rows:
        cells = [stats.cells[(row.name, t)] for t in tasks if t in row.runs]
        boots = [cell.boot for cell in cells if cell.auroc is not None]  # the tasks of the row's macro avg
        if boots and all(b is not None for b in boots):
            stats.macro_ci[row.name] = percentile_interval(macro_values(boots))
    if no_predictions and n_resamples:
        stats.notes.append(f"No {PREDICTIONS} (interval from metrics.json when recorded, no p-value, no ROC "
                           f"curve, no macro interval for the row) in: {', '.join(no_predictions)}.")
    if reference is not None:
        _compare(stats, rows, tasks, reference)
    return stats


def _compare(stats: Table3Stats, rows: list[Row], tasks: list[str], reference: str) -> None:
    stats.compare_row = reference
    ref = next(r for r in rows if r.name == reference)
    for row in rows:
        if row.name == reference:
            continue
        common = []
        for task in tasks:
            mine, theirs = stats.cells.get((row.name, task)), stats.cells.get((reference, task))
            if not (mine and theirs and mine.boot is not None and theirs.boot is not None):
                continue
            _same_notes(mine.preds, theirs.preds, row.runs[task]["_dir"], ref.runs[task]["_dir"])
            if mine.auroc is None or theirs.auroc is None:
                continue
            stats.paired[(row.name, task)] = paired_test(mine.boot, theirs.boot, mine.auroc, theirs.auroc)
            common.append(task)
        if common and set(common) == set(row.runs) == set(ref.runs):
            mine = macro_values([stats.cells[(row.name, t)].boot for t in common])
            theirs = macro_values([stats.cells[(reference, t)].boot for t in common])
            observed = np.mean([stats.cells[(row.name, t)].auroc - stats.cells[(reference, t)].auroc for t in common])
            p, used = paired_p_value(mine, theirs)
            stats.paired[(row.name, "macro")] = PairedTest(float(observed), percentile_interval(mine - theirs), p, used)


# --------------------------------------------------------------------------- formatting


def format_interval(ci: tuple[float, float] | None) -> str:
    """An AUROC interval (fractions) in % with 1 decimal: (0.761, 0.805) -> "[76.1, 80.5]".
    One decimal: with 1000 resamples the bounds move by about 0.1 points (sd over seeds, 706 notes)."""
    if ci is None or not all(math.isfinite(v) for v in ci):
        return ""
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def format_p(p: float) -> str:
    """A p-value with 3 decimals ("p=0.041"); "p<0.001" below."""
    if not math.isfinite(p):
        return ""
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def comparison_table(stats: Table3Stats, rows: list[Row], tasks: list[str], macro_name: str) -> pd.DataFrame:
    """Rows x (tasks, macro): difference to the reference row in AUROC points, its p-value, and a
    dagger when p < 0.05. The reference row reads "(reference)"."""
    records = []
    for row in rows:
        if row.name == stats.compare_row:
            records.append([row.name, *["(reference)"] * (len(tasks) + 1)])
            continue
        cells = []
        for key in [*tasks, "macro"]:
            test = stats.paired.get((row.name, key))
            if test is None or not math.isfinite(test.p_value):
                cells.append("")
                continue
            mark = "\u2020" if test.p_value < SIGNIFICANCE else ""
            cells.append(f"{100 * test.diff:+.2f} ({format_p(test.p_value)}){mark}")
        records.append([row.name, *cells])
    return pd.DataFrame(records, columns=["Model", *(t.upper() for t in tasks), macro_name])


def reading_notes(stats: Table3Stats, rows: list[Row], tasks: list[str]) -> list[str]:
    """Footnotes on how to read the intervals and p-values, with this table's own interval widths."""
    widths = []
    for task in tasks:
        cells = [stats.cells[(r.name, task)] for r in rows if (r.name, task) in stats.cells]
        spans = [100 * (c.ci[1] - c.ci[0]) for c in cells if c.ci is not None]
        sizes = sorted({len(c.preds.ids) for c in cells if c.preds is not None})
        if spans:
            notes = f"{sizes[0]}" if len(sizes) == 1 else ("/".join(map(str, sizes)) if sizes else "?")
            widths.append(f"{task.upper()} {np.median(spans):.1f} points ({notes} notes)")
    lines = []
    if widths:
        lines.append(
            f"[lo, hi]: 95% percentile bootstrap interval of the test AUROC ({stats.n_resamples} resamples of the "
            f"test notes with replacement, seed {stats.seed}; clinpeft/evaluation/bootstrap.py). "
            "Median interval width here: "
            f"{'; '.join(widths)}. Two rows whose AUROCs differ by less than about half that width are not "
            "distinguishable on this test set (e.g. a 1-point difference on ~700 notes is noise). "
            "Overlapping intervals are not a test; the paired p-values of `clinpeft report --compare ROW` are."
        )
    if stats.macro_ci:
        lines.append("Macro avg interval: each task resampled independently, the mean of the tasks' resampled "
                     "AUROCs per resample.")
    return lines + stats.notes


def comparison_notes(stats: Table3Stats, rows: list[Row], tasks: list[str]) -> list[str]:
    n_tests = sum(1 for key in stats.paired)
    return [
        f"Difference = row AUROC - {stats.compare_row} AUROC, in points (x 100). p: two-sided paired bootstrap "
        f"p-value ({stats.n_resamples} resamples, both rows resampled on the same test notes): twice the share of "
        "resampled differences on the far side of 0, with the +1 correction; the smallest possible is "
        f"{2 / (stats.n_resamples + 1):.3f}. \u2020 p < {SIGNIFICANCE}, not corrected for the {n_tests} comparisons "
        "in this table (with that many, about 1 in 20 true-null cells is marked by chance).",
        "Blank: no predictions.csv for one of the two runs, or a task the reference row lacks. Macro avg: paired "
        "difference of the macro averages over the tasks both rows have (only when they have the same tasks).",
    ]


def comparison_sentence(stats: Table3Stats, macro: dict[str, float]) -> str:
    """One sentence under Table 3, written from the numbers: the best row on the macro average and, for every
    other row with a paired macro test against the `--compare` row, whether it differs from it beyond chance
    (two-sided paired bootstrap p < SIGNIFICANCE) or not. `macro`: row name -> macro AUROC in %. "" without a
    comparison."""
    macro = {name: float(v) for name, v in macro.items() if v is not None and math.isfinite(float(v))}
    ref = stats.compare_row
    if ref is None or ref not in macro:
        return ""
    tested = [(name, test) for (name, key), test in stats.paired.items()
              if key == "macro" and math.isfinite(test.p_value) and name in macro]
    best = max(macro, key=macro.get)

    def with_ci(name: str) -> str:
        interval = format_interval(stats.macro_ci.get(name))
        return f"{name} ({macro[name]:.1f}{' ' + interval if interval else ''})"

    def listing(items) -> str:
        return ", ".join(f"{name} ({100 * t.diff:+.1f} points, {format_p(t.p_value)})" for name, t in items)

    differ = [(n, t) for n, t in tested if t.p_value < SIGNIFICANCE]
    same = [(n, t) for n, t in tested if t.p_value >= SIGNIFICANCE]
    sentence = f"On the macro average the best row is {with_ci(best)}"
    if not tested:
        return sentence + f"; no row has a paired macro comparison with {ref}."
    clauses = []
    if differ:
        clauses.append(f"{listing(differ)} {'differs' if len(differ) == 1 else 'differ'} from it beyond chance "
                       f"(paired bootstrap p < {SIGNIFICANCE})")
    if same and differ:
        clauses.append(f"{listing(same)} {'does' if len(same) == 1 else 'do'} not (within this test set's noise)")
    elif same:
        clauses.append(f"no row differs from it at paired bootstrap p < {SIGNIFICANCE} (within this test set's "
                       f"noise): {listing(same)}")
    return f"{sentence}; against {with_ci(ref)}, " + ", and ".join(clauses) + "."


# --------------------------------------------------------------------------- label lists


def task_file_stem(task: str) -> str:
    """A task as it appears in file names (roc_<stem>.png, labels_<stem>.md): lower-case, safe characters."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in task.lower())


def label_lists(stats: Table3Stats, rows: list[Row], task: str, n: int = N_BEST_WORST) -> str | None:
    """Markdown: per row, the n best and n worst labels of a multilabel task by test AUROC, with
    support (positive test notes) and, from predictions, the label's 95% bootstrap interval.
    From metrics.json's per_label_auroc / per_label_support. None if no row has them."""
    sections = []
    for row in rows:
        run = row.runs.get(task)
        if run is None or run.get("task_type") != "multilabel":
            continue
        test = recorded_test(run)
        per_label, support = test.get("per_label_auroc") or {}, test.get("per_label_support") or {}
        if not per_label:
            continue
        cell = stats.cells.get((row.name, task))
        label_ci = {}
        if cell is not None and cell.boot is not None and cell.boot.per_label is not None:
            for j, label in enumerate(cell.preds.labels):
                if label in per_label:
                    label_ci[label] = percentile_interval(cell.boot.per_label[:, j])
        ranked = sorted(per_label.items(), key=lambda kv: (-float(kv[1]), kv[0]))
        best, worst = ranked[:n], ranked[::-1][:n]
        skipped = test.get("n_labels_skipped")
        lines = [f"## {row.name}", "",
                 f"{len(per_label)} labels evaluated, {skipped if skipped is not None else '?'} skipped "
                 "(one class only in the test split).", ""]
        for heading, chosen in (("Best", best), ("Worst", worst)):
            lines += [f"{heading} {len(chosen)}:", "", "| Label | AUROC | 95% interval | Support |",
                      "|---|---:|---:|---:|"]
            for label, value in chosen:
                lines.append(f"| {label} | {100 * float(value):.2f} | {format_interval(label_ci.get(label))} | "
                             f"{support.get(label, '')} |")
            lines.append("")
        sections.append("\n".join(lines))
    if not sections:
        return None
    header = (f"# {task.upper()}: best and worst labels by test AUROC\n\n"
              "Per-label AUROC on sigmoid probabilities (x 100); support = positive test notes of the label. "
              "Labels with few positives have wide intervals: their rank is mostly noise.\n\n")
    return header + "\n".join(sections)


def write_label_lists(out: Path, stats: Table3Stats, rows: list[Row], tasks: list[str]) -> dict[str, Path]:
    written = {}
    for task in tasks:
        text = label_lists(stats, rows, task)
        if text:
            name = f"labels_{task_file_stem(task)}.md"
            (out / name).write_text(text, encoding="utf-8")
            written[name] = out / name
    return written
