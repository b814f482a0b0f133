"""Step 2, downstream fine-tuning: clinical outcome prediction from admission notes (paper Table 3).

    clinpeft finetune configs/demo/finetune_lora.yaml task.path=demo-out/data/tasks/mor --out runs/mor-lora
    clinpeft finetune configs/demo/finetune_clinical.yaml variant=clinical_trainable+downstream \\
        clinical_adapter=runs/pretrain-lora task.path=demo-out/data/tasks/diag --out runs/diag-ct-ds

setup (task data validated, base model + the variant's adapters + head) -> fit (HF Trainer,
class-weighted cross-entropy or BCE, validation AUROC every epoch, the best epoch kept) ->
test (AUROC, predictions) -> save the bundle.

The clinical adapter may come from any pretraining method but prefix tuning (refused: it cannot
classify in transformers 5.x). A downstream LoRA stacks only on a LoRA clinical adapter; prompt
methods pad on the left. A `full` run is a whole clinical model: it becomes the base model, with
clinical_frozen = the head on it and clinical_frozen+downstream = a LoRA on it (modeling/adapters.py).

Variant `full` trains every weight of model.base with the head (saved whole, as model/). model.base
may also be a BERT-family encoder (BlueBERT, UmlsBERT, Bio+ClinicalBERT, CORe; detected from its
config.json), the paper's baselines: variant full (or head, or lora with lora.target_modules=[query,value]);
clinical_* variants are refused for encoders.

Output directory:
    adapters/<name>/, head.safetensors, bundle.json   the trained classifier (see modeling/classifier.py)
    labels.txt         the label vocabulary, in output-unit order
    metrics.json       val and test AUROC with 95% bootstrap intervals (and per-label detail for multilabel tasks)
    predictions.csv    test notes: id, gold label, one probability column per label
    config.yaml        the resolved config
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from clinpeft import __version__
from clinpeft.config import FinetuneConfig, save_config
from clinpeft.data.tasks import TaskData, load_task
from clinpeft.errors import ClinpeftError
from clinpeft.modeling import methods
from clinpeft.evaluation.metrics import sigmoid, softmax, task_metrics
from clinpeft.modeling.adapters import check_variant, find_clinical_adapter, full_model_variant
from clinpeft.modeling.base import count_parameters, device_summary, is_encoder, resolve_base
from clinpeft.modeling.classifier import (
    Classifier,
    build_classifier,
    check_pooling,
    encode,
    pad_batch,
    predict_logits,
    save_bundle,
)
from clinpeft.rundir import atomic_run_dir, write_json
from clinpeft.training.common import silence_trainer, training_arguments


def main(config: FinetuneConfig, out: str | Path, overwrite: bool = False, progress: bool = True,
         callbacks: list | tuple = ()) -> dict:
    """Run one fine-tuning job into `out` (created whole, or not at all). Returns metrics.json.

    callbacks: extra transformers TrainerCallbacks (a sweep's pruning reads the per-epoch val AUROC)."""
    check_pooling(config.model.base, config.model.pooling)  # before any work: encoders read [CLS]
    task = load_task(config.task.path, config.task.name, config.task.kind, config.task.max_examples)
    clinical = None
    if methods.variant(config.variant).needs_clinical:
        if not config.clinical_adapter:
            raise ClinpeftError(
                f"variant {config.variant} needs clinical_adapter=<directory of a `clinpeft pretrain` run>; "
                "or choose variant=lora or variant=head"
            )
        clinical = find_clinical_adapter(config.clinical_adapter)
        check_variant(clinical, config.variant)
        if clinical.method != "full" and is_encoder(config.model.base):
            raise ClinpeftError(
                f"model.base {config.model.base} is a BERT-family encoder: variant {config.variant} needs a clinical "
                "adapter pretrained on it, and `clinpeft pretrain` trains LLaMA-family (causal) models only; use "
                "variant=full (the paper's baseline rows), head or lora with an encoder"
            )
    with atomic_run_dir(out, overwrite) as run_dir:
        save_config(config, run_dir)
        return run(config, task, clinical, run_dir, progress, callbacks)


def class_weights(targets: np.ndarray, num_labels: int) -> torch.Tensor:
    """Balanced weights n / (K * n_c) so rare classes (deaths, long stays) count as much as common ones."""
    counts = np.bincount(targets, minlength=num_labels).astype(np.float64)
    weights = len(targets) / (num_labels * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def to_dataset(task: TaskData, split: str, tokenizer, max_seq_len: int):
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


def make_trainer(clf: Classifier, task: TaskData, config: FinetuneConfig, run_dir: Path, progress: bool,
                 callbacks: list | tuple = ()):
    """HF Trainer with the task's loss, validation AUROC each epoch and the best epoch restored."""
    from transformers import Trainer, TrainerCallback

    multilabel = task.task_type == "multilabel"
    weights = None if multilabel else class_weights(task.targets("train"), task.num_labels)
    train_ds = to_dataset(task, "train", clf.tokenizer, config.task.max_seq_len)
    val_ds = to_dataset(task, "val", clf.tokenizer, config.task.max_seq_len)

    class TaskLossTrainer(Trainer):
        """Class-weighted cross-entropy (single-label) or BCE on logits (multilabel)."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits.float()
            if multilabel:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
            else:
                loss = torch.nn.functional.cross_entropy(logits, labels, weight=weights.to(logits.device))
            return (loss, outputs) if return_outputs else loss

    def compute_metrics(prediction) -> dict:
        return {"auroc": task_metrics(task.task_type, prediction.label_ids, prediction.predictions, task.labels)["auroc"]}

    class KeepBest(TrainerCallback):
        """Model selection on validation AUROC: keep a CPU copy of the trainable weights of the
        best epoch and put it back at the end (adapters + head are small; no checkpoints on disk)."""

        def __init__(self):
            self.best_auroc, self.best_epoch, self.best_state, self.history = -math.inf, None, None, []

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            auroc = (metrics or {}).get("eval_auroc")
            self.history.append({"epoch": state.epoch, "val_auroc": auroc})
            if auroc is not None and not math.isnan(auroc) and auroc > self.best_auroc:
                self.best_auroc, self.best_epoch = auroc, state.epoch
                self.best_state = {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}

        def restore(self, model) -> None:
            if self.best_state is None:
                return
            params = dict(model.named_parameters())
            with torch.no_grad():
                for name, value in self.best_state.items():
                    params[name].copy_(value.to(params[name].device))

    keep_best = KeepBest()
    trainer = TaskLossTrainer(
        model=clf.model,
        args=training_arguments(config.train, run_dir / ".trainer", progress, eval_strategy="epoch",
                                per_device_eval_batch_size=config.eval.batch_size, label_names=["labels"]),
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=PadCollator(clf.tokenizer, multilabel),
        compute_metrics=compute_metrics,
        callbacks=[keep_best, *callbacks],  # keep_best first: it records the epoch before a sweep may prune
    )
    return silence_trainer(trainer, progress), keep_best


def probabilities(task_type: str, logits: np.ndarray) -> np.ndarray:
    """Sigmoid per label for multilabel tasks; softmax over classes otherwise."""
    return sigmoid(logits) if task_type == "multilabel" else softmax(logits)


def write_predictions(path: Path, task: TaskData, split: str, logits: np.ndarray) -> None:
    frame = task.splits[split]
    probs = probabilities(task.task_type, logits)
    columns = {"id": frame["id"], "label": frame["label"]}
    columns.update({f"p_{label}": probs[:, i] for i, label in enumerate(task.labels)})
    pd.DataFrame(columns).to_csv(path, index=False, float_format="%.7g")


def bootstrap_fields(task: TaskData, split: str, logits: np.ndarray, n_resamples: int, seed: int) -> dict:
    """{"auroc_ci": [lo, hi], "bootstrap": {...}} of a split: notes resampled in id order, one
    random stream per task (statistics.py), so `clinpeft report` redraws the same resamples."""
    from clinpeft.evaluation.bootstrap import bootstrap_auroc

    boot = bootstrap_auroc(task.task_type, task.targets(split), probabilities(task.task_type, logits),
                           ids=task.splits[split]["id"].tolist(), n_resamples=n_resamples, seed=seed, stream=task.name)
    return boot.fields()


def table3_row(variant: str, clinical_method: str | None, encoder_name: str | None = None) -> dict:
    """{"row": name} where `clinpeft report`'s default row name would mislead:
    - a clinical adapter that is not a LoRA, so it is not filed under the paper's "Clinical LoRA"
      rows: e.g. "+ Clinical Prompt Tuning (Frozen)";
    - an encoder (`encoder_name`: its display name): fully fine-tuned it is a baseline row of its own,
      named like the paper's ("BlueBERT"); head-only it is "BlueBERT (head only)".
    """
    if encoder_name is not None:
        return {"row": {"full": encoder_name, "head": f"{encoder_name} (head only)"}.get(variant, f"{encoder_name} + LoRA")}
    if clinical_method in (None, "lora", "full"):
        return {}
    state = "Trainable" if methods.variant(variant).trains_clinical else "Frozen"
    return {"row": f"+ Clinical {methods.method_display_name(clinical_method)} ({state})"}


def check_encoder_length(base_path: Path, max_seq_len: int) -> None:
    """An encoder has learned position embeddings for max_position_embeddings tokens only (BERT: 512,
    [CLS] and [SEP] included); longer inputs would index past them."""
    import json

    limit = json.loads((base_path / "config.json").read_text()).get("max_position_embeddings")
    if limit and max_seq_len > limit:
        raise ClinpeftError(f"task.max_seq_len={max_seq_len}: the encoder {base_path} has {limit} positions; "
                            f"set task.max_seq_len={limit} or less")


def run(config: FinetuneConfig, task: TaskData, clinical, run_dir: Path, progress: bool = True,
        callbacks: list | tuple = ()) -> dict:
    from transformers import set_seed

    started = time.time()
    set_seed(config.train.seed)

    # --- setup: the variant's model. A full clinical model (peft.method=full) is not an adapter but a
    # new base model: clinical_frozen is then the head on it, clinical_frozen+downstream a LoRA on it.
    variant, clinical_method = config.variant, clinical.method if clinical else None
    clinical_dir, base_name = (str(clinical.path) if clinical else None), None
    if clinical_method == "full":
        base_path, variant = clinical.path, full_model_variant(config.variant)
        base_name = f"Clinical {Path(clinical.base_model or 'model').name}"  # Table 3's "Clinical LLaMA"
        print(f"clinical_adapter {clinical.path} is a full clinical model: it is the base model of this run "
              f"(model.base is not loaded), variant {config.variant} -> {variant}")
        clinical = None
    else:
        base_path = resolve_base(config.model.base, progress=progress)
    base_name = config.model.name or base_name or base_path.name
    encoder = is_encoder(base_path)
    if encoder:
        check_encoder_length(base_path, config.task.max_seq_len)
    clf = build_classifier(base_path, task.task_type, task.num_labels, variant, clinical, config.lora,
                           config.model.dtype, config.model.attn_implementation, config.model.pooling)
    trainable, total = count_parameters(clf.model)

    # --- fit, selecting the epoch by validation AUROC
    trainer, keep_best = make_trainer(clf, task, config, run_dir, progress, callbacks)
    fit_started = time.time()
    trainer.train()
    train_time = time.time() - fit_started
    keep_best.restore(clf.model)

    # --- test
    val_logits = predict_logits(clf, task.splits["val"]["text"].tolist(), config.task.max_seq_len,
                                config.eval.batch_size, progress, "val")
    test_logits = predict_logits(clf, task.splits["test"]["text"].tolist(), config.task.max_seq_len,
                                 config.eval.batch_size, progress, "test")
    val_metrics = task_metrics(task.task_type, task.targets("val"), val_logits, task.labels)
    test_metrics = task_metrics(task.task_type, task.targets("test"), test_logits, task.labels)
    if config.eval.bootstrap_resamples:  # "auroc_ci": 95% bootstrap interval over the split's notes
        for split, logits, split_metrics in (("val", val_logits, val_metrics), ("test", test_logits, test_metrics)):
            split_metrics.update(bootstrap_fields(task, split, logits, config.eval.bootstrap_resamples,
                                                  config.eval.bootstrap_seed))

    # --- save: the bundle, predictions, metrics
    save_bundle(clf, run_dir, {
        "base_model": str(base_path),
        "variant": variant,
        "task": task.name,
        "task_type": task.task_type,
        "labels": task.labels,
        "max_seq_len": config.task.max_seq_len,
        "padding_side": clf.tokenizer.padding_side,
        "clinical_adapter": clinical_dir,
    })
    (run_dir / "labels.txt").write_text("\n".join(task.labels) + "\n")
    write_predictions(run_dir / "predictions.csv", task, "test", test_logits)
    shutil.rmtree(run_dir / ".trainer", ignore_errors=True)

    metrics = {
        "kind": "finetune",
        "task": task.name,
        "task_type": task.task_type,
        "variant": variant,  # differs from config.variant only on a full clinical model (see above)
        "base_model": str(base_path),
        "base_model_name": base_name,
        "model_kind": "encoder" if encoder else "decoder",
        "pooling": "cls" if encoder else config.model.pooling,  # what the head read: last / mean token(s), [CLS]
        "clinical_adapter": clinical_dir,
        "clinical_method": clinical_method,
        "lora_flavours": methods.lora_flavours(config.lora) if methods.variant(variant).downstream_lora else [],
        **table3_row(variant, clinical_method, base_name if encoder else None),
        "val": val_metrics,
        "test": test_metrics,
        "best_epoch": keep_best.best_epoch,
        "val_history": keep_best.history,
        "n_train": len(task.splits["train"]),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_time_s": train_time,
        "wall_time_s": time.time() - started,
        **device_summary(),
        "clinpeft_version": __version__,
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics
