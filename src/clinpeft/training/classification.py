"""Downstream classification training: the task's loss, the best epoch kept, dynamic padding, predictions.csv."""

from __future__ import annotations

import json
import math
import os
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from transformers import TrainerCallback

from clinpeft.config import FinetuneConfig
from clinpeft.data.long_notes import EncodedNotes, LongNotes, encode_notes
from clinpeft.data.predictions import HEADER_MAP_FILE, predicted_cells, probability_columns, write_header_map
from clinpeft.data.tasks import TaskData
from clinpeft.evaluation import scoring
from clinpeft.evaluation.clinical import MIN_POSITIVES
from clinpeft.evaluation.metrics import probabilities, task_metrics
from clinpeft.files import read_json
from clinpeft.modeling.adapters import clinical_parameters, head_module
from clinpeft.modeling.classifier import Classifier, pad_batch
from clinpeft.modeling.pooling import pool_windows
from clinpeft.training.checkpointing import Checkpointing, load_whole, named_weights, whole
from clinpeft.training.precision import own_forward
from clinpeft.training.trainer import ShardedTrainer, silence_trainer, training_arguments


def class_weights(targets: np.ndarray, num_labels: int) -> torch.Tensor:
    """Balanced weights n / (K * n_c) so rare classes (deaths, long stays) count as much as common ones."""
    counts = np.bincount(targets, minlength=num_labels).astype(np.float64)
    weights = len(targets) / (num_labels * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def to_dataset(task: TaskData, split: str, encoded: EncodedNotes):
    """A split as a datasets.Dataset: per note its windows of token ids (`encoded`, the split's notes cut as
    data/long_notes.py says; truncate: one window) and its label targets."""
    from datasets import Dataset

    return Dataset.from_dict({"windows": encoded.windows_of(), "labels": task.targets(split).tolist()})


class PadCollator:
    """The batch's notes' windows, flattened and padded to the longest; `note_index` maps each window to
    its note in the batch; labels (one row per note) as a tensor."""

    def __init__(self, tokenizer, multilabel: bool):
        self.tokenizer = tokenizer
        self.label_dtype = torch.float32 if multilabel else torch.long

    def __call__(self, rows):
        windows = [w for r in rows for w in r["windows"]]
        batch = pad_batch(self.tokenizer, windows)
        batch["note_index"] = torch.tensor([i for i, r in enumerate(rows) for _ in r["windows"]])
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=self.label_dtype)
        return batch


