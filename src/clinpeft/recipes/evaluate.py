"""Re-score a saved fine-tuning run on a CSV of labelled notes.

    clinpeft evaluate runs/mor-lora --data demo-out/data/tasks/mor/test.csv --out runs/mor-lora-eval

Rebuilds the classifier from its run directory alone (bundle.json, adapters/, head.safetensors),
scores every note, and writes metrics.json (same AUROC definitions as `finetune`) and
predictions.csv.
"""

from __future__ import annotations

import time
from pathlib import Path

from clinpeft._version import __version__
from clinpeft.config import ClassifierEvalSection
from clinpeft.data.tasks import TaskData, extra_columns, read_split_csv, validate_split
from clinpeft.inference import Predictor
from clinpeft.run_files import METRICS, PREDICTIONS
from clinpeft.rundir import atomic_run_dir, write_json
from clinpeft.training.classification import split_metrics, truncation_lines, write_predictions


def main(run: str | Path, data: str | Path, out: str | Path, *, base: str | None = None, batch_size: int | None = None,
         overwrite: bool = False, progress: bool = True, bootstrap_resamples: int = 1000,
         bootstrap_seed: int = 0) -> dict:
    """Score the notes of `data` with the classifier of finetune run `run`, into `out`. Returns metrics.json.

    base: the base model's directory if it moved since training. batch_size: None = eval.batch_size's default."""
    started = time.time()
    batch_size = ClassifierEvalSection().batch_size if batch_size is None else batch_size
    data = Path(data)
    frame = read_split_csv(data)
    predictor = Predictor(run, base=base, batch_size=batch_size)  # as predict and explain score
    meta = predictor.meta
    kind = "multilabel" if meta["task_type"] == "multilabel" else "single_label"
    validate_split(frame, data, kind, set(meta["labels"]))
    task = TaskData(name=meta["task"], kind=kind, labels=list(meta["labels"]), splits={"eval": frame})

    long_notes = predictor.long_notes  # as trained (older bundles: truncate on the right)
    encoded = predictor.encode(frame["text"].tolist())
    logits = predictor.logits(encoded, progress, desc="evaluate")
    # AUROC as in finetune; "auroc_ci": its 95% bootstrap interval over these notes
    scores = split_metrics(task, "eval", logits, bootstrap_resamples, bootstrap_seed)
    metrics = {
        "kind": "evaluation",
        "run": str(run),
        "data": str(data),
        "task": meta["task"],
        "task_type": meta["task_type"],
        "variant": meta["variant"],
        "pooling": predictor.clf.pooling,  # as trained (bundle.json; older bundles: last)
        "long_notes": long_notes.to_json(),
        "truncation": {"eval": encoded.truncation()},
        "eval": scores,
        "wall_time_s": time.time() - started,
        "clinpeft_version": __version__,
    }
    with atomic_run_dir(out, overwrite) as out_dir:
        write_predictions(out_dir / PREDICTIONS, task, "eval", logits, extra_columns(frame))
        write_json(out_dir / METRICS, metrics)
    return metrics


def summary(result: dict, out: str | Path) -> list[str]:
    """What `clinpeft evaluate` prints: the task's AUROC on the scored notes."""
    return ([f"{out}: {result['task']} AUROC {result['eval']['auroc']:.4f} on {result['eval']['n_examples']} notes"]
            + truncation_lines(result["truncation"], result["long_notes"]))
