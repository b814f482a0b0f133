"""`clinpeft prepare mimic3-tasks`: van Aken et al.'s admission-note tasks (MOR, LOS, DIAG, PROC) from MIMIC-III.

    clinpeft prepare mimic3-tasks --mimic-dir /data/mimic-iii-1.4 --out tasks
    clinpeft finetune configs/llama-7b/finetune_clinical.yaml model.base=... task.path=tasks/mor --out runs/mor

Reads NOTEEVENTS, ADMISSIONS, DIAGNOSES_ICD and PROCEDURES_ICD (`.csv` or `.csv.gz`, MIMIC-III
v1.4's upper-case column names) and writes, per task, `tasks/<task>/{train,val,test}.csv`
(`id,text,label`; id = HADM_ID), `labels.txt` and `manifest.json` (rows, patients and label counts
per split, and why admissions were left out). The rules, as in van Aken's
`tasks/mimic_utils.py`, `mp.py`, `los.py`, `dia.py`, `pro.py`:

1. Notes: CATEGORY "Discharge summary" only; admissions of ADMISSION_TYPE NEWBORN (and notes of
   admissions missing from ADMISSIONS) are dropped; empty texts are dropped. The texts of one
   admission are joined with a blank line, ordered by CHARTDATE, the "Report" before its addenda
   on the same day (a text repeated within an admission is kept once). Only admissions with a
   non-empty "Report" remain.
2. Admission note: the eight sections `ADMISSION_SECTIONS`, each found case-insensitively by its
   key ("chief complaint:", "present illness:", "medical history:", ...; first occurrence) and
   ending at a blank line followed by a new "Heading:" (a line that starts with no digit, dot,
   parenthesis or bar and reaches a colon). A section without such an end is not found, as in van
   Aken's regular expression. Newlines in a body become spaces. A note is kept only if chief
   complaint, present illness or medical history is non-empty; the output always has the eight
   headings, in order, as `HEADING: body`, separated by blank lines.
3. MOR: HOSPITAL_EXPIRE_FLAG; explicit mentions of death (`DEATH_MENTION`) are removed from the
   MOR text only, so the label is not written in the input.
4. LOS: days = (DISCHTIME - ADMITTIME), rounded to 0.1 day as van Aken's los.py does; classes
   0 <=3, 1 (3,7], 2 (7,14], 3 >14; in-hospital deaths are left out.
5. DIAG / PROC: ICD9_CODE read as a string (leading zeros kept), cut to 3 characters (diagnoses
   starting with V or E: 4), deduplicated per admission in coding order; admissions without any
   code are not in the task (van Aken joins the codes to the notes with an inner join). No
   frequency filter; `labels.txt` = every cut code of the task's admissions, sorted.
6. Split by patient (SUBJECT_ID), the same for every task: 70/10/20 (round(0.7 n) patients to
   train, round(0.1 n) to val, the rest to test) after a seeded permutation of the sorted subject
   ids; or given as subject-id lists (`read_split_lists`). Rows are sorted by id.
7. Subgroup columns (extra CSV columns, ignored by training, carried into predictions.csv for
   `clinpeft report --subgroups`): `gender` (PATIENTS.GENDER) and `age_group` (age in whole years
   at ADMITTIME from PATIENTS.DOB, `definitions.AGE_GROUPS`; MIMIC shifts DOBs of patients over 89
   so they compute to ~300: "90+") when a PATIENTS table is in --mimic-dir; `ethnicity`
   (ADMISSIONS.ETHNICITY) and `insurance` (ADMISSIONS.INSURANCE) when ADMISSIONS has them. Missing
   values are "UNKNOWN". The manifest's `subgroup_columns` lists what was written and why not.

NOTEEVENTS (about 4 GB in MIMIC-III) is streamed in chunks of `CHUNK_ROWS` with only the needed
columns, keeping discharge summaries (about 60k of its 2.1M notes); the other tables are small.
Inputs are checked before any work (files, columns, ids, dates, flags); every problem stops the
run with one line naming the file and row (row = CSV record, header = row 1; a note spanning
several lines is one record). The output directory is written whole or not at all.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from clinpeft import argtypes
from clinpeft.data.definitions import (
    ADMISSION_SECTIONS,
    MIMIC3_TASKS,
    SPLIT_FRACTIONS,
    SPLITS,
    age_at,
    age_group,
    cut_dx_code,
    cut_proc_code,
    los_class,
)
from clinpeft.errors import ClinpeftError
from clinpeft.prepare.common import add_out_args

TASKS = MIMIC3_TASKS
REQUIRED_COLUMNS = {
    "NOTEEVENTS": ("SUBJECT_ID", "HADM_ID", "CHARTDATE", "CATEGORY", "DESCRIPTION", "TEXT"),
    "ADMISSIONS": ("SUBJECT_ID", "HADM_ID", "ADMISSION_TYPE", "ADMITTIME", "DISCHTIME", "HOSPITAL_EXPIRE_FLAG"),
    "DIAGNOSES_ICD": ("SUBJECT_ID", "HADM_ID", "ICD9_CODE"),
    "PROCEDURES_ICD": ("SUBJECT_ID", "HADM_ID", "ICD9_CODE"),
}
SUBGROUP_COLUMNS = ("gender", "age_group", "ethnicity", "insurance")
PATIENT_COLUMNS = ("SUBJECT_ID", "GENDER", "DOB")
OPTIONAL_ADMISSION_COLUMNS = {"ETHNICITY": "ethnicity", "INSURANCE": "insurance"}
TABLES_FOR_TASK = {"mor": (), "los": (), "diag": ("DIAGNOSES_ICD",), "proc": ("PROCEDURES_ICD",)}
CHUNK_ROWS = 20_000  # NOTEEVENTS rows per chunk: ~40 MB of text, bounded memory on the 4 GB file
LOS_DECIMALS = 1  # van Aken's los.py rounds the stay to 0.1 day before classing: 3.04 days is class 0

#: Keys that find van Aken's eight sections (case-insensitive, first occurrence), in output order.
SECTION_KEYS = ("chief complaint:", "present illness:", "medical history:", "medications on admission:",
                "allergies:", "physical exam:", "family history:", "social history:")
# body, then the section's end: a blank line and a new "Heading:" (van Aken's `\n\n[^(\|\d|\.)]+?:`)
_SECTION_END = r"(.*?)\n\n[^()|\\\d.\n]+?:"
_SECTION_PATTERNS = tuple(re.compile(re.escape(key) + _SECTION_END, re.IGNORECASE | re.DOTALL) for key in SECTION_KEYS)

#: Explicit mentions of death, removed from MOR texts (van Aken removes "patient died", "patient
#: deceased" and "deceased" on its own line; we match case-insensitively and a few more forms,
#: erring towards removing: "expired" can also be a drug's date).
DEATH_MENTION = re.compile(
    r"[ \t]*\b(?:(?:the\s+)?(?:patient|pt)\s+(?:has\s+|had\s+|was\s+)?(?:died|expired|deceased|passed\s+away)"
    r"|(?:was\s+)?pronounced\s+dead|time\s+of\s+death|passed\s+away|deceased|expired|died)\b",
    re.IGNORECASE,
)


# --------------------------------------------------------------------------------------------
# Small pure helpers (the rules)
# --------------------------------------------------------------------------------------------


def extract_sections(text: str) -> tuple[str, ...]:
    """The eight admission sections of a discharge summary, flattened to one line each ("" = absent)."""
    text = text.replace("\r\n", "\n")
    bodies = []
    for pattern in _SECTION_PATTERNS:
        match = pattern.search(text)
        bodies.append(match.group(1).replace("\n", " ").strip() if match else "")
    return tuple(bodies)


def is_admission_note(sections: tuple[str, ...]) -> bool:
    """van Aken's kept-note rule: chief complaint, present illness or medical history is non-empty."""
    return any(sections[:3])