class TaskLossTrainer(ShardedTrainer):
    """HF Trainer with the task's loss: class-weighted cross-entropy (single-label) or BCE on logits (multilabel).

    compute_loss returns the micro-batch's mean loss per note (per note and label: multilabel), not a loss
    already divided by the accumulated batch's item count. transformers 5 would otherwise take it as scaled
    for gradient accumulation (the classifier accepts loss kwargs, so `num_items_in_batch` is set) and skip
    its division by grad_accum: backward and the logged loss were grad_accum times the mean (issue 24).
    With equal micro-batches, batch_size=b, grad_accum=k then gives the same update and logged loss as
    batch_size=k*b, grad_accum=1 (tests/test_grad_accum.py)."""

    loss_is_scaled_for_ga = False  # read by Trainer.training_step: divide by the accumulation steps

    def __init__(self, *args, multilabel: bool, label_weights: torch.Tensor | None = None,
                 chunk_pooling: str = "max", head: torch.nn.Module | None = None, head_lr: float | None = None,
                 clinical: list[torch.nn.Parameter] | tuple = (), clinical_lr: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.multilabel, self.label_weights, self.chunk_pooling = multilabel, label_weights, chunk_pooling
        self.head, self.head_lr = head, head_lr
        self.clinical, self.clinical_lr = list(clinical), clinical_lr

    def create_optimizer(self, model=None):
        """The Trainer's optimizer; with train.head_lr, the head's parameters in a group of their own at that
        rate (no weight decay); with train.clinical_lr, a trainable clinical adapter's likewise (the Trainer's
        weight decay). The scheduler's warm-up and decay apply to every group alike."""
        optimizer = super().create_optimizer(model)
        if getattr(self, "_own_groups_added", False):
            return optimizer
        own = []
        if self.head_lr is not None and self.head is not None:
            own.append(([p for p in self.head.parameters() if p.requires_grad], self.head_lr, 0.0))
        if self.clinical_lr is not None:
            own.append(([p for p in self.clinical if p.requires_grad], self.clinical_lr, self.args.weight_decay))
        for params, lr, weight_decay in own:
            ids = {id(p) for p in params}
            moved = []
            for group in optimizer.param_groups:
                moved += [p for p in group["params"] if id(p) in ids]
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            if moved:
                optimizer.add_param_group({"params": moved, "lr": lr, "weight_decay": weight_decay})
        self._own_groups_added = True
        return optimizer

    def evaluate(self, *args, **kwargs):
        with own_forward(self.model):  # the epoch is selected on the scores evaluate/predict would give
            return super().evaluate(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        note_index = inputs.pop("note_index")
        outputs = model(**inputs)
        # Chunks: the loss is taken on each note's pooled logits, not per window. The label belongs to
        # the note, not to each window: a death mentioned in one window says nothing of the others, so
        # a per-window loss would teach the model that windows without the evidence carry the label
        # (label noise growing with note length) and would weight long notes by their window count.
        # Pooled, training optimises exactly what evaluate/predict score. Truncate: one window per note.
        logits = pool_windows(outputs.logits.float(), note_index, len(labels), self.chunk_pooling)
        outputs = {"logits": logits}  # the Trainer's evaluation reads per-note logits
        if self.multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            loss = weighted_cross_entropy(logits, labels, self.label_weights)
        return (loss, outputs) if return_outputs else loss


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean over the notes of weight[label] * cross-entropy. Divided by the note count, not (as torch's
    `weight=` does) by the batch's sum of weights: the mean of k equal micro-batches' losses is then the
    whole batch's loss, as gradient accumulation needs; balanced weights average 1 over the training set."""
    losses = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    if weights is not None:
        losses = losses * weights.to(logits.device)[labels]
    return losses.mean()


class KeepBest(TrainerCallback):
    """Model selection on validation AUROC: keep a CPU copy of the trainable weights of the
    best epoch and put it back at the end (adapters + head are small). Its state goes into each
    Trainer checkpoint (keep_best.safetensors + keep_best.json) and comes back on resume."""

    STATE, WEIGHTS = "keep_best.json", "keep_best.safetensors"

    def __init__(self):
        self.best_auroc, self.best_epoch, self.best_state, self.history = -math.inf, None, None, []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        auroc = (metrics or {}).get("eval_auroc")
        epoch = state.epoch or 0.0  # before training (LP-FT's start): epoch 0
        self.history.append({"epoch": epoch, "val_auroc": auroc})
        if auroc is not None and not math.isnan(auroc) and auroc > self.best_auroc:
            self.best_auroc, self.best_epoch = auroc, epoch
            # whole weights (under FSDP gathered by every process: on_evaluate runs on all of them)
            self.best_state = {n: whole(p).clone() for n, p in named_weights(model).items() if p.requires_grad}

    def on_save(self, args, state, control, **kwargs):
        if not args.should_save:
            return
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.best_state is not None:
            save_file({k: v.contiguous() for k, v in self.best_state.items()}, str(folder / self.WEIGHTS))
        tmp = folder / f".{self.STATE}.tmp"
        tmp.write_text(json.dumps({"best_auroc": self.best_auroc if self.best_state is not None else None,
                                   "best_epoch": self.best_epoch, "history": self.history}))
        os.replace(tmp, folder / self.STATE)

    def load(self, checkpoint: str | Path | None) -> None:
        """The state saved with `checkpoint` (a resumed run continues the selection where it stopped)."""
        if checkpoint is None or not (Path(checkpoint) / self.STATE).exists():
            return
        from safetensors.torch import load_file

        saved = read_json(Path(checkpoint) / self.STATE, dict, keys=("history", "best_epoch", "best_auroc"),
                          what="checkpoint state", hint="remove that checkpoint folder to resume from the one before")
        self.history, self.best_epoch = saved["history"], saved["best_epoch"]
        if saved["best_auroc"] is not None and (Path(checkpoint) / self.WEIGHTS).exists():
            self.best_auroc = saved["best_auroc"]
            self.best_state = load_file(str(Path(checkpoint) / self.WEIGHTS))

    def restore(self, model) -> None:
        if self.best_state is None:
            return
        params = named_weights(model)
        for name, value in self.best_state.items():
            load_whole(params[name], value)


def validation_auroc(task: TaskData, prediction) -> dict:
    """The Trainer's compute_metrics: the task's AUROC of an evaluation pass (logged as eval_auroc)."""
    return {"auroc": task_metrics(task.task_type, prediction.label_ids, prediction.predictions, task.labels)["auroc"]}


def make_trainer(clf: Classifier, task: TaskData, config: FinetuneConfig, checkpoints: Path, progress: bool,
                 callbacks: list | tuple = (), precision: str | None = None, encoded: dict | None = None,
                 long_notes: LongNotes | None = None) -> tuple[TaskLossTrainer, KeepBest, Checkpointing]:
    """HF Trainer with the task's loss, validation AUROC each epoch and the best epoch restored;
    a checkpoint into `checkpoints` every epoch (and as Checkpointing says). encoded: {split: EncodedNotes} of
    train and val, cut as `long_notes` says, as the recipe encoded them once (default: both made here)."""
    multilabel = task.task_type == "multilabel"
    long_notes = long_notes or LongNotes.from_task(config.task)
    encoded = encoded or {split: encode_notes(clf.tokenizer, task.splits[split]["text"].tolist(), long_notes)
                          for split in ("train", "val")}
    keep_best, checkpointing = KeepBest(), Checkpointing(config.train)
    trainer = TaskLossTrainer(
        model=clf.model,
        args=training_arguments(config.train, checkpoints, progress, precision, eval_strategy="epoch",
                                per_device_eval_batch_size=config.eval.batch_size, label_names=["labels"],
                                save_strategy="epoch"),
        train_dataset=to_dataset(task, "train", encoded["train"]),
        eval_dataset=to_dataset(task, "val", encoded["val"]),
        data_collator=PadCollator(clf.tokenizer, multilabel),
        compute_metrics=partial(validation_auroc, task),
        # keep_best first: it records the epoch before a sweep may prune, and its state before a checkpoint
        callbacks=[keep_best, checkpointing, *callbacks],
        multilabel=multilabel,
        label_weights=None if multilabel else class_weights(task.targets("train"), task.num_labels),
        chunk_pooling=long_notes.chunk_pooling,
        head=head_module(clf.model, clf.head_name),
        head_lr=config.train.head_lr,
        clinical=clinical_parameters(clf.model),
        clinical_lr=config.train.clinical_lr,
    )
    return silence_trainer(trainer, progress), keep_best, checkpointing


def split_metrics(task: TaskData, split: str, logits: np.ndarray, bootstrap_resamples: int,
                  bootstrap_seed: int, min_positives: int = MIN_POSITIVES) -> dict:
    """evaluation.scoring.split_metrics of a TaskData split (its targets, note ids, the task's name as the
    bootstrap stream)."""
    return scoring.split_metrics(task.task_type, task.labels, task.targets(split), logits,
                                 task.splits[split]["id"].tolist(), task.name, bootstrap_resamples, bootstrap_seed,
                                 min_positives)


def write_predictions(path: Path, task: TaskData, split: str, logits: np.ndarray,
                      extra_columns: list[str] = ()) -> None:
    """predictions.csv (clinpeft/data/predictions.py): id, gold label, predicted class/labels, one probability
    column per label in output-unit order (spreadsheet-safe names; predictions_columns.json maps them to the
    labels), then the task CSV's `extra_columns` (subgroups such as gender, age_group) as they were."""
    frame = task.splits[split]
    probs = probabilities(task.task_type, logits)
    columns = {"id": frame["id"], "label": frame["label"],
               "predicted": predicted_cells(task.task_type, probs, task.labels)}
    columns.update({name: probs[:, i] for i, name in enumerate(probability_columns(task.labels))})
    columns.update({name: frame[name] for name in extra_columns if name in frame.columns and name not in columns})
    pd.DataFrame(columns).to_csv(path, index=False, float_format="%.7g")
    write_header_map(path.parent / HEADER_MAP_FILE, task.labels)


def truncation_lines(truncation: dict, long_notes: dict) -> list[str]:
    """One line when more than 5% of a split's notes were cut (the model never saw part of them)."""
    cut = {split: t for split, t in truncation.items() if t["n_notes"] and t["notes_cut"] / t["n_notes"] > 0.05}
    if not cut:
        return []
    parts = ", ".join(f"{split} {t['notes_cut']}/{t['n_notes']} ({100 * t['notes_cut'] / t['n_notes']:.0f}%, "
                      f"{100 * t['tokens_seen_share']:.0f}% of tokens seen)" for split, t in cut.items())
    how = long_notes.get("mode", "truncate")
    fix = ("raise task.max_chunks or task.max_seq_len" if how == "chunks"
           else "task.long_notes=chunks reads whole notes, or raise task.max_seq_len")
    return [f"note: notes longer than task.max_seq_len={long_notes.get('max_seq_len')} were cut ({how}): {parts}; "
            f"{fix}"]
