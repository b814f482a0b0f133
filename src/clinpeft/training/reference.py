"""The bag-of-words reference row of Table 3: TF-IDF + logistic regression on the same task, as a run directory.

    from clinpeft.training.reference import tfidf_run
    tfidf_run("demo-out/data/tasks/mor", "demo-out/reference/tfidf/mor")   # metrics.json + predictions.csv

What the labelled notes allow without any language model: word and word-pair TF-IDF (sublinear term
frequency, fitted on the train notes), scikit-learn's LogisticRegression (class-balanced, as the fine-tuning
loss is), C chosen on validation AUROC, never on test. Multilabel tasks: one model per label (one-vs-rest).
The run directory has the files `clinpeft report` reads from a fine-tuning run (metrics.json with kind
"finetune", predictions.csv, labels.txt), so the row gets the same bootstrap interval and paired p-values as
the model rows; its metrics.json says `model_kind: "reference"` (listed after the model rows) and names the row.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np

from clinpeft.data.tasks import extra_columns, load_task
from clinpeft.run_files import LABELS, METRICS, PREDICTIONS, VAL_PREDICTIONS
from clinpeft.rundir import write_json
from clinpeft.training.classification import split_metrics, write_predictions

TFIDF_ROW = "TF-IDF + logistic regression"
TFIDF_CS = (0.1, 1.0, 10.0, 100.0)  # inverse L2 strength; chosen on val AUROC
MAX_ITER = 2000
TOKEN_PATTERN = r"(?u)\b\w[\w/%.-]*\b"  # keeps clinical tokens whole: P/F, FiO2, 100%, 7.18/78


def _fit(task_type: str, x, y: np.ndarray, c: float) -> list:
    from sklearn.linear_model import LogisticRegression

    def one(target, class_weight):
        with warnings.catch_warnings():  # enough iterations to rank notes; no ConvergenceWarning noise
            warnings.simplefilter("ignore")
            return LogisticRegression(C=c, max_iter=MAX_ITER, class_weight=class_weight).fit(x, target)

    if task_type == "multilabel":
        return [one(y[:, j], None) if 0 < y[:, j].sum() < len(y) else None for j in range(y.shape[1])]
    return [one(y, "balanced")]


def _logits(task_type: str, models: list, x, num_labels: int) -> np.ndarray:
    """Scores in task_metrics' form: log-probabilities (single-label) or decision values (multilabel)."""
    if task_type == "multilabel":
        return np.stack([m.decision_function(x) if m is not None else np.zeros(x.shape[0]) for m in models], axis=1)
    (model,) = models
    proba = np.zeros((x.shape[0], num_labels))
    proba[:, model.classes_] = model.predict_proba(x)
    return np.log(np.clip(proba, 1e-12, None))


def tfidf_run(task_path: str | Path, out: str | Path, *, bootstrap_resamples: int = 0, cs=TFIDF_CS) -> dict:
    """Fit the reference on task_path's train split, choose C on val, score val and test; write out/ (created)
    with metrics.json, predictions.csv, predictions_val.csv and labels.txt; return metrics.json's content."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    from clinpeft.evaluation.metrics import task_metrics

    started = time.time()
    task = load_task(task_path)
    vectorizer = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2), token_pattern=TOKEN_PATTERN, min_df=1)
    x = {"train": vectorizer.fit_transform(task.splits["train"]["text"])}
    x.update({split: vectorizer.transform(task.splits[split]["text"]) for split in ("val", "test")})
    y = {split: task.targets(split) for split in ("train", "val", "test")}
    val_by_c, fitted = {}, {}
    for c in cs:
        fitted[c] = _fit(task.task_type, x["train"], y["train"], c)
        logits = _logits(task.task_type, fitted[c], x["val"], task.num_labels)
        val_by_c[c] = float(task_metrics(task.task_type, y["val"], logits, task.labels)["auroc"])
    best = max(cs, key=lambda c: val_by_c[c] if not math.isnan(val_by_c[c]) else -1.0)
    logits = {split: _logits(task.task_type, fitted[best], x[split], task.num_labels) for split in ("val", "test")}

    run_dir = Path(out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / LABELS).write_text("\n".join(task.labels) + "\n", encoding="utf-8")
    extras = extra_columns(task.splits["test"])
    write_predictions(run_dir / PREDICTIONS, task, "test", logits["test"], extras)
    write_predictions(run_dir / VAL_PREDICTIONS, task, "val", logits["val"], extras)
    metrics = {
        "kind": "finetune",  # read by `clinpeft report` like a fine-tuning run
        "task": task.name, "task_type": task.task_type, "variant": "reference", "row": TFIDF_ROW,
        "model_kind": "reference", "base_model_name": "reference",
        "val": split_metrics(task, "val", logits["val"], 0, 0),
        "test": split_metrics(task, "test", logits["test"], bootstrap_resamples, 0),
        "C": best, "val_by_C": {str(c): a for c, a in val_by_c.items()},
        "vocabulary_size": len(vectorizer.vocabulary_), "n_train": len(task.splits["train"]),
        "wall_time_s": time.time() - started,
    }
    write_json(run_dir / METRICS, metrics)
    return metrics