def admission_note(sections: tuple[str, ...]) -> str:
    """`CHIEF COMPLAINT: ...` ... `SOCIAL HISTORY: ...`: always the eight headings, in order, blank-line separated."""
    return "\n\n".join(f"{heading}: {body}" for heading, body in zip(ADMISSION_SECTIONS, sections))


def remove_death_mentions(text: str) -> str:
    return DEATH_MENTION.sub("", text)


def los_days(admit: pd.Series, discharge: pd.Series) -> pd.Series:
    """Length of stay in days (DISCHTIME - ADMITTIME), rounded to LOS_DECIMALS as van Aken does."""
    return ((discharge - admit).dt.total_seconds() / 86_400).round(LOS_DECIMALS)


def drop_copies_across_splits(rows: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Drop a row whose text is already in an earlier split (train < val < test); return (rows, dropped).

    Two patients can share a note word for word (templates, copy-forward): the later split's copy
    would be a test note seen in training, which `finetune` refuses as leakage.
    """
    rank = rows["split"].map({split: i for i, split in enumerate(SPLITS)})
    keep = rank == rank.groupby(rows["text"]).transform("min")
    return rows[keep], int((~keep).sum())


def split_by_patient(subject_ids, seed: int) -> dict[int, str]:
    """Each subject's split: a seeded permutation of the sorted ids, round(0.7 n) train, round(0.1 n) val, rest test."""
    subjects = np.array(sorted(set(int(s) for s in subject_ids)), dtype=np.int64)
    order = subjects[np.random.default_rng(seed).permutation(len(subjects))]
    n_train = round(SPLIT_FRACTIONS[0] * len(subjects))
    n_val = round(SPLIT_FRACTIONS[1] * len(subjects))
    return {int(s): "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
            for rank, s in enumerate(order)}


def read_split_lists(directory: str | Path) -> dict[int, str]:
    """Subject ids per split from `DIR/{train,val,test}.txt` (or van Aken's `DIR/mimic_{train,val,test}.csv`).

    One SUBJECT_ID per line; an optional first line `SUBJECT_ID`, blank lines and `#` comments are
    skipped; an id repeated in one file counts once; an id in two files is an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ClinpeftError(f"--split-lists {directory} is not a directory; "
                            "give a folder with train.txt, val.txt, test.txt")
    split_of: dict[int, str] = {}
    where: dict[int, Path] = {}
    for split in SPLITS:
        candidates = [directory / f"{split}.txt", directory / f"mimic_{split}.csv"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise ClinpeftError(f"--split-lists {directory}: no {split}.txt (one SUBJECT_ID per line) "
                                f"or mimic_{split}.csv")
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            value = line.split("#", 1)[0].strip().strip('"')
            if not value or (line_no == 1 and value.upper() == "SUBJECT_ID"):
                continue
            if not value.isdigit():
                raise ClinpeftError(f"{path} line {line_no}: {value!r} is not a SUBJECT_ID; write one integer per line")
            subject = int(value)
            if subject in split_of and split_of[subject] != split:
                raise ClinpeftError(f"{path} line {line_no}: SUBJECT_ID {subject} is also in {where[subject]}; "
                                    "a patient must be in one split only")
            split_of[subject], where[subject] = split, path
    return split_of


# --------------------------------------------------------------------------------------------
# Reading and checking the tables
# --------------------------------------------------------------------------------------------


def find_table(mimic_dir: Path, name: str) -> Path:
    """`NAME.csv` or `NAME.csv.gz` in the MIMIC-III directory (the unpacked file first: faster to read)."""
    for suffix in (".csv", ".csv.gz"):
        if (mimic_dir / f"{name}{suffix}").is_file():
            return mimic_dir / f"{name}{suffix}"
    raise ClinpeftError(f"{mimic_dir}: no {name}.csv or {name}.csv.gz; --mimic-dir must hold MIMIC-III v1.4's tables")


def check_columns(path: Path, required: tuple[str, ...]) -> None:
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, EOFError) as exc:
        raise ClinpeftError(f"{path}: cannot be read as CSV ({exc})") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise ClinpeftError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}; "
                            "MIMIC-III v1.4 tables have upper-case column names")


def _ints(values: pd.Series, path: Path, column: str, first_row: int = 2) -> pd.Series:
    """Parse an id column; the first value that is not an integer stops the run with its row."""
    parsed = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = parsed.isna() | (parsed % 1 != 0)
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise ClinpeftError(f"{path} row {values.index[i] + first_row}: {column} {values.iloc[i]!r} "
                            "is not an integer id")
    return parsed.astype("int64")


def _dates(values: pd.Series, path: Path, column: str) -> pd.Series:
    parsed = pd.to_datetime(values.str.strip(), format="ISO8601", errors="coerce")
    if parsed.isna().any():
        i = int(np.argmax(parsed.isna().to_numpy()))
        raise ClinpeftError(f"{path} row {values.index[i] + 2}: cannot parse {column} {values.iloc[i]!r}; "
                            "expected YYYY-MM-DD[ HH:MM:SS] as in MIMIC-III")
    return parsed


def read_admissions(path: Path) -> pd.DataFrame:
    """HADM_ID (unique), SUBJECT_ID, NEWBORN, DIED (HOSPITAL_EXPIRE_FLAG), LOS_DAYS; one row per admission."""
    raw = pd.read_csv(path, usecols=list(REQUIRED_COLUMNS["ADMISSIONS"]), dtype=str, keep_default_na=False)
    hadm = _ints(raw["HADM_ID"], path, "HADM_ID")
    duplicated = hadm.duplicated()
    if duplicated.any():
        i = int(np.argmax(duplicated.to_numpy()))
        first = int(np.argmax((hadm == hadm.iloc[i]).to_numpy()))
        raise ClinpeftError(f"{path} row {i + 2}: HADM_ID {hadm.iloc[i]} already at row {first + 2}; "
                            "admissions must be unique")
    flag = raw["HOSPITAL_EXPIRE_FLAG"].str.strip()
    bad = ~flag.isin(["0", "1"])
    if bad.any():
        i = int(np.argmax(bad.to_numpy()))
        raise ClinpeftError(f"{path} row {i + 2}: HOSPITAL_EXPIRE_FLAG {flag.iloc[i]!r} is not 0 or 1")
    return pd.DataFrame({
        "HADM_ID": hadm,
        "SUBJECT_ID": _ints(raw["SUBJECT_ID"], path, "SUBJECT_ID"),
        "NEWBORN": raw["ADMISSION_TYPE"].str.strip().str.upper() == "NEWBORN",
        "DIED": flag == "1",
        "LOS_DAYS": los_days(_dates(raw["ADMITTIME"], path, "ADMITTIME"), _dates(raw["DISCHTIME"], path, "DISCHTIME")),
    })


def read_subgroups(admissions_path: Path, patients_path: Path | None, admissions: pd.DataFrame) -> pd.DataFrame:
    """Per HADM_ID (index): gender and age_group from PATIENTS (when given), ethnicity and insurance from
    ADMISSIONS (when it has the columns); missing values -> "UNKNOWN". Columns absent when their source is."""
    header = pd.read_csv(admissions_path, nrows=0).columns
    wanted = [c for c in OPTIONAL_ADMISSION_COLUMNS if c in header]
    raw = pd.read_csv(admissions_path, usecols=["HADM_ID", "ADMITTIME", *wanted], dtype=str, keep_default_na=False)
    out = pd.DataFrame(index=_ints(raw["HADM_ID"], admissions_path, "HADM_ID").to_numpy())
    if patients_path is not None:
        check_columns(patients_path, PATIENT_COLUMNS)
        patients = pd.read_csv(patients_path, usecols=list(PATIENT_COLUMNS), dtype=str, keep_default_na=False)
        patients.index = _ints(patients["SUBJECT_ID"], patients_path, "SUBJECT_ID").to_numpy()
        patients = patients[~patients.index.duplicated()]
        dob = pd.to_datetime(patients["DOB"].str.strip(), format="ISO8601", errors="coerce")
        admit = pd.to_datetime(raw["ADMITTIME"].str.strip(), format="ISO8601", errors="coerce").to_numpy()
        subject = admissions.loc[out.index, "SUBJECT_ID"].to_numpy()
        gender = patients["GENDER"].str.strip().str.upper().replace("", "UNKNOWN")
        out["gender"] = [gender.get(s, "UNKNOWN") for s in subject]
        groups = []
        for s, a in zip(subject, admit):
            born = dob.get(s)
            groups.append("UNKNOWN" if born is None or pd.isna(born) or pd.isna(a)
                          else age_group(age_at(pd.Timestamp(a), born)))
        out["age_group"] = groups
    for column in wanted:
        out[OPTIONAL_ADMISSION_COLUMNS[column]] = raw[column].str.strip().replace("", "UNKNOWN").to_numpy()
    return out


def read_codes(path: Path, cut) -> dict[int, str]:
    """{HADM_ID: "c1,c2,..."}: codes read as strings, cut, deduplicated in file (coding) order; empty codes skipped."""
    raw = pd.read_csv(path, usecols=["HADM_ID", "ICD9_CODE"], dtype=str, keep_default_na=False)
    codes = raw["ICD9_CODE"].str.strip().str.upper()
    keep = codes != ""
    frame = pd.DataFrame({"HADM_ID": _ints(raw["HADM_ID"][keep], path, "HADM_ID"), "CODE": codes[keep].map(cut)})
    frame = frame.drop_duplicates(["HADM_ID", "CODE"])
    return frame.groupby("HADM_ID", sort=False)["CODE"].agg(",".join).to_dict()


def read_discharge_summaries(path: Path, admissions: pd.DataFrame, counts: Counter, progress: bool) -> pd.DataFrame:
    """Stream NOTEEVENTS; return the non-empty discharge summaries of non-newborn admissions.

    Columns HADM_ID, CHARTDATE, IS_REPORT, ROW (file order), TEXT; `counts` gets what was dropped.
    """
    from tqdm.auto import tqdm

    newborn = set(admissions.loc[admissions["NEWBORN"], "HADM_ID"])
    known = set(admissions["HADM_ID"])
    kept = []
    with open(path, "rb") as raw, tqdm.wrapattr(raw, "read", total=path.stat().st_size, desc=f"reading {path.name}",
                                                 disable=not progress) as counted:
        reader = pd.read_csv(counted, compression="gzip" if path.suffix == ".gz" else None, dtype=str,
                             keep_default_na=False, usecols=list(REQUIRED_COLUMNS["NOTEEVENTS"]), chunksize=CHUNK_ROWS)
        for chunk in reader:
            counts["notes_read"] += len(chunk)
            chunk = chunk[chunk["CATEGORY"].str.strip() == "Discharge summary"]
            counts["discharge_summaries"] += len(chunk)
            has_hadm = chunk["HADM_ID"].str.strip() != ""
            counts["dropped_notes_without_hadm_id"] += int((~has_hadm).sum())
            chunk = chunk[has_hadm]
            hadm = _ints(chunk["HADM_ID"], path, "HADM_ID")
            counts["dropped_notes_newborn"] += int(hadm.isin(newborn).sum())
            counts["dropped_notes_unknown_hadm_id"] += int((~hadm.isin(known)).sum())
            keep = hadm.isin(known) & ~hadm.isin(newborn)
            chunk, hadm = chunk[keep], hadm[keep]
            text = chunk["TEXT"].str.strip()
            empty = text == ""
            counts["dropped_notes_empty"] += int(empty.sum())
            kept.append(pd.DataFrame({
                "HADM_ID": hadm[~empty], "CHARTDATE": _dates(chunk["CHARTDATE"][~empty], path, "CHARTDATE"),
                "IS_REPORT": chunk["DESCRIPTION"][~empty].str.strip() == "Report", "ROW": chunk.index[~empty],
                "TEXT": text[~empty],
            }))
    return (pd.concat(kept, ignore_index=True) if kept
            else pd.DataFrame(columns=["HADM_ID", "CHARTDATE", "IS_REPORT", "ROW", "TEXT"]))


def join_admission_texts(notes: pd.DataFrame, counts: Counter) -> pd.Series:
    """{HADM_ID: text} of admissions with a "Report": texts by date, Report first, each once, blank-line joined."""
    notes = notes.assign(ADDENDUM=~notes["IS_REPORT"].astype(bool))
    notes = notes.sort_values(["HADM_ID", "CHARTDATE", "ADDENDUM", "ROW"], kind="stable")
    notes = notes.drop_duplicates(["HADM_ID", "TEXT"])
    has_report = notes.groupby("HADM_ID")["IS_REPORT"].any()
    counts["admissions_with_discharge_summary"] = len(has_report)
    counts["dropped_admissions_no_report"] = int((~has_report).sum())
    notes = notes[notes["HADM_ID"].isin(has_report[has_report].index)]
    return notes.groupby("HADM_ID", sort=True)["TEXT"].agg("\n\n".join)


# --------------------------------------------------------------------------------------------
# Writing a task
# --------------------------------------------------------------------------------------------


def label_counts(labels: pd.Series, multilabel: bool) -> dict[str, int]:
    cells = labels.str.split(",").explode() if multilabel else labels
    cells = cells[cells != ""]
    return {str(k): int(v) for k, v in sorted(Counter(cells).items())}


def write_task(task_dir: Path, rows: pd.DataFrame, vocabulary: list[str], multilabel: bool, extra: dict) -> dict:
    """rows: id, subject, split, text, label -> {train,val,test}.csv, labels.txt, manifest.json; return the manifest."""
    from clinpeft.rundir import write_json

    task_dir.mkdir(parents=True)
    manifest = {"task": task_dir.name, "kind": "multilabel" if multilabel else "single_label",
                "num_labels": len(vocabulary), "splits": {}, **extra}
    for split in SPLITS:
        part = rows[rows["split"] == split].sort_values("id")
        if part.empty:
            raise ClinpeftError(f"task {task_dir.name}: no admission in the {split} split; too few patients "
                                "(or split lists that leave it empty) for a 70/10/20 split")
        subgroups = [c for c in SUBGROUP_COLUMNS if c in part.columns]
        part[["id", "text", "label", *subgroups]].to_csv(task_dir / f"{split}.csv", index=False)
        manifest["splits"][split] = {"rows": len(part), "patients": int(part["subject"].nunique()),
                                     "labels": label_counts(part["label"], multilabel)}
    (task_dir / "labels.txt").write_text("\n".join(vocabulary) + "\n")
    write_json(task_dir / "manifest.json", manifest)
    return manifest


# --------------------------------------------------------------------------------------------
# The recipe
# --------------------------------------------------------------------------------------------


def parse_tasks(value: str) -> tuple[str, ...]:
    tasks = tuple(dict.fromkeys(t.strip().lower() for t in value.split(",") if t.strip()))
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ClinpeftError(f"--tasks {value!r}: unknown task(s) {', '.join(unknown) or '(none given)'}; "
                            f"choose from {','.join(TASKS)} (PMV: `clinpeft prepare pmv`)")
    return tasks


def main(mimic_dir: str | Path, out: str | Path, tasks: tuple[str, ...] = TASKS, split_lists: str | Path | None = None,
         seed: int = 0, overwrite: bool = False, progress: bool = True) -> dict:
    """Build the task directories out/<task>/ and out/manifest.json; return the top-level manifest."""
    from tqdm.auto import tqdm

    from clinpeft._version import __version__
    from clinpeft.data.tasks import load_task
    from clinpeft.rundir import atomic_run_dir, check_out_dir, write_json

    # --- check every input before any work
    mimic_dir = Path(mimic_dir)
    if not mimic_dir.is_dir():
        raise ClinpeftError(f"--mimic-dir {mimic_dir} is not a directory")
    check_out_dir(out, overwrite)
    needed = ("NOTEEVENTS", "ADMISSIONS", *(t for task in tasks for t in TABLES_FOR_TASK[task]))
    paths = {name: find_table(mimic_dir, name) for name in needed}
    for name, path in paths.items():
        check_columns(path, REQUIRED_COLUMNS[name])
    split_of = read_split_lists(split_lists) if split_lists else None
    admissions = read_admissions(paths["ADMISSIONS"]).set_index("HADM_ID")
    codes = {task: read_codes(paths[table], cut_dx_code if task == "diag" else cut_proc_code)
             for task in tasks for table in TABLES_FOR_TASK[task]}

    # --- notes -> admission notes
    counts: Counter = Counter()
    notes = read_discharge_summaries(paths["NOTEEVENTS"], admissions.reset_index(), counts, progress)
    texts = join_admission_texts(notes, counts)
    del notes
    sections = [extract_sections(t) for t in tqdm(texts.to_numpy(), desc="admission sections", disable=not progress)]
    kept = [is_admission_note(s) for s in sections]
    counts["dropped_admissions_no_admission_sections"] = kept.count(False)
    cohort = pd.DataFrame({"id": texts.index[kept], "text": [admission_note(s) for s, k in zip(sections, kept) if k]})
    del texts, sections
    cohort["subject"] = admissions.loc[cohort["id"], "SUBJECT_ID"].to_numpy()
    patients_path = next((mimic_dir / f"PATIENTS{x}" for x in (".csv", ".csv.gz")
                          if (mimic_dir / f"PATIENTS{x}").is_file()), None)
    subgroups = read_subgroups(paths["ADMISSIONS"], patients_path, admissions)
    for column in subgroups.columns:
        cohort[column] = subgroups.loc[cohort["id"], column].to_numpy()
    subgroup_note = {"columns": list(subgroups.columns),
                     "why_missing": {c: ("no PATIENTS table in --mimic-dir" if c in ("gender", "age_group")
                                         else f"ADMISSIONS has no {c.upper()} column")
                                     for c in SUBGROUP_COLUMNS if c not in subgroups.columns}}

    # --- the patient split, shared by every task
    if split_of is None:
        split_of = split_by_patient(cohort["subject"], seed)
    cohort["split"] = cohort["subject"].map(split_of)
    counts["dropped_admissions_not_in_split_lists"] = int(cohort["split"].isna().sum())
    cohort = cohort.dropna(subset=["split"])
    counts["admission_notes"] = len(cohort)
    counts["patients"] = int(cohort["subject"].nunique())

    cohort_manifest = {"counts": dict(sorted(counts.items())), "seed": seed,
                       "split": f"lists in {split_lists}" if split_lists else f"by patient, 70/10/20, seed {seed}",
                       "inputs": {name: {"file": str(p), "bytes": p.stat().st_size} for name, p in paths.items()},
                       "subgroup_columns": subgroup_note,
                       "clinpeft_version": __version__}
    died = admissions.loc[cohort["id"], "DIED"].to_numpy()
    summary = {}
    with atomic_run_dir(out, overwrite) as tmp:
        for task in tasks:
            rows, extra, multilabel = cohort, {}, task in ("diag", "proc")
            if task == "mor":
                mor_text = cohort["text"].map(remove_death_mentions)
                changed = mor_text != cohort["text"]
                rows = cohort.assign(text=mor_text, label=np.where(died, "1", "0"))
                extra["death_mentions_removed"] = {"notes": int(changed.sum()),
                                                   "by_label": label_counts(rows.loc[changed, "label"], False)}
                vocabulary = ["0", "1"]
            elif task == "los":
                rows = cohort[~died].assign(
                    label=admissions.loc[cohort["id"][~died], "LOS_DAYS"].map(los_class).astype(str).to_numpy())
                extra["excluded"] = {"in_hospital_deaths": int(died.sum())}
                vocabulary = ["0", "1", "2", "3"]
            else:
                labels = cohort["id"].map(codes[task])
                rows = cohort[labels.notna()].assign(label=labels[labels.notna()])
                extra["excluded"] = {"no_codes": int(labels.isna().sum())}
                vocabulary = sorted({c for cell in rows["label"] for c in cell.split(",")})
            rows, copies = drop_copies_across_splits(rows)
            extra.setdefault("excluded", {})["text_in_an_earlier_split"] = copies
            extra["cohort"] = cohort_manifest
            summary[task] = write_task(tmp / task, rows, vocabulary, multilabel, extra)
            load_task(tmp / task, task)  # the output is what `finetune` reads, or this build fails
        write_json(tmp / "manifest.json", {**cohort_manifest, "tasks": {
            t: {s: m["splits"][s]["rows"] for s in SPLITS} | {"num_labels": m["num_labels"]}
            for t, m in summary.items()}})
    return {"cohort": cohort_manifest, "tasks": summary}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "mimic3-tasks", help="van Aken et al.'s admission-note tasks (MOR, LOS, DIAG, PROC) from MIMIC-III",
        description="Build the outcome tasks from MIMIC-III's NOTEEVENTS, ADMISSIONS, DIAGNOSES_ICD and "
        "PROCEDURES_ICD (.csv or .csv.gz): admission notes from discharge summaries, patient-level "
        "70/10/20 split. Writes OUT/<task>/{train,val,test}.csv, labels.txt, manifest.json.")
    p.add_argument("--mimic-dir", required=True, help="folder with MIMIC-III v1.4's tables (NOTEEVENTS.csv.gz, ...)")
    p.add_argument("--tasks", default=",".join(TASKS), metavar="T[,T...]",
                   help=f"which tasks (default {','.join(TASKS)})")
    p.add_argument("--split-lists", metavar="DIR", help="fixed patient split: DIR/{train,val,test}.txt, one SUBJECT_ID "
                   "per line (or van Aken's mimic_{train,val,test}.csv); patients in no list are left out")
    p.add_argument("--seed", type=argtypes.seed, default=0, help="seed of the 70/10/20 patient split (default 0)")
    add_out_args(p, "tasks folder to create (written whole, or not at all)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace, progress: bool) -> None:
    result = main(args.mimic_dir, args.out, parse_tasks(args.tasks), args.split_lists, args.seed, args.overwrite,
                  progress)
    counts = result["cohort"]["counts"]
    print(f"{args.out}: {counts['admission_notes']:,} admission notes of {counts['patients']:,} patients "
          f"(from {counts['discharge_summaries']:,} discharge summaries)")
    for task, manifest in result["tasks"].items():
        sizes = " / ".join(f"{s} {manifest['splits'][s]['rows']:,}" for s in SPLITS)
        print(f"  {task}: {sizes}; {manifest['num_labels']} labels")
