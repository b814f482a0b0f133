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
from pathlib import Path

import numpy as np

from clinpeft import __version__
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
from clinpeft.modeling import methods
from clinpeft.modeling.adapters import ClinicalAdapter, check_variant, find_clinical_adapter, full_model_variant
from clinpeft.modeling.base import (
    base_display_name,
    base_fingerprint,
    base_record,
    check_attention,
    check_base,
    check_positions,
    check_quantization,
    count_parameters,
    device_summary,
    is_encoder,
    resolve_base,
    torch_dtype,
)
from clinpeft.modeling.classifier import Classifier, build_classifier, save_bundle, score_notes
from clinpeft.modeling.pooling import check_pooling
from clinpeft.rundir import (
    atomic_run_dir,
    check_free_space,
    checkpoint_dir,
    expected_run_bytes,
    is_main_process,
    write_json,
)
from clinpeft.training.classification import make_trainer, split_metrics, truncation_lines, write_predictions
from clinpeft.training.common import (
    check_kernels,
    check_sharding,
    end_mixed_precision,
    hidden_size_of,
    loss_curve,
    resolve_precision,
    resume_point,
    set_threads,
)
from clinpeft.training.probe import (
    Probe,
    final_train_loss,
    fit_probe,
    guard,
    init_head_from_probe,
    note_features,
    prior_loss,
)


def main(config: FinetuneConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True,
         callbacks: list | tuple = (), restart: bool = False) -> dict:
    """Run one fine-tuning job into `out` (created whole, or not at all). Returns metrics.json.

    Unfinished, it lives in `OUT.partial/` with a checkpoint per epoch; the same call resumes it
    (`restart`: discard it). callbacks: extra transformers TrainerCallbacks (a sweep's pruning reads
    the per-epoch val AUROC)."""
    check_pooling(config.model.base, config.model.pooling)  # before any work: encoders read [CLS]
    check_quantization(config.model.quantization)  # before any work: 4bit/8bit need a GPU and bitsandbytes
    resolve_precision(config.train.precision)  # before any work: fp16 needs a GPU
    check_attention(config.model.attn_implementation, torch_dtype(config.model.dtype))
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


