"""Downstream task data in van Aken et al.'s format, validated before any training starts.

A task directory holds `train.csv`, `val.csv`, `test.csv` with columns `id,text,label` and a
`labels.txt` vocabulary (one label per line, in class-index order). Single-label tasks (LOS,
MOR, PMV) have one label per row; multilabel tasks (DIAG, PROC) comma-join their codes, and an
empty cell means "no label". Cells are read as strings: ICD-9 codes keep their leading zeros.

Every check names the file and row (1-based, as a spreadsheet shows it, header = row 1) and says
how to fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from clinpeft.data.definitions import SPLITS
from clinpeft.errors import ClinpeftError, shown

COLUMNS = ("id", "text", "label")


@dataclass
class TaskData:
    name: str
    kind: str  # "single_label" | "multilabel"
    labels: list[str]  # the vocabulary; index = class / output unit
    splits: dict[str, pd.DataFrame] = field(default_factory=dict)  # columns id, text, label

    @property
    def task_type(self) -> str:
        """binary | multiclass | multilabel: decides the loss and the AUROC variant."""
        if self.kind == "multilabel":
            return "multilabel"
        return "binary" if len(self.labels) == 2 else "multiclass"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def targets(self, split: str) -> np.ndarray:
        """Class indices (single-label, int64) or multi-hot rows (multilabel, float32)."""
        index = {label: i for i, label in enumerate(self.labels)}
        cells = self.splits[split]["label"]
        if self.kind == "single_label":
            return np.array([index[c] for c in cells], dtype=np.int64)
        multi_hot = np.zeros((len(cells), len(self.labels)), dtype=np.float32)
        for row, cell in enumerate(cells):
            for code in split_multilabel(cell):
                multi_hot[row, index[code]] = 1.0
        return multi_hot


def split_multilabel(cell: str) -> list[str]:
    """'401,428,V458' -> ['401', '428', 'V458']; '' -> []."""
    return [code.strip() for code in cell.split(",")] if cell.strip() else []


def read_split_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ClinpeftError(f"{path} not found; a task directory needs train.csv, val.csv and test.csv (id,text,label)")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise ClinpeftError(f"{path}: cannot be parsed as CSV ({exc})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise ClinpeftError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(frame.columns)}; expected id,text,label"
        )
    # id, text, label first; other columns (subgroups such as gender, age_group) are carried, unused by training
    frame = frame[[*COLUMNS, *extra_columns(frame)]].copy()
    # " 1" and "1" are the same label and the same id: a stray space must not make a new class
    frame["id"], frame["label"] = frame["id"].str.strip(), frame["label"].str.strip()
    return frame


def extra_columns(frame: pd.DataFrame) -> list[str]:
    """The columns of a task CSV beyond id,text,label (e.g. gender, age_group, ethnicity, insurance): finetune
    ignores them for training and copies them into predictions.csv, where `report --subgroups` reads them.
    Names that predictions.csv uses itself (predicted, p_*) and pandas' unnamed columns are left out."""
    return [str(c) for c in frame.columns if c not in COLUMNS and c != "predicted"
            and not str(c).startswith(("p_", "Unnamed:"))]


def read_labels(path: Path) -> list[str]:
    if not path.is_file():
        raise ClinpeftError(f"{path} not found; write the label vocabulary there, one label per line")
    labels = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(labels) < 2:
        raise ClinpeftError(f"{path}: needs at least 2 labels, found {len(labels)}")
    duplicated = sorted({x for x in labels if labels.count(x) > 1})
    if duplicated:
        raise ClinpeftError(f"{path}: label(s) listed twice: {', '.join(duplicated)}")
    return labels


def detect_kind(frames: dict[str, pd.DataFrame], task_dir: Path | None = None) -> str:
    """The kind written by `clinpeft prepare` in task_dir/manifest.json; else multilabel when a label cell has a comma.

    The manifest matters for multilabel tasks whose admissions all have at most one code.
    """
    manifest = task_dir / "manifest.json" if task_dir else None
    if manifest and manifest.is_file():
        import json

        try:
            kind = json.loads(manifest.read_text()).get("kind")
        except (json.JSONDecodeError, AttributeError):
            kind = None
        if kind in ("single_label", "multilabel"):
            return kind
    return "multilabel" if any(f["label"].str.contains(",").any() for f in frames.values()) else "single_label"


def validate_split(frame: pd.DataFrame, path: Path, kind: str, vocabulary: set[str]) -> None:
    for i, (note_id, text, cell) in enumerate(zip(frame["id"], frame["text"], frame["label"])):
        row = i + 2  # 1-based, after the header
        if not note_id.strip():
            raise ClinpeftError(f"{path} row {row}: empty id; give every note a unique id (e.g. its HADM_ID)")
        if not text.strip():
            raise ClinpeftError(f"{path} row {row}: empty text; remove the row or fill it in")
        if kind == "single_label":
            if cell.strip() not in vocabulary:
                raise ClinpeftError(
                    f"{path} row {row}: label {shown(cell)} is not in labels.txt; add it there or fix the row"
                )
            continue
        codes = cell.split(",") if cell.strip() else []
        if any(not code.strip() for code in codes):
            raise ClinpeftError(
                f"{path} row {row}: malformed multilabel {shown(cell)} (empty code between commas); "
                "write codes comma-joined like 401,428,V458"
            )
        unknown = [code.strip() for code in codes if code.strip() not in vocabulary]
        if unknown:
            raise ClinpeftError(
                f"{path} row {row}: label {shown(unknown[0])} is not in labels.txt; add it there or fix the row"
            )
    duplicated = frame["id"].duplicated()
    if duplicated.any():
        i = int(duplicated.to_numpy().argmax())
        first = int((frame["id"] == frame["id"].iloc[i]).to_numpy().argmax())
        raise ClinpeftError(f"{path} row {i + 2}: id {shown(frame['id'].iloc[i])} appears more than once "
                            f"(first at row {first + 2}); ids must be unique")


