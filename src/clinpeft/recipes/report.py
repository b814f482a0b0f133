"""`clinpeft report`: paper-style Table 2 / Table 3 from run directories.

    clinpeft report runs --out runs/report
    clinpeft report runs --out runs/report --compare "LLaMA + LoRA" --bootstrap-resamples 2000

Every run under the given directories is collected; table2.md/.csv (pretraining) and
table3.md/.csv (fine-tuning) are written to OUT (clinpeft.reporting.report.write_report).
"""

from __future__ import annotations

from pathlib import Path

from clinpeft.errors import ClinpeftError
from clinpeft.reporting.report import write_report
from clinpeft.reporting.tables import GUARD_NOTE
from clinpeft.rundir import atomic_run_dir


def main(paths: list[str | Path], out: str | Path, *, compare: str | None = None, n_resamples: int = 1000,
         seed: int = 0, progress: bool = True, subgroups: list[str] | str = (), min_positives: int = 5,
         specificity: float = 0.9, html: bool = False) -> dict:
    """Write the report into `out`. Returns {file name: path} of every file written.
    subgroups: column names (a list, or comma-separated) of the task CSVs to break the metrics down by."""
    if n_resamples < 0:
        raise ClinpeftError(f"--bootstrap-resamples {n_resamples}: use 0 (no intervals) or more, e.g. 1000")
    if min_positives < 1:
        raise ClinpeftError(f"--min-positives {min_positives}: use 1 or more (default 5)")
    if not 0.0 < specificity < 1.0:
        raise ClinpeftError(f"--specificity {specificity}: use a fraction strictly between 0 and 1, e.g. 0.9")
    if isinstance(subgroups, str):
        subgroups = [c.strip() for c in subgroups.split(",") if c.strip()]
    reserved = [c for c in subgroups if c in ("id", "text", "label", "predicted") or c.startswith("p_")]
    if reserved:
        raise ClinpeftError(f"--subgroups {', '.join(reserved)}: not a subgroup column; name columns such as "
                            "gender,age_group of the task CSVs")
    # written whole or not at all, under the --out lock like every command (rundir.atomic_run_dir): a run whose
    # predictions.csv is broken leaves no empty report folder. A report replaces only an earlier report there
    # (rundir.MARKER), never another command's folder; `report` has no --overwrite, rerunning it is its use.
    with atomic_run_dir(out, overwrite=True) as tmp:
        written = write_report(paths, tmp, compare=compare, n_resamples=n_resamples, seed=seed, progress=progress,
                               subgroups=list(subgroups), min_positives=min_positives, specificity=specificity,
                               html=html)
    return {name: Path(out) / path.relative_to(tmp) for name, path in written.items()}


def summary(result: dict, out: str | Path) -> list[str]:
    """The tables as written (table*.md, clinical.md, subgroups.md), then a warning line per Table 3 cell
    whose test split lacks a class or has few examples of one, and where index.html is."""
    lines = [path.read_text() for path in result.values()
             if path.suffix == ".md" and (path.name.startswith("table") or path.stem in ("clinical", "subgroups"))]
    table3 = result.get("table3.md")
    if table3 is not None:
        for line in table3.read_text().splitlines():
            if "\u2021 Aggregate over few examples" in line:
                lines.append("warning: " + line.split("\u2021 ", 1)[1].lstrip("- "))
            if line.lstrip("- ").startswith(GUARD_NOTE):
                lines.append("warning: " + line.lstrip("- ").removeprefix(GUARD_NOTE))
    if "index.html" in result:
        lines.append(f"report page: {result['index.html']}")
    return lines
