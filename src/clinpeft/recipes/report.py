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


def main(paths: list[str | Path], out: str | Path, *, compare: str | None = None, n_resamples: int = 1000,
         seed: int = 0, progress: bool = True) -> dict:
    """Write the report into `out`. Returns {file name: path} of every file written."""
    if n_resamples < 0:
        raise ClinpeftError(f"--bootstrap-resamples {n_resamples}: use 0 (no intervals) or more, e.g. 1000")
    return write_report(paths, out, compare=compare, n_resamples=n_resamples, seed=seed, progress=progress)


def summary(result: dict, out: str | Path) -> list[str]:
    """The tables as written (table*.md; the labels_<task>.md files are only written)."""
    return [path.read_text() for path in result.values() if path.name.startswith("table") and path.suffix == ".md"]