def run(config: FinetuneConfig, task: TaskData, clinical: ClinicalAdapter | None, run_dir: Path,
        progress: bool = True, callbacks: list | tuple = (), checkpoints: Path | None = None) -> dict:
    from transformers import set_seed

    started = time.time()
    set_seed(config.train.seed)
    threads = set_threads(config.train.threads)  # this process's share of the CPU cores

    # --- setup: the variant's adapters and the head on the base model
    clinical_dir, clinical_method = (str(clinical.path), clinical.method) if clinical else (None, None)
    base_path, variant, clinical, base_name = variant_base(config, clinical, progress)
    encoder = is_encoder(base_path)
    check_positions(base_path, config.task.max_seq_len, "task.max_seq_len")
    clf = build_classifier(base_path, task.task_type, task.num_labels, variant, clinical, config.lora,
                           config.model.dtype, config.model.attn_implementation, config.model.pooling,
                           config.model.quantization, init_notes=task.splits["train"]["text"].tolist())
    trainable, total = count_parameters(clf.model)
    train_cut = encode_notes(clf.tokenizer, task.splits["train"]["text"].tolist(),
                             LongNotes.from_task(config.task)).truncation()
    fingerprint = base_fingerprint(clf.model)  # before training: identifies the base model's weights
    check_free_space(run_dir, expected_run_bytes(trainable, total, config.train, variant == "full"), "this run")

    # --- probe: the frozen model's features -> logistic regression: the floor to clear, and LP-FT's head
    probe_started = time.time()
    fitted_probe = linear_probe(clf, task, config, progress)
    probe = fitted_probe.to_json() if fitted_probe is not None else None
    probe_time = time.time() - probe_started

    # --- fit, selecting the epoch by validation AUROC
    checkpoints = checkpoints or run_dir / "checkpoints"
    precision = resolve_precision(config.train.precision, hidden_size_of(base_path))
    trainer, keep_best, checkpointing = make_trainer(clf, task, config, checkpoints, progress, callbacks, precision)
    resume = resume_point(checkpoints)  # an interrupted run's last checkpoint: same data order, schedule, RNG
    resumed_from = int(Path(resume).name.split("-")[-1]) if resume else 0
    checkpointing.resume = resume
    keep_best.load(resume)
    if resume and progress:
        print(f"resuming from {resume} (optimizer step {resumed_from})")
    fit_started = time.time()
    if config.train.head_init == "probe" and resume is None:
        trainer.evaluate()  # LP-FT's start is a fitted model: it competes for the kept epoch, as epoch 0
    train_output = trainer.train(resume_from_checkpoint=resume)
    end_mixed_precision(trainer)  # scores below in the model's dtype, as evaluate/predict do
    clf.model = trainer.consolidated(clf.model)  # FSDP: the whole trained model on every process (else unchanged)
    train_time = time.time() - fit_started
    checkpointing.raise_if_interrupted(trainer.state, run_dir)
    keep_best.restore(clf.model)

    # --- test: AUROC of the kept epoch on val and test ("auroc_ci": 95% bootstrap interval over the notes)
    val_logits, val_metrics, val_cut = score_split(clf, task, "val", config, progress)
    test_logits, test_metrics, test_cut = score_split(clf, task, "test", config, progress)
    if task.task_type == "binary":  # threshold at eval.specificity on val, applied to test
        test_metrics["operating_point"] = binary_operating_point(task, val_logits, test_logits, config)
    curve = loss_curve(trainer.state)
    checks = guard(val_metrics["auroc"], probe, final_train_loss(curve, train_output.training_loss),
                   prior_loss(task.task_type, task.targets("train"), task.num_labels))

    # --- save: the bundle, predictions, metrics
    save_bundle(clf, run_dir, {
        "base_model": str(base_path),
        "variant": variant,
        "task": task.name,
        "task_type": task.task_type,
        "labels": task.labels,
        "max_seq_len": config.task.max_seq_len,
        "long_notes": LongNotes.from_task(config.task).to_json(),  # evaluate / predict cut notes the same way
        "padding_side": clf.tokenizer.padding_side,
        "quantization": config.model.quantization,  # evaluate reloads the base the same way
        "clinical_adapter": clinical_dir,
        **base_record(config.model.base, base_path),  # a GGUF base is rebuilt from base_spec where the folder is gone
    })
    if clf.initial_adapter is not None:  # the untrained pissa/olora adapter, read by the conversion just done
        shutil.rmtree(clf.initial_adapter.parent, ignore_errors=True)
    (run_dir / "labels.txt").write_text("\n".join(task.labels) + "\n")
    extras = extra_columns(task.splits["test"])
    write_predictions(run_dir / "predictions.csv", task, "test", test_logits, extras)
    write_predictions(run_dir / "predictions_val.csv", task, "val", val_logits, extras)
    if fitted_probe is not None:  # the probe's own test predictions: its Table 3 row gets an interval and p-values
        (run_dir / "probe").mkdir(exist_ok=True)
        (run_dir / "probe" / "labels.txt").write_text("\n".join(task.labels) + "\n")
        write_predictions(run_dir / "probe" / "predictions.csv", task, "test", fitted_probe.test_logits, extras)

    metrics = {
        "kind": "finetune",
        "task": task.name,
        "task_type": task.task_type,
        "variant": variant,  # differs from config.variant only on a full clinical model (see variant_base)
        "base_model": str(base_path),
        "base_model_name": base_name,
        "base_fingerprint": fingerprint,
        **base_record(config.model.base, base_path),
        "data": data_provenance(config.task.path, task.splits),  # file hashes, rows, cohort rules: the model card
        "model_kind": "encoder" if encoder else "decoder",
        "pooling": "cls" if encoder else config.model.pooling,  # what the head read: last / mean token(s), [CLS]
        "clinical_adapter": clinical_dir,
        "clinical_method": clinical_method,
        "lora_flavours": methods.lora_flavours(config.lora) if methods.variant(variant).downstream_lora else [],
        # the downstream LoRA's peft init_lora_weights (True: peft's default)
        "init_lora_weights": config.lora.init_lora_weights if methods.variant(variant).downstream_lora else None,
        **table3_row(variant, clinical_method, base_name if encoder else None),
        "long_notes": LongNotes.from_task(config.task).to_json(),
        "truncation": {"train": train_cut, "val": val_cut, "test": test_cut},
        "val": val_metrics,
        "test": test_metrics,
        "best_epoch": keep_best.best_epoch,
        "val_history": keep_best.history,
        "n_train": len(task.splits["train"]),
        "unseen_in_train": unseen_classes(task),  # {split: [labels]} in val/test with no train example
        "optimizer_steps": trainer.state.global_step,  # in all, counted once across resumptions
        "resumed_from_step": resumed_from,  # 0: trained in one go
        "fsdp": trainer.sharding,  # sharded training: FSDP version, processes, units per layer class (None: not)
        "loss_curve": curve,
        "probe": probe,  # the linear probe of the frozen model this run started from: {val, test, C, ...}
        "guard": checks,  # fine-tuning below that probe, or a training loss above the label prior's: warnings
        "head_init": config.train.head_init,
        "probe_time_s": probe_time,
        "checkpoints_written": checkpointing.saves,
        "checkpoint_time_s": checkpointing.save_seconds,
        "trainable_params": trainable,
        "total_params": total,
        "trainable_percent": 100.0 * trainable / total,
        "train_time_s": train_time,
        "wall_time_s": time.time() - started,
        "cpu_threads": threads,
        "precision": precision,  # train.precision as resolved on this machine and model (auto -> fp32 or bf16)
        "kernels": {"attn_implementation": config.model.attn_implementation, "compile": config.train.compile},
        **device_summary(),
        "clinpeft_version": __version__,
    }
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def linear_probe(clf: Classifier, task: TaskData, config: FinetuneConfig, progress: bool) -> Probe | None:
    """The probe behind metrics.json's "probe" (training/probe.py; None with eval.probe=false), and with
    train.head_init=probe the head set to the probe of the features it reads (LP-FT). One forward pass per split,
    before training: the features of the frozen base (+ clinical adapter), a fresh downstream LoRA being an
    identity."""
    if not config.eval.probe and config.train.head_init != "probe":
        return None
    long_notes = LongNotes.from_task(config.task)
    splits = ("train", "val", "test") if config.eval.probe else ("train", "val")
    features = {split: note_features(clf, encode_notes(clf.tokenizer, task.splits[split]["text"].tolist(), long_notes),
                                     config.eval.batch_size, progress, f"probe features ({split})")
                for split in splits}
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


def score_split(clf: Classifier, task: TaskData, split: str, config: FinetuneConfig,
                progress: bool) -> tuple[np.ndarray, dict, dict]:
    """The split's logits (notes in file order), its metrics.json entry and its `truncation` entry."""
    long_notes = LongNotes.from_task(config.task)
    encoded = encode_notes(clf.tokenizer, task.splits[split]["text"].tolist(), long_notes)
    logits = score_notes(clf, encoded, long_notes, config.eval.batch_size, progress, split)
    metrics = split_metrics(task, split, logits, config.eval.bootstrap_resamples, config.eval.bootstrap_seed,
                            config.eval.min_positives)
    return logits, metrics, encoded.truncation()


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
