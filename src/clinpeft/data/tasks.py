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
from clinpeft.files import read_csv, read_json, read_lines

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
    """A task CSV through the reading layer (files.read_csv: encoding, quoting and field counts named by row)."""
    path = Path(path)
    if not path.is_file() and not path.is_dir():
        raise ClinpeftError(f"{path} not found; a task directory needs train.csv, val.csv and test.csv (id,text,label)")
    frame = read_csv(path, COLUMNS, "task CSV", "expected the columns id,text,label")
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
    labels = read_lines(path, "label list", "write the label vocabulary there, one label per line")
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
    kind = read_manifest(task_dir).get("kind") if task_dir else None
    if kind in ("single_label", "multilabel"):
        return kind
    return "multilabel" if any(f["label"].str.contains(",").any() for f in frames.values()) else "single_label"


def read_manifest(task_dir: Path) -> dict:
    """The task folder's manifest.json from `clinpeft prepare` ({} when there is none): an object, or one line
    naming the file, before any training (it is read again for the model card after training)."""
    manifest = Path(task_dir) / "manifest.json"
    if not manifest.exists():
        return {}
    return read_json(manifest, dict, what="task manifest",
                     hint="the manifest `clinpeft prepare` writes is a JSON object; restore it or remove the file")


def _label_problem(cell: str, kind: str) -> str | None:
    """What a label cell that is not in labels.txt looks like, when it is a known mistake (None: unknown)."""
    if not cell.strip():
        return ("empty label; a single-label task needs one of labels.txt's labels in every row: fill it in or remove "
                "the row (an empty cell means 'no codes' only in multilabel tasks)")
    if ";" in cell and all(part.strip() for part in cell.split(";")):
        return (f"label {shown(cell)} joins codes with ';'; multilabel cells join codes with ',' (e.g. 401,428, "
                "the cell quoted): replace the ';'")
    return None


def validate_split(frame: pd.DataFrame, path: Path, kind: str, vocabulary: set[str]) -> None:
    for i, (note_id, text, cell) in enumerate(zip(frame["id"], frame["text"], frame["label"])):
        row = i + 2  # 1-based, after the header
        if not note_id.strip():
            raise ClinpeftError(f"{path} row {row}: empty id; give every note a unique id (e.g. its HADM_ID)")
        if not text.strip():
            raise ClinpeftError(f"{path} row {row}: empty text; remove the row or fill it in")
        if kind == "single_label":
            if cell.strip() not in vocabulary and _label_problem(cell, kind):
                raise ClinpeftError(f"{path} row {row}: {_label_problem(cell, kind)}")
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
        if unknown and ";" in unknown[0]:
            raise ClinpeftError(f"{path} row {row}: {_label_problem(unknown[0], kind)}")
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
    read_manifest(task_dir)  # checked now, not when the model card reads it after training
    if kind == "auto":
        kind = detect_kind(frames, task_dir)
    vocabulary = set(labels)
    for split, frame in frames.items():
        validate_split(frame, task_dir / f"{split}.csv", kind, vocabulary)
        if frame.empty:
            raise ClinpeftError(f"{task_dir / f'{split}.csv'} has no rows")
    check_no_leakage(frames, task_dir)
    if max_examples is not None:  # config.Cap: >= 1 (head(-1) would drop the last row)
        frames = {split: frame.head(max_examples) for split, frame in frames.items()}
    frames = {split: frame.reset_index(drop=True) for split, frame in frames.items()}
    return TaskData(name=name or task_dir.name, kind=kind, labels=labels, splits=frames)


def data_provenance(path: str | Path, frames: dict[str, pd.DataFrame] | None = None) -> dict:
    """What a model card says about a task's data: {"path", "files": {name: sha256}, "rows": {split: n},
    "patients": {split: n} (from the prepare manifest, when present), "cohort": the manifest's rules and
    drop counts (when present), "subgroup_columns": extra columns of the CSVs}. Missing files are skipped."""
    import hashlib

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
            out["rows"][split] = int(len(read_split_csv(task_dir / f"{split}.csv")))
    if frames:
        out["subgroup_columns"] = extra_columns(next(iter(frames.values())))
    manifest = task_dir / "manifest.json"
    if manifest.is_file():
        record = read_manifest(task_dir)
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


def unseen_classes(task: "TaskData") -> dict[str, list[str]]:
    """Labels present in val or test but in no train row ({split: [labels]}, empty when none): the classifier
    never saw an example of them, so their scores mean little. finetune names them in one warning line and
    records them in metrics.json ("unseen_in_train")."""
    def present(split: str) -> set[str]:
        cells = task.splits[split]["label"]
        if task.kind == "multilabel":
            return {code for cell in cells for code in split_multilabel(cell)}
        return {cell.strip() for cell in cells}

    trained = present("train")
    found = {split: sorted(present(split) - trained, key=task.labels.index)
             for split in task.splits if split != "train"}
    return {split: labels for split, labels in found.items() if labels}


def unseen_warning(unseen: dict[str, list[str]], task_dir) -> str | None:
    """The one warning line for unseen_classes (labels shown only when label-like, as every message)."""
    if not unseen:
        return None
    parts = [f"{split}.csv: {', '.join(shown(label) for label in labels[:10])}"
             f"{f' and {len(labels) - 10} more' if len(labels) > 10 else ''}" for split, labels in unseen.items()]
    return (f"warning: {task_dir}: label(s) with no train example, scored without ever being learned ("
            f"{'; '.join(parts)}); recorded in metrics.json unseen_in_train")
