"""A trained classifier for scoring new notes: `clinpeft.load(RUN_DIR).predict(["note", ...])`.

Loads a `clinpeft finetune` run directory (bundle.json + adapters + head, or model/ for variant
full), with the long-note settings it was trained with (bundle.json `long_notes`; older bundles:
truncate on the right), and returns probabilities: softmax over the classes for single-label
tasks, a sigmoid per label for multilabel ones (evaluation/metrics.probabilities, as `evaluate`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clinpeft.data.long_notes import EncodedNotes, LongNotes, encode_notes
from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.metrics import probabilities


def check_finetune_run(run_dir: str | Path) -> Path:
    """A finetune run directory, or one line saying what it is instead."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ClinpeftError(f"{run_dir}: no such directory; give a `clinpeft finetune` run directory")
    if not (run_dir / "bundle.json").is_file():
        what = ("a `clinpeft pretrain` run (a clinical adapter, no classifier)" if (run_dir / "run.json").is_file()
                else "not a `clinpeft finetune` run directory")
        raise ClinpeftError(f"{run_dir}: {what}: it has no bundle.json; give the directory a `clinpeft finetune` "
                            "run wrote (it holds bundle.json, labels.txt, metrics.json)")
    return run_dir


class Predictor:
    """A finetune run's classifier, ready to score notes (inference only, no gradients)."""

    def __init__(self, run_dir: str | Path, base: str | None = None, device: str | None = None,
                 batch_size: int = 16):
        import torch

        from clinpeft.modeling.classifier import load_bundle

        self.run_dir = check_finetune_run(run_dir)
        self.clf, self.meta = load_bundle(self.run_dir, base=base)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.clf.model.to(self.device)
        except (RuntimeError, AssertionError) as exc:
            raise ClinpeftError(f"--device {self.device}: {str(exc).splitlines()[0]}") from None
        self.labels: list[str] = list(self.meta["labels"])
        self.task_type: str = self.meta["task_type"]
        self.long_notes = LongNotes.from_bundle(self.meta)
        self.batch_size = batch_size

    def encode(self, texts: list[str]) -> EncodedNotes:
        return encode_notes(self.clf.tokenizer, list(texts), self.long_notes)

    def logits(self, texts: list[str] | EncodedNotes, progress: bool = False) -> np.ndarray:
        from clinpeft.modeling.classifier import score_notes

        encoded = texts if isinstance(texts, EncodedNotes) else self.encode(texts)
        return score_notes(self.clf, encoded, self.long_notes, self.batch_size, progress, "predict")

    def predict(self, texts: list[str] | EncodedNotes, progress: bool = False) -> np.ndarray:
        """Probabilities, one row per note in input order, one column per label (self.labels)."""
        if isinstance(texts, str):
            raise ClinpeftError("predict takes a list of notes; wrap a single note as [note]")
        return probabilities(self.task_type, self.logits(texts, progress))


def load(run_dir: str | Path, base: str | None = None, device: str | None = None, batch_size: int = 16) -> Predictor:
    """`clinpeft.load("runs/mor").predict(["note", ...])` -> probabilities (numpy, n_notes x n_labels)."""
    return Predictor(run_dir, base=base, device=device, batch_size=batch_size)
