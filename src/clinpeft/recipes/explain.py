"""`clinpeft explain`: which sentences of each note drove a fine-tuned run's prediction, as an HTML page.

    clinpeft explain runs/mor-lora --notes tasks/mor/test.csv --out explain/mor --max-notes 50

Reads a CSV with `id,text` (a `label` column, if any, is shown as the gold label), rebuilds the classifier
from its run directory and scores as `predict` does (the run's long-note settings), and computes sentence
occlusion (evaluation/attribution.py: why occlusion, and its exact definition). Writes OUT/index.html (every
note highlighted for its predicted label: red up, blue down; the top sentences per label across the set;
inline CSS only, nothing loaded from anywhere) and OUT/attributions.json (per note: sentence spans,
probabilities, attributions). Note text goes only into these two files, never to the console.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.attribution import occlusion, top_phrases
from clinpeft.files import read_csv
from clinpeft.inference import Predictor
from clinpeft.reporting.explain_html import write_explain_page
from clinpeft.rundir import atomic_run_dir, write_json


def read_notes(path: str | Path, max_notes: int | None) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise ClinpeftError(f"--notes {path} not found; give a CSV with id,text columns (e.g. a task's test.csv)")
    frame = read_csv(path, ("id", "text"), "notes CSV", "expected id,text[,label]")
    if frame.empty:
        raise ClinpeftError(f"{path}: no notes after the header; give a CSV with id,text rows")
    empty = frame.index[frame["text"].str.strip() == ""]
    if len(empty):
        raise ClinpeftError(f"{path} row {int(empty[0]) + 2}: empty text; remove the row")
    if max_notes is not None:
        if max_notes < 1:
            raise ClinpeftError(f"--max-notes {max_notes}: use 1 or more")
        frame = frame.head(max_notes)
    return frame.reset_index(drop=True)


def main(run: str | Path, notes: str | Path, out: str | Path, *, max_notes: int | None = 20, base: str | None = None,
         batch_size: int = 16, overwrite: bool = False, progress: bool = True) -> dict:
    """Explain the run's predictions on the notes; returns {"notes", "labels", "top_phrases", "out"}."""
    frame = read_notes(notes, max_notes)
    # the run's own scoring (its long-note settings: chunks are pooled as in training, evaluate and predict)
    predictor = Predictor(run, base=base, batch_size=batch_size)
    labels = predictor.labels
    score = predictor.predict

    texts = frame["text"].tolist()
    from tqdm.auto import tqdm

    attributions = []
    for start in tqdm(range(0, len(texts), 4), desc="occlusion", unit="note", unit_scale=4, disable=not progress):
        attributions += occlusion(texts[start:start + 4], score)
    predicted = [int(a.probs.argmax()) for a in attributions]
    phrases = top_phrases(texts, attributions, labels)
    gold = frame["label"].tolist() if "label" in frame.columns else [None] * len(frame)
    with atomic_run_dir(out, overwrite) as out_dir:
        write_explain_page(out_dir / "index.html", str(run), labels, frame["id"].tolist(), texts, attributions,
                           predicted, gold, phrases)
        write_json(out_dir / "attributions.json", {
            "run": str(run), "method": "sentence occlusion: P(label | note) - P(label | note without the sentence)",
            "labels": labels,
            "notes": [{"id": i, "predicted": labels[k], "probs": a.probs.tolist(), "spans": a.spans,
                       "attributions": a.attributions.tolist()}
                      for i, a, k in zip(frame["id"].tolist(), attributions, predicted)],
            "top_phrases": phrases})
    return {"notes": len(frame), "labels": labels, "top_phrases": phrases, "out": str(out)}


def summary(result: dict, out: str | Path) -> list[str]:
    """Counts and where the page is; no note text (phrases stay in the files)."""
    return [f"{out}/index.html: {result['notes']} notes explained (sentence occlusion, {len(result['labels'])} "
            "labels); open it in a browser"]
