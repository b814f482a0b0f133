"""`clinpeft prepare pmv`: prolonged mechanical ventilation (BEEP) joined to the admission notes.

    clinpeft prepare mimic3-tasks --mimic-dir /data/mimic-iii-1.4 --out tasks --tasks mor,los,diag,proc
    clinpeft prepare pmv --admission-notes tasks/mor --labels pmv_labels.csv --out tasks/pmv

BEEP (Naik et al. 2022) distributes PMV as a list of admissions of the mortality cohort with a
label (1 = mechanically ventilated for more than 7 days) and a split; the notes come from MIMIC.
`--labels` is a CSV with columns `hadm_id,label,split` (any case; label 0/1; split
train/val/test). The text of each admission is taken from the MOR task directory built by
`prepare mimic3-tasks`, i.e. van Aken's admission note with explicit mentions of death removed:
PMV's cohort is a subset of MOR's, and a death written into a PMV note would give away an
outcome strongly tied to long ventilation. The split is the one in the labels file (BEEP's).

A label for an admission that is not in the MOR task is refused (one line naming the row and the
number of such rows), because dropping it silently would change the cohort; `--drop-unknown`
drops them instead and records how many in `manifest.json`. Writes `{train,val,test}.csv`
(`id,text,label`), `labels.txt` (0, 1) and `manifest.json` (rows, label counts per split).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from clinpeft.data.definitions import SPLITS
from clinpeft.errors import ClinpeftError
from clinpeft.prepare.common import add_out_args

LABEL_COLUMNS = ("hadm_id", "label", "split")


def read_pmv_labels(path: str | Path) -> pd.DataFrame:
    """The (hadm_id, label, split) file, checked row by row: integer ids, each once, label 0/1, a known split."""
    path = Path(path)
    if not path.is_file():
        raise ClinpeftError(f"--labels {path} not found; give a CSV with columns hadm_id,label,split")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise ClinpeftError(f"{path}: cannot be parsed as CSV ({exc})") from None
    frame.columns = [c.strip().lower() for c in frame.columns]
    missing = [c for c in LABEL_COLUMNS if c not in frame.columns]
    if missing:
        raise ClinpeftError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}; "
                            "expected hadm_id,label,split")
    frame = frame[list(LABEL_COLUMNS)].apply(lambda column: column.str.strip())
    frame["split"] = frame["split"].str.lower()
    first_row: dict[str, int] = {}
    for i, (hadm, label, split) in enumerate(frame.itertuples(index=False)):
        row = i + 2  # header = row 1
        if not hadm.isdigit():
            raise ClinpeftError(f"{path} row {row}: hadm_id {hadm!r} is not an integer id")
        hadm = str(int(hadm))  # "0100001" and "100001" are one admission
        if hadm in first_row:
            raise ClinpeftError(f"{path} row {row}: hadm_id {hadm} already at row {first_row[hadm]}; "
                                "one label per admission")
        first_row[hadm] = row
        if label not in ("0", "1"):
            raise ClinpeftError(f"{path} row {row}: label {label!r} is not 0 or 1 (1 = ventilated more than 7 days)")
        if split not in SPLITS:
            raise ClinpeftError(f"{path} row {row}: split {split!r} is not train, val or test")
    frame["hadm_id"] = frame["hadm_id"].map(lambda h: str(int(h)))
    frame["row"] = range(2, len(frame) + 2)
    return frame


def main(admission_notes: str | Path, labels: str | Path, out: str | Path, drop_unknown: bool = False,
         overwrite: bool = False) -> dict:
    """Write the PMV task directory; return its manifest."""
    from clinpeft._version import __version__
    from clinpeft.data.tasks import load_task
    from clinpeft.rundir import atomic_run_dir, check_out_dir, write_json

    check_out_dir(out, overwrite)
    pmv = read_pmv_labels(labels)
    mor = load_task(admission_notes, "mor")  # validated: ids unique, texts non-empty
    texts = pd.concat(mor.splits.values(), ignore_index=True).set_index("id")["text"]
    unknown = pmv[~pmv["hadm_id"].isin(texts.index)]
    if len(unknown) and not drop_unknown:
        first = unknown.iloc[0]
        raise ClinpeftError(f"{labels} row {first['row']}: hadm_id {first['hadm_id']} is not in {admission_notes} "
                            f"({len(unknown)} of {len(pmv)} labels are not); "
                            "build the MOR task from the same MIMIC-III, "
                            "or pass --drop-unknown to leave them out")
    pmv = pmv[pmv["hadm_id"].isin(texts.index)]
    rows = pd.DataFrame({"id": pmv["hadm_id"], "text": texts.loc[pmv["hadm_id"]].to_numpy(), "label": pmv["label"],
                         "split": pmv["split"]})
    manifest = {"task": "pmv", "kind": "single_label", "num_labels": 2, "splits": {},
                "source": {"labels": str(labels), "admission_notes": str(admission_notes),
                           "text": "MOR admission notes (death mentions removed)"},
                "excluded": {"hadm_id_not_in_admission_notes": len(unknown)}, "clinpeft_version": __version__}
    with atomic_run_dir(out, overwrite) as tmp:
        for split in SPLITS:
            part = rows[rows["split"] == split]
            if part.empty:
                raise ClinpeftError(f"{labels}: no admission in the {split} split; PMV needs train, val and test rows")
            part = part.assign(order=part["id"].astype(int)).sort_values("order")
            part[["id", "text", "label"]].to_csv(tmp / f"{split}.csv", index=False)
            manifest["splits"][split] = {"rows": len(part),
                                         "labels": part["label"].value_counts().sort_index().to_dict()}
        (tmp / "labels.txt").write_text("0\n1\n")
        write_json(tmp / "manifest.json", manifest)
        load_task(tmp, "pmv")  # what `finetune` reads, or this build fails
    return manifest


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "pmv", help="prolonged mechanical ventilation: join BEEP's (hadm_id, label, split) to the admission notes",
        description="Join a PMV label file (hadm_id,label,split; label 1 = ventilated > 7 days) to the admission "
        "notes of a MOR task directory built by `clinpeft prepare mimic3-tasks`. Writes OUT/{train,val,test}.csv, "
        "labels.txt and manifest.json.")
    p.add_argument("--admission-notes", required=True, metavar="TASKS/mor",
                   help="the MOR task directory (its notes are used)")
    p.add_argument("--labels", required=True, metavar="CSV", help="hadm_id,label,split (BEEP's PMV cohort)")
    p.add_argument("--drop-unknown", action="store_true", help="leave out labels whose hadm_id is not in the "
                   "admission notes (default: refuse), counted in manifest.json")
    add_out_args(p, "task directory to create, e.g. TASKS/pmv", quiet_help="no progress bars (this step is quick)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, progress: bool) -> None:
    manifest = main(args.admission_notes, args.labels, args.out, args.drop_unknown, args.overwrite)
    sizes = " / ".join(f"{s} {manifest['splits'][s]['rows']:,}" for s in SPLITS)
    dropped = manifest["excluded"]["hadm_id_not_in_admission_notes"]
    print(f"{args.out}: pmv {sizes}" + (f"; {dropped} labels without an admission note left out" if dropped else ""))
