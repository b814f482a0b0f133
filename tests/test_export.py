"""`clinpeft export`: the merged, standalone model gives the bundle's logits under a plain transformers load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clinpeft.cli import main
from clinpeft.config import DownstreamLoraSection
from clinpeft.modeling.adapters import find_clinical_adapter
from clinpeft.modeling.classifier import build_classifier, load_bundle, pad_batch, save_bundle
from clinpeft.modeling.methods import variant as variant_info
from clinpeft.recipes import export

NOTES = ["Chief complaint: shortness of breath.", "Pt s/p CABG, hx CHF, HTN.",
         "Discharge diagnosis: pneumonia, sepsis, acute kidney injury. Medications on admission: aspirin 81 mg daily."]
LABELS = ["401", "428", "V458"]


def make_bundle(run_dir, tiny_llama, clinical_run, variant, lora=None, pooling="last"):
    """A finetune bundle whose trainable weights were moved (a fresh LoRA's B is zero), saved by save_bundle."""
    lora = lora or DownstreamLoraSection(r=4, lora_dropout=0.0)
    clinical = find_clinical_adapter(clinical_run) if variant_info(variant).needs_clinical else None
    clf = build_classifier(tiny_llama, "multilabel", len(LABELS), variant, clinical, lora, "float32", pooling=pooling)
    torch.manual_seed(0)
    with torch.no_grad():
        for param in clf.model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.2)
    run_dir.mkdir(parents=True)
    save_bundle(clf, run_dir, {"base_model": str(tiny_llama), "variant": variant, "task": "diag",
                               "task_type": "multilabel", "labels": LABELS, "max_seq_len": 64,
                               "padding_side": clf.tokenizer.padding_side,
                               "clinical_adapter": str(clinical_run) if clinical else None})
    (run_dir / "labels.txt").write_text("\n".join(LABELS) + "\n")
    return run_dir


def bundle_logits(run_dir):
    clf, _ = load_bundle(run_dir, dtype="float32")
    batch = pad_batch(clf.tokenizer, clf.tokenizer(NOTES, truncation=True, max_length=64)["input_ids"])
    with torch.no_grad():
        return clf.model(**batch).logits


def exported_logits(out):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    batch = tokenizer(NOTES, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits, model


@pytest.mark.parametrize("variant", ["head", "lora", "clinical_frozen", "clinical_frozen+downstream",
                                     "clinical_trainable", "clinical_trainable+downstream", "full"])
def test_exported_model_reproduces_the_bundles_logits(variant, tiny_llama, clinical_run, tmp_path):
    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, variant)
    info = export.main(run, tmp_path / "out", progress=False)
    assert info["auto_class"] == "AutoModelForSequenceClassification"
    logits, model = exported_logits(tmp_path / "out")
    torch.testing.assert_close(logits, bundle_logits(run), atol=1e-5, rtol=1e-4)
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.pad_token_id is not None
    assert not any("lora" in name for name, _ in model.named_parameters())  # merged, no peft modules left
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("flavour", ["use_dora", "use_rslora"])
def test_dora_and_rslora_merge_too(flavour, tiny_llama, clinical_run, tmp_path):
    lora = DownstreamLoraSection(r=4, lora_dropout=0.0, **{flavour: True})
    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, "clinical_trainable+downstream", lora)
    export.main(run, tmp_path / "out", progress=False)
    torch.testing.assert_close(exported_logits(tmp_path / "out")[0], bundle_logits(run), atol=1e-5, rtol=1e-4)


def test_bf16_export_is_close(tiny_llama, clinical_run, tmp_path):
    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, "lora")
    export.main(run, tmp_path / "out", dtype="bf16", progress=False)
    logits, model = exported_logits(tmp_path / "out")
    assert next(model.parameters()).dtype == torch.bfloat16
    torch.testing.assert_close(logits.float(), bundle_logits(run), atol=0.1, rtol=0.05)


def test_pretraining_run_exports_a_causal_lm(tiny_llama, clinical_run, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert main(["export", str(clinical_run), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer(NOTES[2], return_tensors="pt")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama),
                                        find_clinical_adapter(clinical_run).path).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**ids).logits, adapted(**ids).logits, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", ["lora", "clinical_frozen+downstream"])
def test_mean_pooled_run_exports_and_load_exported_reproduces_its_probabilities(variant, tiny_llama, clinical_run,
                                                                                 tmp_path):
    from clinpeft.inference import load, load_exported

    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, variant, pooling="mean")
    info = export.main(run, tmp_path / "out", progress=False)
    assert info["pooling"] == "mean"
    exported = load_exported(tmp_path / "out", device="cpu")
    expected = load(run, device="cpu").predict(NOTES)
    np.testing.assert_allclose(exported.predict(NOTES), expected, atol=1e-5, rtol=0)
    assert exported.labels == LABELS
    # transformers' own forward reads the last token: not what the run was trained with
    assert not np.allclose(torch.sigmoid(exported_logits(tmp_path / "out")[0]).numpy(), expected, atol=1e-3)
    serving = json.loads((tmp_path / "out" / "serving.json").read_text())
    assert serving["vllm"]["pooler_config"] == {"seq_pooling_type": "MEAN", "use_activation": False}
    assert serving["activation"] == "sigmoid" and "--pooler-config" in serving["vllm"]["command"]


def test_last_token_export_says_last_pooling_and_softmax(tiny_llama, clinical_run, tmp_path):
    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, "lora")
    meta = json.loads((run / "bundle.json").read_text())
    (run / "bundle.json").write_text(json.dumps({**meta, "task_type": "binary", "labels": ["0", "1", "2"]}))
    export.main(run, tmp_path / "out", progress=False)
    serving = json.loads((tmp_path / "out" / "serving.json").read_text())
    assert serving["vllm"]["pooler_config"] == {"seq_pooling_type": "LAST", "use_activation": True}
    assert serving["activation"] == "softmax"


def test_prompt_methods_are_refused(tmp_path, capsys):
    prompt = tmp_path / "prompt"
    (prompt / "adapters" / "clinical").mkdir(parents=True)
    (prompt / "adapters" / "clinical" / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    (prompt / "bundle.json").write_text(json.dumps({"adapters": ["clinical"], "pooling": "last"}))
    assert main(["export", str(prompt), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "prompt_tuning adapter cannot be merged" in err
    assert not (tmp_path / "out").exists()
