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

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clinpeft import methods
from clinpeft.bases import resolve_base
from clinpeft.config import FinetuneConfig, save_config
from clinpeft.data.long_notes import LongNotes, encode_notes
from clinpeft.data.tasks import (
    TaskData,
    check_classes,
    data_provenance,
    extra_columns,
    load_task,
    unseen_classes,
    unseen_warning,
)
from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.clinical import operating_point
from clinpeft.evaluation.metrics import probabilities
from clinpeft.modeling.adapters import ClinicalAdapter, check_variant, find_clinical_adapter, full_model_variant
from clinpeft.modeling.base import (
    base_display_name,
    base_fingerprint,
    base_record,
    check_base,
    check_positions,
    check_quantization,
    count_parameters,
    is_encoder,
)
from clinpeft.modeling.classifier import Classifier, build_classifier, save_bundle, score_notes
from clinpeft.modeling.pooling import check_pooling
from clinpeft.run_files import LABELS, METRICS, PREDICTIONS, PROBE_DIR, VAL_PREDICTIONS
from clinpeft.rundir import (
    atomic_run_dir,
    check_free_space,
    checkpoint_dir,
    expected_run_bytes,
    is_main_process,
    write_json,
)
from clinpeft.training.classification import (
    KeepBest,
    make_trainer,
    split_metrics,
    truncation_lines,
    write_predictions,
)
from clinpeft.training.fit import Fitted, fit, run_record
from clinpeft.training.precision import Precision, check_precision, run_precision
from clinpeft.training.probe import (
    Probe,
    final_train_loss,
    fit_probe,
    guard,
    init_head_from_probe,
    prior_loss,
    split_features,
)
from clinpeft.training.runtime import loss_curve, set_threads
from clinpeft.training.trainer import check_kernels, check_sharding


def main(config: FinetuneConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
         callbacks: list | tuple = (), restart: bool = False) -> dict:
    """Run one fine-tuning job into `out` (created whole, or not at all). Returns metrics.json.

    Unfinished, it lives in `OUT.partial/` with a checkpoint per epoch; the same call resumes it
    (`restart`: discard it). callbacks: extra transformers TrainerCallbacks (a sweep's pruning reads
    the per-epoch val AUROC)."""
    check_pooling(config.model.base, config.model.pooling)  # before any work: encoders read [CLS]
    check_quantization(config.model.quantization)  # before any work: 4bit/8bit need a GPU and bitsandbytes
    # before any work: fp16 on a CPU, flash attention on fp32 weights
    check_precision(config.train.precision, config.model.dtype, config.model.attn_implementation)
    check_kernels(config.train)  # train.compile on a CPU: a C++ compiler
    task = load_task(config.task.path, config.task.name, config.task.kind, config.task.max_examples)
    check_classes(task, Path(config.task.path))  # one class in train or val: refused before training
    if unseen_warning(unseen_classes(task), config.task.path) and is_main_process():
        print(unseen_warning(unseen_classes(task), config.task.path), file=sys.stderr)
    clinical = clinical_adapter(config)
    if clinical is None or clinical.method != "full":  # a full clinical model replaces model.base
        check_base(config.model.base)  # before any work: the folder, or the GGUF file's header
    # train.fsdp: several processes; LoRA (the downstream one, on a LoRA or full clinical model) or full
    check_sharding(config.train, clinical.method if clinical else None, config.model.quantization)
    with atomic_run_dir(out, overwrite, resumable=True, config=config.model_dump(mode="json"),
                        restart=restart) as run_dir:
        save_config(config, run_dir)
        return run(config, task, clinical, run_dir, progress, callbacks, checkpoints=checkpoint_dir(out))


def summary(result: dict, out: str | Path) -> list[str]:
    """What `clinpeft finetune` prints: the task, the variant and its val and test AUROC."""
    lines = [f"{out}: {result['task']} {result['variant']}: val AUROC {result['val']['auroc']:.4f}, "
             f"test AUROC {result['test']['auroc']:.4f}"]
    cut = truncation_lines(result.get("truncation", {}), result.get("long_notes", {}))
    probe = result.get("probe")
    if probe:
        lines.append(f"linear probe of the frozen model: val AUROC {probe['val']:.4f}, test AUROC {probe['test']:.4f}")
    return lines + cut + support_warnings(result) + list((result.get("guard") or {}).get("warnings", []))


