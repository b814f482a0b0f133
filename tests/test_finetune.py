"""`clinpeft finetune`: each Table 3 variant trains exactly what it should, and the bundle reloads."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from clinpeft import methods
from clinpeft.config import FinetuneConfig, load_config
from clinpeft.data.tasks import load_task
from clinpeft.methods import VARIANT_NAMES as VARIANTS
from clinpeft.modeling.adapters import CLINICAL, DOWNSTREAM, find_clinical_adapter
from clinpeft.modeling.classifier import build_classifier
from clinpeft.recipes import evaluate, finetune
from clinpeft.training.classification import make_trainer


def overrides(base, task_dir, **extra):
    items = {"model.base": base, "task.path": task_dir, "task.max_seq_len": 96, "train.batch_size": 8,
             "train.grad_accum": 1, "train.epochs": 1, "train.lr": 1e-2, "lora.r": 4, **extra}
    return [f"{k}={v}" for k, v in items.items()]


def classifier_for(variant, tiny_llama, clinical_run, num_labels=2, task_type="binary"):
    config = load_config(FinetuneConfig, None, [f"variant={variant}", "lora.r=4"])
    clinical = find_clinical_adapter(clinical_run) if methods.variant(variant).needs_clinical else None
    return build_classifier(tiny_llama, task_type, num_labels, variant, clinical, config.lora, "float32")


def owner(name):
    """Which piece a parameter belongs to: clinical / downstream adapter, head, or base."""
    if ".score." in f".{name}":
        return "head"
    for adapter in (CLINICAL, DOWNSTREAM):
        if f".{adapter}." in name and ".lora_" in name:
            return adapter
    return "base"


EXPECTED_TRAINABLE = {
    "head": {"head"},
    "lora": {"head", DOWNSTREAM},
    "clinical_frozen": {"head"},
    "clinical_frozen+downstream": {"head", DOWNSTREAM},
    "clinical_trainable": {"head", CLINICAL},
    "clinical_trainable+downstream": {"head", CLINICAL, DOWNSTREAM},
    "full": {"head", "base"},  # every weight of the base model
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_trains_exactly_its_adapters(variant, tiny_llama, clinical_run, synthetic_tasks, tmp_path):
    """Train a few steps through the real Trainer; trained pieces change, frozen ones stay bit-identical."""
    config = load_config(FinetuneConfig, None, overrides(tiny_llama, synthetic_tasks["mor"], variant=variant,
                                                        clinical_adapter=clinical_run, **{"train.max_steps": 3}))
    task = load_task(config.task.path)
    clf = classifier_for(variant, tiny_llama, clinical_run)
    before = {n: p.detach().clone() for n, p in clf.model.named_parameters()}
    trainer, _, _ = make_trainer(clf, task, config, tmp_path, progress=False)
    trainer.train()
    changed = {owner(n) for n, p in clf.model.named_parameters() if not torch.equal(before[n], p)}
    assert changed == EXPECTED_TRAINABLE[variant]
    for name, param in clf.model.named_parameters():  # every tensor of a trained piece moved
        if owner(name) in EXPECTED_TRAINABLE[variant]:
            assert not torch.equal(before[name], param), name
    present = {owner(n) for n, _ in clf.model.named_parameters()}
    assert present - {"base"} == {"head", *clf.adapters}  # no adapter beyond the variant's


def test_stacked_adapters_are_both_in_the_forward_pass(tiny_llama, clinical_run):
    """Switching either adapter off changes the logits: both really act (the published code's
    downstream LoRA was added but never activated)."""
    clf = classifier_for("clinical_trainable+downstream", tiny_llama, clinical_run)
    model = clf.model.eval()
    with torch.no_grad():  # downstream lora_B starts at zero: give it weights so it has an effect
        for name, param in model.named_parameters():
            if f".lora_B.{DOWNSTREAM}." in name:
                param.normal_(0, 0.5)
    assert clf.adapters == [CLINICAL, DOWNSTREAM]
    ids = torch.randint(4, 300, (2, 24))
    with torch.no_grad():
        both = model(input_ids=ids).logits
        model.base_model.set_adapter([CLINICAL])
        clinical_only = model(input_ids=ids).logits
        model.base_model.set_adapter([DOWNSTREAM])
        downstream_only = model(input_ids=ids).logits
    assert not torch.allclose(both, clinical_only)
    assert not torch.allclose(both, downstream_only)


@pytest.mark.parametrize("task", ["mor", "los", "diag"])
def test_finetune_writes_metrics_predictions_and_bundle(task, tiny_llama, clinical_run, synthetic_tasks, tmp_path):
    out = tmp_path / "run"
    config = load_config(FinetuneConfig, None, overrides(tiny_llama, synthetic_tasks[task],
                                                        variant="clinical_trainable+downstream",
                                                        clinical_adapter=clinical_run, **{"train.epochs": 2}))
    metrics = finetune.main(config, out, progress=False)
    aurocs = f"val AUROC {metrics['val']['auroc']:.4f}, test AUROC {metrics['test']['auroc']:.4f}"
    first, probe, cut, *warnings = finetune.summary(metrics, out)  # synthetic notes run past 96 tokens: all are cut
    assert first == f"{out}: {task} clinical_trainable+downstream: {aurocs}"
    assert probe == (f"linear probe of the frozen model: val AUROC {metrics['probe']['val']:.4f}, "
                     f"test AUROC {metrics['probe']['test']:.4f}")
    assert cut.startswith("note: notes longer than task.max_seq_len=96 were cut (truncate): train ")
    assert metrics["truncation"]["test"]["notes_cut"] == metrics["truncation"]["test"]["n_notes"]
    assert all(line.startswith("warning: ") for line in warnings)  # classes absent / under min_positives
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test"]["auroc"] == pytest.approx(metrics["test"]["auroc"])
    assert saved["task_type"] == {"mor": "binary", "los": "multiclass", "diag": "multilabel"}[task]
    assert 0.0 <= saved["test"]["auroc"] <= 1.0 and saved["best_epoch"] in (1.0, 2.0)
    assert [h["epoch"] for h in saved["val_history"]] == [1.0, 2.0]
    best = max(h["val_auroc"] for h in saved["val_history"])
    assert saved["val"]["auroc"] == pytest.approx(best, abs=1e-6)  # the best epoch was kept
    labels = (out / "labels.txt").read_text().split()
    predictions = pd.read_csv(out / "predictions.csv", dtype={"id": str, "label": str}, keep_default_na=False)
    test = pd.read_csv(synthetic_tasks[task] / "test.csv", dtype=str, keep_default_na=False)
    assert list(predictions["id"]) == list(test["id"])
    header = json.loads((out / "predictions_columns.json").read_text())
    assert list(header.values()) == labels  # spreadsheet-safe column -> label
    assert list(predictions.columns)[:3 + len(labels)] == ["id", "label", "predicted", *header]
    probs = predictions[list(header)].to_numpy()
    if task != "diag":  # argmax class
        assert list(predictions["predicted"].astype(str)) == [labels[j] for j in probs.argmax(axis=1)]
    clinical = saved["test"]["clinical"]
    assert {"auprc", "prevalence", "brier", "ece", "auprc_ci", "brier_ci", "ece_ci"} <= set(clinical)
    assert 0.0 <= clinical["auprc"] <= 1.0 and clinical["auprc_ci"][0] <= clinical["auprc_ci"][1]
    assert saved["test"]["class_support"]["min_positives"] == 5
    if task == "mor":
        op = saved["test"]["operating_point"]
        assert op["target_specificity"] == 0.9 and op["val"]["specificity"] >= 0.9
    if task == "los":
        assert set(clinical) >= {"auroc_ovo", "auroc_ovr"}
    if task == "diag":
        assert saved["test"]["n_labels_evaluated"] + saved["test"]["n_labels_skipped"] == len(labels)
    else:
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    for name in ("bundle.json", "head.safetensors", "adapters/clinical/adapter_model.safetensors",
                 "adapters/downstream/adapter_model.safetensors", "config.yaml"):
        assert (out / name).is_file(), name


def test_evaluate_reloads_the_bundle_and_reproduces_test_predictions(tiny_llama, clinical_run, synthetic_tasks,
                                                                     tmp_path, capsys):
    from clinpeft.cli import main

    run, out = tmp_path / "run", tmp_path / "eval"
    config = load_config(FinetuneConfig, None, overrides(tiny_llama, synthetic_tasks["diag"],
                                                        variant="clinical_frozen+downstream",
                                                        clinical_adapter=clinical_run))
    metrics = finetune.main(config, run, progress=False)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(synthetic_tasks["diag"] / "test.csv"), "--out", str(out),
                 "--quiet"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    line, *_ = evaluate.summary(again, out)  # then the note on cut notes
    assert line == f"{out}: diag AUROC {again['eval']['auroc']:.4f} on {again['eval']['n_examples']} notes"
    assert line in capsys.readouterr().out  # the line the CLI prints
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    original = pd.read_csv(run / "predictions.csv")
    rescored = pd.read_csv(out / "predictions.csv")
    columns = [c for c in original.columns if c.startswith("p_")]
    labels = (synthetic_tasks["diag"] / "labels.txt").read_text().split()
    assert len(columns) == len(labels)
    assert list(rescored["predicted"].fillna("")) == list(original["predicted"].fillna(""))
    np.testing.assert_allclose(rescored[columns].to_numpy(), original[columns].to_numpy(), atol=1e-5)


def test_frozen_clinical_adapter_is_saved_unchanged(tiny_llama, clinical_run, synthetic_tasks, tmp_path):
    from safetensors.torch import load_file

    config = load_config(FinetuneConfig, None, overrides(tiny_llama, synthetic_tasks["mor"],
                                                        variant="clinical_frozen+downstream",
                                                        clinical_adapter=clinical_run))
    finetune.main(config, tmp_path / "run", progress=False)
    original = load_file(clinical_run / "adapter" / "adapter_model.safetensors")
    saved = load_file(tmp_path / "run" / "adapters" / "clinical" / "adapter_model.safetensors")
    assert original.keys() == saved.keys()
    for key in original:
        assert torch.equal(original[key], saved[key]), key


def test_each_split_is_tokenized_once_per_run(tiny_llama, synthetic_tasks, tmp_path, monkeypatch):
    """Training, the linear probe, scoring and the truncation counts read one encoding per split: the notes of
    train, val and test go through the tokenizer once each (before: train twice, val three times, test twice)."""
    from clinpeft.data import long_notes

    calls = []
    encode = long_notes.encode_notes

    def counting(tokenizer, texts, settings):
        calls.append(len(texts))
        return encode(tokenizer, texts, settings)

    for module in ("clinpeft.recipes.finetune", "clinpeft.training.classification", "clinpeft.training.probe",
                   "clinpeft.modeling.classifier"):
        if hasattr(__import__(module, fromlist=["x"]), "encode_notes"):
            monkeypatch.setattr(f"{module}.encode_notes", counting)
    config = load_config(FinetuneConfig, None, overrides(tiny_llama, synthetic_tasks["mor"], variant="lora",
                                                        **{"eval.probe": "true", "eval.bootstrap_resamples": 0}))
    metrics = finetune.main(config, tmp_path / "run", progress=False)
    task = load_task(config.task.path)
    assert sorted(calls) == sorted(len(task.splits[s]) for s in ("train", "val", "test"))
    assert metrics["truncation"]["train"]["n_notes"] == len(task.splits["train"])
