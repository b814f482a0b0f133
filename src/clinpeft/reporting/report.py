"""`clinpeft report`: every report file from finished run directories alone.

    clinpeft report runs/ --out report/     # -> report/table2.{md,csv}, report/table3.{md,csv}, figures

runs.py finds and reads the runs, tables.py builds Tables 2 and 3, stats.py adds intervals, p-values
and label lists from each run's predictions.csv, figures.py draws the plots. The .md files are for
reading (rounded like the paper, with footnotes defining every number); the .csv files hold the
unrounded numbers and exact parameter counts for reuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.clinical import DEFAULT_SPECIFICITY, MIN_POSITIVES
from clinpeft.reporting.clinical import write_clinical
from clinpeft.reporting.figures import write_plots
from clinpeft.reporting.html import write_html
from clinpeft.reporting.runs import find_runs, probe_runs
from clinpeft.reporting.stats import comparison_sentence, reading_notes, table3_statistics, write_label_lists
from clinpeft.reporting.tables import (
    MACRO,
    comparison_section,
    markdown_document,
    table2_footnotes,
    table2_frames,
    table3_footnotes,
    table3_frames,
    table3_layout,
)

TABLE2_TITLE = "Table 2: domain-adaptive pretraining on clinical notes"
TABLE3_TITLE = "Table 3: downstream clinical outcome prediction, test AUROC (%)"


def write_report(paths: Iterable[str | Path], out_dir: str | Path, *, compare: str | None = None,
                 n_resamples: int = 1000, seed: int = 0, progress: bool = False, subgroups: list[str] = (),
                 min_positives: int = MIN_POSITIVES, specificity: float = DEFAULT_SPECIFICITY,
                 html: bool = False) -> dict[str, Path]:
    """Writes table2.md/table2.csv (if pretraining runs) and table3.md/table3.csv (if fine-tuning
    runs) into out_dir (created); returns {file name: path} of the files written.

    The .md files have a title line, the table (GitHub markdown) and footnotes defining the
    numbers (token-weighted perplexity; test AUROC in %; the macro average; skipped labels of
    multilabel tasks when recorded). The CSVs hold raw numbers, not formatted strings.

    Table 3 cells carry their 95% bootstrap interval ("78.40 [76.1, 80.5]"; CSV columns "<task> lo",
    "<task> hi" in %), computed from each run's predictions.csv with `n_resamples` and `seed`
    (0 resamples: only intervals recorded in metrics.json). With `compare` (a row name as printed,
    or a unique part of one), table3.md gets a second table: each cell's difference to that row
    and its paired bootstrap p-value (CSV: "<task> diff", "<task> p", "Compared with"). Also
    written: roc_<task>.png, macro_auroc.png (linked from table3.md) and labels_<task>.md (best and
    worst labels of multilabel tasks).

    Also: clinical.md/.csv (AUPRC with prevalence, Brier, ECE, the other AUROC definition, the operating
    point at `specificity` fixed on validation), pr_<task>.png and reliability_<task>.png; with `subgroups`
    (columns of the task CSVs carried into predictions.csv) subgroups.md/.csv; cells whose test split lacks
    a class or has fewer than `min_positives` examples of one get a footnote mark. With `html`,
    index.html: every table, plot and a model card per run in one self-contained page (reporting/html.py).
    """
    pretrain_runs, finetune_runs = find_runs(paths)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ClinpeftError(f"--out {out} is a file; choose a directory for the report")
    if compare is not None and not finetune_runs:
        raise ClinpeftError("--compare needs fine-tuning runs (metrics.json); "
                            "the given paths hold only pretraining runs")
    if compare is not None and n_resamples <= 0:
        raise ClinpeftError("--compare needs resamples for its p-values; drop --bootstrap-resamples 0 (default 1000)")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if pretrain_runs:
        written.update(_write_table2(out, pretrain_runs))
    stats = rows = tasks = None
    if finetune_runs:
        table_runs = finetune_runs + probe_runs(finetune_runs)  # with a row per frozen model's linear probe
        tasks, rows = table3_layout(table_runs)
        stats = table3_statistics(rows, tasks, n_resamples=n_resamples, seed=seed, compare=compare,
                                  progress=progress, min_positives=min_positives, specificity=specificity,
                                  subgroups=list(subgroups))
        written.update(_write_table3(out, table_runs, stats, rows, tasks))
        written.update(write_clinical(out, stats, rows, tasks, markdown_document))
    if html:
        written["index.html"] = write_html(out / "index.html", written, pretrain_runs, finetune_runs)
    return written


def _write_table2(out: Path, pretrain_runs: list[dict]) -> dict[str, Path]:
    raw, shown, notes = table2_frames(pretrain_runs)
    page = markdown_document(TABLE2_TITLE, shown, table2_footnotes(raw, notes))
    (out / "table2.md").write_text(page, encoding="utf-8")
    raw.to_csv(out / "table2.csv", index=False)
    return {"table2.md": out / "table2.md", "table2.csv": out / "table2.csv"}


def _write_table3(out: Path, finetune_runs: list[dict], stats, rows, tasks) -> dict[str, Path]:
    """table3.md/.csv with intervals (and the comparison with `compare`), plots, label lists."""
    raw, shown, notes = table3_frames(finetune_runs, stats=stats)
    figures = write_plots(out, stats, rows, tasks, dict(zip(raw["Model"], raw[MACRO])))
    figures.update(write_label_lists(out, stats, rows, tasks))
    footnotes = table3_footnotes(notes) + reading_notes(stats, rows, tasks)
    extra = _figure_links(figures)
    if stats.compare_row is not None:
        extra += comparison_section(stats, rows, tasks)
    reading = comparison_sentence(stats, dict(zip(raw["Model"], raw[MACRO])))  # "" without --compare
    (out / "table3.md").write_text(markdown_document(TABLE3_TITLE, shown, footnotes, extra, reading),
                                   encoding="utf-8")
    raw.to_csv(out / "table3.csv", index=False)
    return {"table3.md": out / "table3.md", "table3.csv": out / "table3.csv", **figures}


def _figure_links(figures: dict[str, Path]) -> str:
    """table3.md's "Figures and details" line linking the plots and label lists; "" when none."""
    links = [f"[{name[4:-4].upper()} ROC curves]({name})" for name in figures if name.startswith("roc_")]
    links += ["[macro AUROC with intervals](macro_auroc.png)"] if "macro_auroc.png" in figures else []
    links += [f"[{name[7:-3].upper()} best and worst labels]({name})" for name in figures if name.startswith("labels_")]
    links += [f"[{name[3:-4].upper()} precision-recall]({name})" for name in figures if name.startswith("pr_")]
    links += [f"[{name[12:-4].upper()} reliability]({name})" for name in figures if name.startswith("reliability_")]
    return f"\nFigures and details: {' · '.join(links)}.\n" if links else ""