def support_warnings(result: dict) -> list[str]:
    """Console lines for classes absent from a split or with fewer than min_positives examples (metrics.json's
    class_support): the aggregate AUROC leaves them out or rests on a handful of notes."""
    lines = []
    for split in ("val", "test"):
        support = (result.get(split) or {}).get("class_support") or {}
        if support.get("absent"):
            lines.append(f"warning: {split}: class(es) {', '.join(support['absent'])} absent; "
                         "left out of the macro AUROC")
        if support.get("few"):
            lines.append(f"warning: {split}: {len(support['few'])} class(es)/label(s) with fewer than "
                         f"{support['min_positives']} examples ({', '.join(support['few'][:10])}); "
                         "their AUROC is noise")
    return lines


@dataclass
class Setup:
    """What a fine-tuning run stands on: the base model, the variant as it runs, the clinical adapter."""

    base_path: Path  # model.base resolved, or a full clinical model (then the base of this run)
    variant: str  # differs from config.variant only on a full clinical model (see variant_base)
    clinical: ClinicalAdapter | None  # the adapter stacked on the base (None: none, or a full clinical model)
    base_name: str  # Table 3's name of the base model
    clinical_dir: str | None  # clinical_adapter as given (a full clinical model too)
    clinical_method: str | None
    encoder: bool  # a BERT-family encoder (reads [CLS]) rather than a decoder


def run(config: FinetuneConfig, task: TaskData, clinical: ClinicalAdapter | None, run_dir: Path,
        progress: bool = True, callbacks: list | tuple = (), checkpoints: Path | None = None) -> dict:
    from transformers import set_seed

    started = time.time()
    set_seed(config.train.seed)
    threads = set_threads(config.train.threads)  # this process's share of the CPU cores
    setup = set_up(config, clinical, progress)
    precision = run_precision(config.train.precision, config.model.dtype, setup.base_path)  # once, for the whole run
    long_notes = LongNotes.from_task(config.task)  # how notes are cut into windows: training, probe, scoring, bundle

    clf = build_classifier(setup.base_path, task.task_type, task.num_labels, setup.variant, setup.clinical,
                           config.lora, precision.weights, config.model.attn_implementation, config.model.pooling,
                           config.model.quantization, init_notes=task.splits["train"]["text"].tolist())
    params = count_parameters(clf.model)
    encoded = {split: encode_notes(clf.tokenizer, task.splits[split]["text"].tolist(), long_notes)
               for split in ("train", "val", "test")}  # each split tokenized once; truncation counted from it
    truncation = {split: notes.truncation() for split, notes in encoded.items()}
    fingerprint = base_fingerprint(clf.model)  # before training: identifies the base model's weights
    check_free_space(run_dir, expected_run_bytes(*params, config.train, setup.variant == "full"), "this run")

    probe_started = time.time()  # the frozen model's features -> logistic regression: the floor, LP-FT's head
    probe = linear_probe(clf, task, config, encoded, progress)
    probe_record = probe.to_json() if probe is not None else None  # metrics.json's "probe": {val, test, C, ...}
    probe_time = time.time() - probe_started
    fitted, keep_best = train(clf, task, config, encoded, long_notes, precision, callbacks,
                              checkpoints or run_dir / "checkpoints", run_dir, progress)
    clf.model = fitted.model
    keep_best.restore(clf.model)  # the epoch selected by validation AUROC
    del encoded["train"]  # the Trainer held it as Arrow; as Python lists of token ids it is the largest object here

    logits, scores = measure(clf, task, config, encoded, long_notes, progress)
    checks = guard(scores["val"]["auroc"], probe_record, final_train_loss(loss_curve(fitted.trainer.state),
                                                                    fitted.training_loss),
                   prior_loss(task.task_type, task.targets("train"), task.num_labels),
                   head_init=config.train.head_init, pooling=clf.pooling)
    save(clf, run_dir, task, config, setup, long_notes, logits, probe)
    metrics = {**record(config, task, setup, fingerprint, long_notes), **scores,
               "truncation": truncation,
               "best_epoch": keep_best.best_epoch, "val_history": keep_best.history,
               "probe": probe_record,  # the linear probe of the frozen model this run started from: {val, test, C, ...}
               "guard": checks,  # fine-tuning below that probe, or a training loss above the label prior's: warnings
               "head_init": config.train.head_init, "probe_time_s": probe_time,
               **run_record(fitted, config.train, precision, threads, params, started,
                            config.model.attn_implementation)}
    write_json(run_dir / METRICS, metrics)
    return metrics


def set_up(config: FinetuneConfig, clinical: ClinicalAdapter | None, progress: bool) -> Setup:
    """Set-up: the base model (a full clinical model replaces model.base) and the variant as it runs."""
    clinical_dir, clinical_method = (str(clinical.path), clinical.method) if clinical else (None, None)
    base_path, variant, clinical, base_name = variant_base(config, clinical, progress)
    check_positions(base_path, config.task.max_seq_len, "task.max_seq_len")
    return Setup(base_path, variant, clinical, base_name, clinical_dir, clinical_method, is_encoder(base_path))


def train(clf: Classifier, task: TaskData, config: FinetuneConfig, encoded: dict, long_notes: LongNotes,
          precision: Precision, callbacks: list | tuple, checkpoints: Path, run_dir: Path,
          progress: bool) -> tuple[Fitted, KeepBest]:
    """Fit: the HF Trainer with the task's loss, validation AUROC every epoch (the best epoch kept), from the
    last checkpoint of an interrupted run if any."""
    trainer, keep_best, checkpointing = make_trainer(clf, task, config, checkpoints, progress, callbacks,
                                                     precision.train, encoded, long_notes)

    def before_train(resume: str | None) -> None:
        keep_best.load(resume)  # a resumed run continues the selection where it stopped
        if config.train.head_init == "probe" and resume is None:
            trainer.evaluate()  # LP-FT's start is a fitted model: it competes for the kept epoch, as epoch 0

    return fit(trainer, checkpointing, clf.model, checkpoints, run_dir, progress, before_train), keep_best


def measure(clf: Classifier, task: TaskData, config: FinetuneConfig, encoded: dict, long_notes: LongNotes,
            progress: bool) -> tuple[dict, dict]:
    """Measure: ({split: logits}, {split: metrics.json entry}) of the kept epoch on val and test ("auroc_ci": 95%
    bootstrap interval over the notes); binary tasks: the threshold at eval.specificity on val, applied to test."""
    logits, scores = {}, {}
    for split in ("val", "test"):
        logits[split] = score_notes(clf, encoded[split], long_notes, config.eval.batch_size, progress, split)
        scores[split] = split_metrics(task, split, logits[split], config.eval.bootstrap_resamples,
                                      config.eval.bootstrap_seed, config.eval.min_positives)
    if task.task_type == "binary":
        scores["test"]["operating_point"] = binary_operating_point(task, logits["val"], logits["test"], config)
    return logits, scores


def save(clf: Classifier, run_dir: Path, task: TaskData, config: FinetuneConfig, setup: Setup,
         long_notes: LongNotes, logits: dict, probe: Probe | None) -> None:
    """Save: the bundle (adapters, head, bundle.json), labels.txt, the val and test predictions, and the linear
    probe's test predictions (PROBE_DIR/) when it was scored."""
    save_bundle(clf, run_dir, {
        "base_model": str(setup.base_path),
        "variant": setup.variant,
        "task": task.name,
        "task_type": task.task_type,
        "labels": task.labels,
        "max_seq_len": config.task.max_seq_len,
        "long_notes": long_notes.to_json(),  # evaluate / predict cut notes the same way
        "padding_side": clf.tokenizer.padding_side,
        "quantization": config.model.quantization,  # evaluate reloads the base the same way
        "clinical_adapter": setup.clinical_dir,
        # a GGUF base is rebuilt from base_spec where the folder is gone
        **base_record(config.model.base, setup.base_path),
    })
    if clf.initial_adapter is not None:  # the untrained pissa/olora adapter, read by the conversion just done
        shutil.rmtree(clf.initial_adapter.parent, ignore_errors=True)
    (run_dir / LABELS).write_text("\n".join(task.labels) + "\n")
    extras = extra_columns(task.splits["test"])
    write_predictions(run_dir / PREDICTIONS, task, "test", logits["test"], extras)
    write_predictions(run_dir / VAL_PREDICTIONS, task, "val", logits["val"], extras)
    if probe is not None:  # the probe's own test predictions: its Table 3 row gets an interval and p-values
        (run_dir / PROBE_DIR).mkdir(exist_ok=True)
        (run_dir / PROBE_DIR / LABELS).write_text("\n".join(task.labels) + "\n")
        write_predictions(run_dir / PROBE_DIR / PREDICTIONS, task, "test", probe.test_logits, extras)


def record(config: FinetuneConfig, task: TaskData, setup: Setup, fingerprint: str, long_notes: LongNotes) -> dict:
    """metrics.json's description of the run: task, variant, base model, data, adapters."""
    downstream_lora = methods.variant(setup.variant).downstream_lora
    return {
        "kind": "finetune",
        "task": task.name,
        "task_type": task.task_type,
        "variant": setup.variant,  # differs from config.variant only on a full clinical model (see variant_base)
        "base_model": str(setup.base_path),
        "base_model_name": setup.base_name,
        "base_fingerprint": fingerprint,
        **base_record(config.model.base, setup.base_path),
        "data": data_provenance(config.task.path, task.splits),  # file hashes, rows, cohort rules: the model card
        "model_kind": "encoder" if setup.encoder else "decoder",
        "pooling": "cls" if setup.encoder else config.model.pooling,  # what the head read: last / mean, [CLS]
        "clinical_adapter": setup.clinical_dir,
        "clinical_method": setup.clinical_method,
        "lora_flavours": methods.lora_flavours(config.lora) if downstream_lora else [],
        # the downstream LoRA's peft init_lora_weights (True: peft's default)
        "init_lora_weights": config.lora.init_lora_weights if downstream_lora else None,
        **table3_row(setup.variant, setup.clinical_method, setup.base_name if setup.encoder else None),
        "long_notes": long_notes.to_json(),
        "n_train": len(task.splits["train"]),
        "unseen_in_train": unseen_classes(task),  # {split: [labels]} in val/test with no train example
    }


def linear_probe(clf: Classifier, task: TaskData, config: FinetuneConfig, encoded: dict,
                 progress: bool) -> Probe | None:
    """The probe behind metrics.json's "probe" (training/probe.py; None with eval.probe=false), and with
    train.head_init=probe the head set to the probe of the features it reads (LP-FT). One forward pass per split,
    before training: the features of the frozen base (+ clinical adapter), a fresh downstream LoRA being an
    identity."""
    if not config.eval.probe and config.train.head_init != "probe":
        return None
    splits = ("train", "val", "test") if config.eval.probe else ("train", "val")
    features = split_features(clf, {split: encoded[split] for split in splits}, config.eval.batch_size, progress)
    targets = {split: task.targets(split) for split in ("train", "val", "test")}
    if not config.eval.probe:  # only LP-FT: score test on val's features (never read)
        features["test"] = features["val"]
        targets["test"] = targets["val"]
    fitted = fit_probe(task.task_type, task.labels, {s: f.mean for s, f in features.items()}, targets)
    if config.train.head_init == "probe":
        init_head_from_probe(clf, task.task_type, task.num_labels, features["train"].head, targets["train"], fitted.c)
    return fitted if config.eval.probe else None


def clinical_adapter(config: FinetuneConfig) -> ClinicalAdapter | None:
    """The clinical adapter the variant stacks on (None for head, lora, full), checked before any work."""
    if not methods.variant(config.variant).needs_clinical:
        return None
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
    return clinical


def variant_base(config: FinetuneConfig, clinical: ClinicalAdapter | None,
                 progress: bool) -> tuple[Path, str, ClinicalAdapter | None, str]:
    """(base model directory, variant, clinical adapter, base model name for Table 3) of a run.

    A full clinical model (peft.method=full) is not an adapter but a new base model: clinical_frozen
    is then the head on it, clinical_frozen+downstream a LoRA on it (Variant.on_full_model).
    """
    if clinical is not None and clinical.method == "full":
        variant = full_model_variant(config.variant)
        print(f"clinical_adapter {clinical.path} is a full clinical model: it is the base model of this run "
              f"(model.base is not loaded), variant {config.variant} -> {variant}")
        base_name = config.model.name or f"Clinical {Path(clinical.base_model or 'model').name}"  # "Clinical LLaMA"
        return clinical.path, variant, None, base_name
    base_path = resolve_base(config.model.base, progress=progress)
    return base_path, config.variant, clinical, config.model.name or base_display_name(base_path)


def binary_operating_point(task: TaskData, val_logits: np.ndarray, test_logits: np.ndarray,
                           config: FinetuneConfig) -> dict:
    """evaluation.clinical.operating_point of P(class 1), or {"error": why} (e.g. no negative in val)."""
    try:
        return operating_point(task.targets("val"), probabilities("binary", val_logits)[:, -1],
                               task.targets("test"), probabilities("binary", test_logits)[:, -1],
                               config.eval.specificity)
    except ClinpeftError as exc:
        return {"error": str(exc)}


def table3_row(variant: str, clinical_method: str | None, encoder_name: str | None = None) -> dict:
    """{"row": name} where `clinpeft report`'s default row name would mislead:
    - a clinical adapter that is not a LoRA, so it is not filed under the paper's "Clinical LoRA"
      rows: e.g. "+ Clinical Prompt Tuning (Frozen)";
    - an encoder (`encoder_name`: its display name): fully fine-tuned it is a baseline row of its own,
      named like the paper's ("BlueBERT"); head-only it is "BlueBERT (head only)".
    """
    if encoder_name is not None:
        rows = {"full": encoder_name, "head": f"{encoder_name} (head only)"}
        return {"row": rows.get(variant, f"{encoder_name} + LoRA")}
    if clinical_method in (None, "lora", "full"):
        return {}
    state = "Trainable" if methods.variant(variant).trains_clinical else "Frozen"
    return {"row": f"+ Clinical {methods.method_display_name(clinical_method)} ({state})"}
