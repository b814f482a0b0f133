"""Score unlabelled notes with a saved fine-tuning run.

    clinpeft predict runs/mor-lora --notes new_notes.csv --out scored/mor

Any finetune run (every variant, decoder or encoder baseline, last or mean pooling), with the
long-note settings it was trained with. Input: CSV, CSV.GZ or JSONL with a text column
(--text-column, default text) and an optional id column (--id-column, default id; positions
1, 2, ... when absent); a label column is ignored (`evaluate` scores labelled notes).

Output directory (written whole or not at all):
    predictions.csv   id, predicted: the argmax class (single-label) or the labels whose probability
                      is >= --threshold, comma-joined as in task files (multilabel; empty: none),
                      then one probability column per label: the columns of a finetune run's
                      predictions.csv (clinpeft/data/predictions.py: p_<label> sanitised to [A-Za-z0-9_])
    predictions_columns.json   column -> original label, as beside a run's predictions.csv
    labels.json       the same map, the task, the threshold, the long-note settings

The threshold is one fixed value (default 0.5), not per-label thresholds tuned on the validation
split: with DIAG/PROC's hundreds of labels most have a handful of validation positives, and a
threshold tuned on them would overfit; the probabilities are written, so any threshold can be
applied afterwards.

Streamed: `chunk_rows` notes are read, cut into windows, sorted by length into batches (little
padding), scored and written in input order, then the next chunk; memory holds one chunk.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from clinpeft._version import __version__
from clinpeft.data.note_files import check_note_file, read_note_chunks
from clinpeft.data.predictions import HEADER_MAP_FILE, predicted_cells, probability_columns, write_header_map
from clinpeft.errors import ClinpeftError
from clinpeft.inference import Predictor, check_finetune_run
from clinpeft.run_files import PREDICTIONS
from clinpeft.rundir import atomic_run_dir, check_out_dir, write_json


def main(run: str | Path, notes: str | Path, out: str | Path, *, text_column: str = "text",
         id_column: str | None = None, batch_size: int = 16, device: str | None = None, threshold: float = 0.5,
         base: str | None = None,
         overwrite: bool = False, progress: bool = True, chunk_rows: int = 1024) -> dict:
    """Score the notes of `notes` with finetune run `run` into `out`. Returns the summary written to labels.json."""
    started = time.time()
    if not 0.0 < threshold < 1.0:
        raise ClinpeftError(f"--threshold {threshold}: give a probability between 0 and 1")
    if batch_size < 1:
        raise ClinpeftError(f"--batch-size {batch_size}: give 1 or more")
    check_finetune_run(run)
    check_out_dir(out, overwrite)
    note_file = check_note_file(notes, text_column, id_column)  # the whole file, before any work
    predictor = Predictor(run, base=base, device=device, batch_size=batch_size)
    labels, task_type = predictor.labels, predictor.task_type
    columns = probability_columns(labels)
    cut = {"notes_cut": 0, "n_notes": 0, "seen": 0, "tokens": 0}
    with atomic_run_dir(out, overwrite) as out_dir:
        path = out_dir / PREDICTIONS
        bar = tqdm(total=note_file.n_notes, desc="predict", unit="note", disable=not progress)
        for n, (ids, texts) in enumerate(read_note_chunks(note_file, chunk_rows)):
            encoded = predictor.encode(texts)
            probs = predictor.predict(encoded)
            frame = pd.DataFrame({"id": ids, "predicted": predicted_cells(task_type, probs, labels, threshold),
                                  **{c: probs[:, j] for j, c in enumerate(columns)}})
            frame.to_csv(path, mode="w" if n == 0 else "a", header=n == 0, index=False, float_format="%.7g")
            stats = encoded.truncation()
            cut["notes_cut"] += stats["notes_cut"]
            cut["n_notes"] += stats["n_notes"]
            cut["seen"] += sum(encoded.seen_tokens)
            cut["tokens"] += sum(encoded.note_tokens)
            bar.update(len(ids))
        bar.close()
        result = {
            "kind": "prediction",
            "run": str(run),
            "notes": str(notes),
            "task": predictor.meta["task"],
            "task_type": task_type,
            "columns": dict(zip(columns, labels)),  # predictions.csv column -> original label
            "predicted": ("labels with probability >= threshold, comma-joined" if task_type == "multilabel"
                           else "the class of highest probability"),
            "threshold": threshold if task_type == "multilabel" else None,
            "long_notes": predictor.long_notes.to_json(),
            "truncation": {"predict": {"notes_cut": cut["notes_cut"], "n_notes": cut["n_notes"],
                                       "tokens_seen_share": cut["seen"] / cut["tokens"] if cut["tokens"] else 1.0}},
            "n_notes": cut["n_notes"],
            "wall_time_s": time.time() - started,
            "clinpeft_version": __version__,
        }
        write_json(out_dir / "labels.json", result)
        write_header_map(out_dir / HEADER_MAP_FILE, labels)
    return result


def summary(result: dict, out: str | Path) -> list[str]:
    """What `clinpeft predict` prints: how many notes were scored, and a note when many were cut."""
    from clinpeft.training.classification import truncation_lines

    return ([f"{out}: {result['n_notes']} notes scored for {result['task']} -> {Path(out) / PREDICTIONS}"]
            + truncation_lines(result["truncation"], result["long_notes"]))
