"""The columns of predictions.csv, shared by the writer (training/classification.py) and the readers (reporting/).

    id, label, predicted, p_<label or index> ..., [subgroup columns]

- `predicted`: the predicted class (argmax of the probabilities) for binary and multiclass tasks; for
  multilabel tasks the comma-joined labels with probability >= 0.5 (sigmoid), empty for none.
- probability columns: `p_` + the label with every run of characters outside [A-Za-z0-9_] replaced by `_`
  (`<=3` -> p_3, `V45.8` -> p_V45_8, `(3,7]` -> p_3_7), made unique with _2, _3 ...: plain names in
  every tool (no formula start, no quoting, valid R/pandas identifiers). `predictions_columns.json`
  beside the file maps each column to its label ({"p_3": "<=3"}). Old files (no map, every column
  `p_<label>`) still read. `clinpeft predict` writes the same columns.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

HEADER_MAP_FILE = "predictions_columns.json"
UNSAFE = re.compile(r"[^0-9A-Za-z_]+")
MULTILABEL_THRESHOLD = 0.5  # predicted labels of a multilabel task: sigmoid probability at or above this


def probability_columns(labels: list[str]) -> list[str]:
    """One column name per label, in label order (see the module docstring)."""
    names, used = [], set()
    for label in labels:
        stem = "p_" + (UNSAFE.sub("_", str(label)).strip("_") or "label")
        name, k = stem, 2
        while name in used:
            name, k = f"{stem}_{k}", k + 1
        used.add(name)
        names.append(name)
    return names


def predicted_cells(task_type: str, probs: np.ndarray, labels: list[str],
                    threshold: float = MULTILABEL_THRESHOLD) -> list[str]:
    """The `predicted` column: the argmax label (binary, multiclass), or for multilabel tasks the labels with
    probability >= `threshold`, comma-joined as in task files (empty: none)."""
    probs = np.asarray(probs, dtype=np.float64)
    if task_type == "multilabel":
        return [",".join(str(labels[j]) for j in np.flatnonzero(row >= threshold)) for row in probs]
    return [str(labels[j]) for j in probs.argmax(axis=1)]


def header_map(labels: list[str]) -> dict[str, str]:
    return dict(zip(probability_columns(labels), map(str, labels)))


def write_header_map(path: Path, labels: list[str]) -> None:
    path.write_text(json.dumps(header_map(labels), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def read_probability_columns(run_dir: Path, labels: list[str]) -> list[str]:
    """The probability column of each label of a run's predictions.csv: from predictions_columns.json when
    present, else the old names p_<label>."""
    path = Path(run_dir) / HEADER_MAP_FILE
    if not path.is_file():
        return [f"p_{label}" for label in labels]
    mapping = {label: column for column, label in json.loads(path.read_text(encoding="utf-8")).items()}
    return [mapping.get(str(label), f"p_{label}") for label in labels]