def check_no_leakage(frames: dict[str, pd.DataFrame], task_dir: Path) -> None:
    """The same id, or the same note text under another id, in two splits would leak test notes into training."""
    seen: dict[str, str] = {}
    for split, frame in frames.items():
        for note_id in frame["id"]:
            if note_id in seen and seen[note_id] != split:
                raise ClinpeftError(
                    f"{task_dir}: id {shown(note_id)} is in both {seen[note_id]}.csv and {split}.csv; "
                    "split by patient so no note appears twice"
                )
            seen[note_id] = split
    first_seen: dict[str, tuple[str, int]] = {}  # text -> (split, row); exact copies, whitespace at the ends ignored
    for split, frame in frames.items():
        for i, text in enumerate(frame["text"]):
            key = text.strip()
            if key in first_seen and first_seen[key][0] != split:
                other, row = first_seen[key]
                raise ClinpeftError(
                    f"{task_dir}: {split}.csv row {i + 2} has the same text as {other}.csv row {row}; "
                    "a note copied into two splits leaks into evaluation: remove one"
                )
            first_seen.setdefault(key, (split, i + 2))


def load_task(path: str | Path, name: str | None = None, kind: str = "auto",
              max_examples: int | None = None) -> TaskData:
    """Read and validate a task directory; raise ClinpeftError on the first problem found."""
    task_dir = Path(path)
    if not task_dir.is_dir():
        raise ClinpeftError(f"task.path {task_dir} is not a directory; "
                            "give a folder with train/val/test.csv and labels.txt")
    frames = {split: read_split_csv(task_dir / f"{split}.csv") for split in SPLITS}
    labels = read_labels(task_dir / "labels.txt")
    if kind == "auto":
        kind = detect_kind(frames, task_dir)
    vocabulary = set(labels)
    for split, frame in frames.items():
        validate_split(frame, task_dir / f"{split}.csv", kind, vocabulary)
        if frame.empty:
            raise ClinpeftError(f"{task_dir / f'{split}.csv'} has no rows")
    check_no_leakage(frames, task_dir)
    if max_examples:
        frames = {split: frame.head(max_examples) for split, frame in frames.items()}
    frames = {split: frame.reset_index(drop=True) for split, frame in frames.items()}
    return TaskData(name=name or task_dir.name, kind=kind, labels=labels, splits=frames)


def data_provenance(path: str | Path, frames: dict[str, pd.DataFrame] | None = None) -> dict:
    """What a model card says about a task's data: {"path", "files": {name: sha256}, "rows": {split: n},
    "patients": {split: n} (from the prepare manifest, when present), "cohort": the manifest's rules and
    drop counts (when present), "subgroup_columns": extra columns of the CSVs}. Missing files are skipped."""
    import hashlib
    import json

    task_dir = Path(path)
    out: dict = {"path": str(task_dir), "files": {}, "rows": {}}
    for name in [*(f"{s}.csv" for s in SPLITS), "labels.txt", "manifest.json"]:
        file = task_dir / name
        if file.is_file():
            digest = hashlib.sha256()
            with open(file, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            out["files"][name] = digest.hexdigest()
    for split in SPLITS:
        if frames is not None and split in frames:
            out["rows"][split] = int(len(frames[split]))
        elif (task_dir / f"{split}.csv").is_file():
            out["rows"][split] = int(len(pd.read_csv(task_dir / f"{split}.csv", dtype=str, usecols=[0])))
    if frames:
        out["subgroup_columns"] = extra_columns(next(iter(frames.values())))
    manifest = task_dir / "manifest.json"
    if manifest.is_file():
        try:
            record = json.loads(manifest.read_text(encoding="utf-8"))
        except ValueError:
            record = {}
        splits = record.get("splits") if isinstance(record.get("splits"), dict) else {}
        patients = {s: v.get("patients") for s, v in splits.items() if isinstance(v, dict) and "patients" in v}
        if patients:
            out["patients"] = patients
        out["cohort"] = {k: v for k, v in record.items() if k not in ("splits",)}
    return out


def check_classes(task: "TaskData", task_dir: Path) -> None:
    """For training (finetune calls it; prepare and evaluate may hold one-class splits), before any work:
    a train split with one class teaches nothing, and a val split with one class
    has no AUROC, so no epoch could be chosen (it used to fail only after the first epoch)."""
    if task.kind != "single_label":
        return  # multilabel: labels with one class in a split are skipped by the metric, and counted
    frames = task.splits
    for split, why in (("train", "a classifier trained on one class learns nothing"),
                       ("val", "the val AUROC that chooses the best epoch needs at least two classes")):
        classes = frames[split]["label"].str.strip().unique()
        if len(classes) < 2:
            raise ClinpeftError(f"{task_dir / f'{split}.csv'}: all {len(frames[split])} rows have label "
                                f"{shown(classes[0])}; {why}: resplit so every class is in {split}.csv"
                                + (" (or raise task.max_examples)" if split == "val" else ""))
