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
from clinpeft.run_files import BUNDLE, RUN_RECORD


def check_finetune_run(run_dir: str | Path) -> Path:
    """A finetune run directory, or one line saying what it is instead."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ClinpeftError(f"{run_dir}: no such directory; give a `clinpeft finetune` run directory")
    if not (run_dir / BUNDLE).is_file():
        what = ("a `clinpeft pretrain` run (a clinical adapter, no classifier)" if (run_dir / RUN_RECORD).is_file()
                else "not a `clinpeft finetune` run directory")
        raise ClinpeftError(f"{run_dir}: {what}: it has no bundle.json; give the directory a `clinpeft finetune` "
                            "run wrote (it holds bundle.json, labels.txt, metrics.json)")
    return run_dir


class Predictor:
    """A finetune run's classifier, ready to score notes (inference only, no gradients)."""

    def __init__(self, run_dir: str | Path, base: str | None = None, device: str | None = None,
                 batch_size: int = 16):
        import torch

        from clinpeft.bases import demo_built
        from clinpeft.modeling.classifier import load_bundle

        self.run_dir = check_finetune_run(run_dir)
        self.clf, self.meta = load_bundle(self.run_dir, base=demo_built(base))
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

    def logits(self, texts: list[str] | EncodedNotes, progress: bool = False, desc: str = "predict") -> np.ndarray:
        """Logits (n_notes, n_labels) in input order; desc: the progress bar's label."""
        from clinpeft.modeling.classifier import score_notes

        encoded = texts if isinstance(texts, EncodedNotes) else self.encode(texts)
        return score_notes(self.clf, encoded, self.long_notes, self.batch_size, progress, desc)

    def predict(self, texts: list[str] | EncodedNotes, progress: bool = False) -> np.ndarray:
        """Probabilities, one row per note in input order, one column per label (self.labels)."""
        if isinstance(texts, str):
            raise ClinpeftError("predict takes a list of notes; wrap a single note as [note]")
        return probabilities(self.task_type, self.logits(texts, progress))


def load(run_dir: str | Path, base: str | None = None, device: str | None = None, batch_size: int = 16) -> Predictor:
    """`clinpeft.load("runs/mor").predict(["note", ...])` -> probabilities (numpy, n_notes x n_labels)."""
    return Predictor(run_dir, base=base, device=device, batch_size=batch_size)


class ExportedClassifier:
    """A folder written by `clinpeft export` (a finetune run), scored with transformers alone: no peft, no bundle
    (an `--as-adapter` folder: its base model from clinpeft_export.json plus peft's PeftModel.from_pretrained).

    Pooling as the run was trained (clinpeft_export.json `pooling`): last = transformers' own forward
    (the last non-pad token); mean = `mean_pooled_logits`. Notes are cut into windows as in training
    (`long_notes`), and a note's windows pooled (task.chunk_pooling), as `clinpeft predict` does.
    """

    def __init__(self, folder: str | Path, device: str | None = None, batch_size: int = 16):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from clinpeft.run_files import read_record

        self.folder = Path(folder)
        if not (self.folder / "clinpeft_export.json").is_file():
            raise ClinpeftError(f"{self.folder}: no clinpeft_export.json; give a folder `clinpeft export` wrote")
        self.info = read_record(self.folder / "clinpeft_export.json")
        if self.info.get("auto_class") != "AutoModelForSequenceClassification":
            raise ClinpeftError(f"{self.folder}: an exported {self.info.get('auto_class')}, not a classifier; "
                                "export a `clinpeft finetune` run")
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.tokenizer.padding_side = self.info.get("padding_side", "right")
        if self.info.get("as_adapter"):  # the plain base classifier + the task adapter (its LoRA and head)
            from peft import PeftModel
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # "score.weight newly initialized": the adapter brings the head
            try:
                base = AutoModelForSequenceClassification.from_pretrained(
                    self.info["base_model"], num_labels=self.info["num_labels"],
                    problem_type=self.info["problem_type"], pad_token_id=self.info["pad_token_id"])
            finally:
                hf_logging.set_verbosity(verbosity)
            self.model = PeftModel.from_pretrained(base, self.folder).to(self.device).eval()
            self.labels: list[str] = list(self.info["labels"])
        else:
            self.model = AutoModelForSequenceClassification.from_pretrained(self.folder).to(self.device).eval()
            self.labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.task_type: str = self.info["task_type"]
        self.long_notes = LongNotes.from_bundle(self.info)
        self.batch_size = batch_size

    def logits(self, texts: list[str]) -> np.ndarray:
        import torch

        from clinpeft.modeling.pooling import pool_windows

        encoded = encode_notes(self.tokenizer, list(texts), self.long_notes)
        out = []
        with torch.no_grad():
            for start in range(0, len(encoded.windows), self.batch_size):
                batch = self.tokenizer.pad({"input_ids": encoded.windows[start:start + self.batch_size]},
                                           return_tensors="pt").to(self.device)
                if self.info.get("pooling", "last") == "mean":
                    out.append(mean_pooled_logits(self.model, batch["input_ids"], batch["attention_mask"],
                                                  self.info.get("head", "score")))
                else:
                    out.append(self.model(**batch).logits)
        logits = torch.cat(out).float().cpu()
        if len(encoded.windows) != encoded.n_notes:
            logits = pool_windows(logits, torch.as_tensor(encoded.note_index), encoded.n_notes,
                                  self.long_notes.chunk_pooling)
        return logits.numpy()

    def predict(self, texts: list[str]) -> np.ndarray:
        """Probabilities, one row per note, one column per label (self.labels): softmax, or sigmoid if multilabel."""
        if isinstance(texts, str):
            raise ClinpeftError("predict takes a list of notes; wrap a single note as [note]")
        return probabilities(self.task_type, self.logits(texts))


def mean_pooled_logits(model, input_ids, attention_mask, head: str = "score"):
    """model.pooling=mean with transformers alone: the head applied to the mean of the final hidden states
    over the note's tokens (attention_mask == 1, BOS included), as clinpeft trained it. `model` is any
    `*ForSequenceClassification` of a decoder (its `base_model` gives the final, normed hidden states), or a
    peft model around one (its LoRA layers sit inside, its head copy is the adapter's)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = inner.base_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    mask = attention_mask.to(hidden.dtype)[..., None]
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
    return getattr(inner, head)(pooled)


def load_exported(folder: str | Path, device: str | None = None, batch_size: int = 16) -> ExportedClassifier:
    """`clinpeft.inference.load_exported("exported/mor").predict(["note", ...])` -> probabilities (numpy)."""
    return ExportedClassifier(folder, device=device, batch_size=batch_size)
