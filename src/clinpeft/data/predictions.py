"""The columns of predictions.csv, shared by the writer (training/classification.py) and the readers (reporting/).

    id, label, predicted, p_<label or index> ..., [subgroup columns]

- `predicted`: the predicted class (argmax of the probabilities) for binary and multiclass tasks; for
  multilabel tasks the comma-joined labels with probability >= 0.5 (sigmoid), empty for none.
- probability columns: `p_<label>` when the label is spreadsheet-safe (`SAFE_LABEL`: letters, digits,
  `_` and `.`, starting with a letter or digit, so no `=`/`+`/`-`/`@` formula start and no quoting), else
  `p_<index>` (position in labels.txt); names are unique. `predictions_columns.json` beside the file
  maps each column to its label ({"p_3": "<=3"}). Old files (no map, every column `p_<label>`) still read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

HEADER_MAP_FILE = "predictions_columns.json"
SAFE_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*$")
MULTILABEL_THRESHOLD = 0.5  # predicted labels of a multilabel task: sigmoid probability at or above this


def probability_columns(labels: list[str]) -> list[str]:
    """One column name per label, in label order (see the module docstring)."""
    names, seen = [], set()
    for j, label in enumerate(labels):
        name = f"p_{label}" if SAFE_LABEL.match(str(label)) else f"p_{j}"
        if name in seen or (name != f"p_{label}" and f"p_{j}" in {f"p_{x}" for x in labels}):
            name = f"p_{j}_"
        seen.add(name)
        names.append(name)
    return names


def predicted_cells(task_type: str, probs: np.ndarray, labels: list[str]) -> list[str]:
    """The `predicted` column: argmax label, or multilabel labels with probability >= 0.5 comma-joined."""
    probs = np.asarray(probs, dtype=np.float64)
    if task_type == "multilabel":
        return [",".join(labels[j] for j in np.flatnonzero(row >= MULTILABEL_THRESHOLD)) for row in probs]
    return [labels[j] for j in probs.argmax(axis=1)]


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
