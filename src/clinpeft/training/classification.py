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
from transformers import Trainer, TrainerCallback

from clinpeft.config import FinetuneConfig
from clinpeft.data.tasks import TaskData
from clinpeft.evaluation.bootstrap import bootstrap_fields
from clinpeft.evaluation.metrics import probabilities, task_metrics
from clinpeft.modeling.classifier import Classifier, encode, pad_batch
from clinpeft.training.common import Checkpointing, silence_trainer, training_arguments


def class_weights(targets: np.ndarray, num_labels: int) -> torch.Tensor:
    """Balanced weights n / (K * n_c) so rare classes (deaths, long stays) count as much as common ones."""
    counts = np.bincount(targets, minlength=num_labels).astype(np.float64)
    weights = len(targets) / (num_labels * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def to_dataset(task: TaskData, split: str, tokenizer, max_seq_len: int):
    """A split as a datasets.Dataset of token ids (cut to max_seq_len) and label targets."""
    from datasets import Dataset

    frame = task.splits[split]
    return Dataset.from_dict({"input_ids": encode(tokenizer, frame["text"].tolist(), max_seq_len),
                              "labels": task.targets(split).tolist()})


class PadCollator:
    """Dynamic padding to the longest note in the batch; labels as a tensor."""

    def __init__(self, tokenizer, multilabel: bool):
        self.tokenizer = tokenizer
        self.label_dtype = torch.float32 if multilabel else torch.long

    def __call__(self, rows):
        batch = pad_batch(self.tokenizer, [r["input_ids"] for r in rows])
        batch["labels"] = torch.tensor([r["labels"] for r in rows], dtype=self.label_dtype)
        return batch


class TaskLossTrainer(Trainer):
    """HF Trainer with the task's loss: class-weighted cross-entropy (single-label) or BCE on logits (multilabel)."""

    def __init__(self, *args, multilabel: bool, label_weights: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.multilabel, self.label_weights = multilabel, label_weights

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits.float()
        if self.multilabel:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        else:
            weight = None if self.label_weights is None else self.label_weights.to(logits.device)
            loss = torch.nn.functional.cross_entropy(logits, labels, weight=weight)
        return (loss, outputs) if return_outputs else loss


class KeepBest(TrainerCallback):
    """Model selection on validation AUROC: keep a CPU copy of the trainable weights of the
    best epoch and put it back at the end (adapters + head are small). Its state goes into each
    Trainer checkpoint (keep_best.safetensors + keep_best.json) and comes back on resume."""

    STATE, WEIGHTS = "keep_best.json", "keep_best.safetensors"

    def __init__(self):
        self.best_auroc, self.best_epoch, self.best_state, self.history = -math.inf, None, None, []

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        auroc = (metrics or {}).get("eval_auroc")
        self.history.append({"epoch": state.epoch, "val_auroc": auroc})
        if auroc is not None and not math.isnan(auroc) and auroc > self.best_auroc:
            self.best_auroc, self.best_epoch = auroc, state.epoch
            self.best_state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}

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

        saved = json.loads((Path(checkpoint) / self.STATE).read_text())
        self.history, self.best_epoch = saved["history"], saved["best_epoch"]
        if saved["best_auroc"] is not None and (Path(checkpoint) / self.WEIGHTS).exists():
            self.best_auroc = saved["best_auroc"]
            self.best_state = load_file(str(Path(checkpoint) / self.WEIGHTS))

    def restore(self, model) -> None:
        if self.best_state is None:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.best_state.items():
                params[name].copy_(value.to(params[name].device))


def validation_auroc(task: TaskData, prediction) -> dict:
    """The Trainer's compute_metrics: the task's AUROC of an evaluation pass (logged as eval_auroc)."""
    return {"auroc": task_metrics(task.task_type, prediction.label_ids, prediction.predictions, task.labels)["auroc"]}


def make_trainer(clf: Classifier, task: TaskData, config: FinetuneConfig, checkpoints: Path, progress: bool,
                 callbacks: list | tuple = ()) -> tuple[TaskLossTrainer, KeepBest, Checkpointing]:
    """HF Trainer with the task's loss, validation AUROC each epoch and the best epoch restored;
    a checkpoint into `checkpoints` every epoch (and as Checkpointing says)."""
    multilabel = task.task_type == "multilabel"
    keep_best, checkpointing = KeepBest(), Checkpointing(config.train)
    trainer = TaskLossTrainer(
        model=clf.model,
        args=training_arguments(config.train, checkpoints, progress, eval_strategy="epoch",
                                per_device_eval_batch_size=config.eval.batch_size, label_names=["labels"],
                                save_strategy="epoch"),
        train_dataset=to_dataset(task, "train", clf.tokenizer, config.task.max_seq_len),
        eval_dataset=to_dataset(task, "val", clf.tokenizer, config.task.max_seq_len),
        data_collator=PadCollator(clf.tokenizer, multilabel),
        compute_metrics=partial(validation_auroc, task),
        # keep_best first: it records the epoch before a sweep may prune, and its state before a checkpoint
        callbacks=[keep_best, checkpointing, *callbacks],
        multilabel=multilabel,
        label_weights=None if multilabel else class_weights(task.targets("train"), task.num_labels),
    )
    return silence_trainer(trainer, progress), keep_best, checkpointing


def split_metrics(task: TaskData, split: str, logits: np.ndarray, bootstrap_resamples: int,
                  bootstrap_seed: int) -> dict:
    """metrics.json's entry of one split: its AUROC (evaluation/metrics.py) and, when bootstrap_resamples > 0,
    "auroc_ci", its 95% bootstrap interval over the split's notes (evaluation/bootstrap.py)."""
    targets = task.targets(split)
    scores = task_metrics(task.task_type, targets, logits, task.labels)
    if bootstrap_resamples:
        scores.update(bootstrap_fields(task.task_type, targets, probabilities(task.task_type, logits),
                                       ids=task.splits[split]["id"].tolist(), stream=task.name,
                                       n_resamples=bootstrap_resamples, seed=bootstrap_seed))
    return scores


def write_predictions(path: Path, task: TaskData, split: str, logits: np.ndarray) -> None:
    """predictions.csv: id, gold label, then one probability column p_<label> per label, in output-unit order."""
    frame = task.splits[split]
    probs = probabilities(task.task_type, logits)
    columns = {"id": frame["id"], "label": frame["label"]}
    columns.update({f"p_{label}": probs[:, i] for i, label in enumerate(task.labels)})
    pd.DataFrame(columns).to_csv(path, index=False, float_format="%.7g")
