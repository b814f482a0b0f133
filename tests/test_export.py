"""`clinpeft export`: the merged, standalone model gives the bundle's logits under a plain transformers load."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from clinpeft.cli import main
from clinpeft.config import DownstreamLoraSection
from clinpeft.methods import variant as variant_info
from clinpeft.modeling.adapters import find_clinical_adapter
from clinpeft.modeling.classifier import build_classifier, load_bundle, pad_batch, save_bundle
from clinpeft.recipes import export

NOTES = ["Chief complaint: shortness of breath.", "Pt s/p CABG, hx CHF, HTN.",
         "Discharge diagnosis: pneumonia, sepsis, acute kidney injury. Medications on admission: aspirin 81 mg daily."]
LABELS = ["401", "428", "V458"]


def make_bundle(run_dir, tiny_llama, clinical_run, variant, lora=None, pooling="last", seed=0):
    """A finetune bundle whose trainable weights were moved (a fresh LoRA's B is zero), saved by save_bundle."""
    lora = lora or DownstreamLoraSection(r=4, lora_dropout=0.0)
    clinical = find_clinical_adapter(clinical_run) if variant_info(variant).needs_clinical else None
    clf = build_classifier(tiny_llama, "multilabel", len(LABELS), variant, clinical, lora, "float32", pooling=pooling)
    torch.manual_seed(seed)
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


def test_load_exported_cuts_and_pools_long_notes_as_the_run_did(tiny_llama, clinical_run, tmp_path):
    from clinpeft.inference import load, load_exported

    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, "lora", pooling="mean")
    meta = json.loads((run / "bundle.json").read_text())
    chunks = {"mode": "chunks", "chunk_stride": 4, "chunk_pooling": "max", "max_chunks": 8, "truncate_side": "right"}
    (run / "bundle.json").write_text(json.dumps({**meta, "max_seq_len": 12, "long_notes": chunks}))
    export.main(run, tmp_path / "out", progress=False)
    exported = load_exported(tmp_path / "out", device="cpu")
    assert len(exported.logits(NOTES[2:])) == 1 and exported.long_notes.mode == "chunks"
    np.testing.assert_allclose(exported.predict(NOTES), load(run, device="cpu").predict(NOTES), atol=1e-5, rtol=0)


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


# --as-adapter: one peft LoRA adapter per task (clinical + downstream concatenated, head in modules_to_save)

def plain_base(tiny_llama, num_labels=len(LABELS), problem_type="multi_label_classification"):
    """The plain base classifier a server holds once: transformers alone, a fresh (untrained) head."""
    from transformers import AutoModelForSequenceClassification

    from clinpeft.modeling.base import load_tokenizer

    return AutoModelForSequenceClassification.from_pretrained(
        tiny_llama, num_labels=num_labels, problem_type=problem_type,
        pad_token_id=load_tokenizer(tiny_llama).pad_token_id).eval()


def note_batch(folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer(NOTES, padding=True, truncation=True, max_length=64, return_tensors="pt")


@pytest.mark.parametrize("variant,lora", [
    ("clinical_frozen+downstream", None),
    ("clinical_trainable+downstream", None),
    # downstream on q,k,v,o with rsLoRA over a clinical q,v LoRA: ranks 4+4 on q,v and 4 on k,o (rank_pattern)
    ("clinical_trainable+downstream", DownstreamLoraSection(r=4, lora_alpha=8, lora_dropout=0.0, use_rslora=True,
                                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])),
    ("lora", None),
    ("clinical_frozen", None),
    ("head", None),  # the head only: an exact zero LoRA of rank 1 carries it (peft wants one LoRA module)
])
def test_task_adapter_on_the_plain_base_gives_the_runs_logits(variant, lora, tiny_llama, clinical_run, tmp_path):
    from peft import PeftModel

    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, variant, lora)
    assert main(["export", str(run), "--as-adapter", "--out", str(tmp_path / "adapter"), "--quiet"]) == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["base_model_name_or_path"] == str(tiny_llama)
    assert "score" in config["modules_to_save"] and not config["use_dora"] and not config["use_rslora"]
    model = PeftModel.from_pretrained(plain_base(tiny_llama), tmp_path / "adapter").eval()
    with torch.no_grad():
        logits = model(**note_batch(tmp_path / "adapter")).logits
    torch.testing.assert_close(logits, bundle_logits(run), atol=1e-5, rtol=0)
    layers = {n: m for n, m in model.named_modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert all(m.scaling["default"] == 1.0 for m in layers.values())  # the scales are folded into B
    rank = {n.rsplit(".", 1)[-1]: m.r["default"] for n, m in layers.items()}
    stacked = variant.endswith("+downstream")
    if variant == "head":
        assert rank == {"q_proj": 1} and all(not m.lora_B["default"].weight.any() for m in layers.values())
        return
    assert rank["q_proj"] == rank["v_proj"] == (8 if stacked else 4)  # r1 + r2 where both LoRAs touch a module
    if lora is not None:
        assert rank["k_proj"] == rank["o_proj"] == 4 and config["rank_pattern"] and config["alpha_pattern"]


def test_two_task_adapters_on_one_base_each_answer_with_their_own_logits(tiny_llama, clinical_run, tmp_path):
    from peft import PeftModel

    runs = {name: make_bundle(tmp_path / name, tiny_llama, clinical_run, "clinical_frozen+downstream", seed=seed)
            for name, seed in (("diag", 1), ("proc", 2))}
    for name, run in runs.items():
        export.main(run, tmp_path / f"{name}-adapter", as_adapter=True, progress=False)
    model = PeftModel.from_pretrained(plain_base(tiny_llama), tmp_path / "diag-adapter", adapter_name="diag")
    model.load_adapter(tmp_path / "proc-adapter", adapter_name="proc")
    model.eval()
    batch = note_batch(tmp_path / "diag-adapter")
    expected = {name: bundle_logits(run) for name, run in runs.items()}
    assert not torch.allclose(expected["diag"], expected["proc"], atol=1e-3)
    with torch.no_grad():
        for name in runs:
            model.set_adapter(name)
            torch.testing.assert_close(model(**batch).logits, expected[name], atol=1e-5, rtol=0)
        # one mixed batch, each note routed to its own task (peft's adapter_names)
        mixed = model(**batch, adapter_names=["diag", "proc", "diag"]).logits
    torch.testing.assert_close(mixed, torch.stack([expected["diag"][0], expected["proc"][1], expected["diag"][2]]),
                               atol=1e-5, rtol=0)


def test_task_adapter_of_a_mean_pooled_run_says_mean_and_pools_as_the_run(tiny_llama, clinical_run, tmp_path):
    from clinpeft.inference import load, load_exported

    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, "clinical_frozen+downstream", pooling="mean")
    info = export.main(run, tmp_path / "adapter", as_adapter=True, progress=False)
    serving = json.loads((tmp_path / "adapter" / "serving.json").read_text())
    assert info["pooling"] == "mean" and serving["vllm"]["pooler_config"]["seq_pooling_type"] == "MEAN"
    assert "--enable-lora --lora-modules diag=" in serving["vllm"]["command"]
    # the pooling is the server's job; the helper does it over base + adapter as the run did
    exported = load_exported(tmp_path / "adapter", device="cpu")
    np.testing.assert_allclose(exported.predict(NOTES), load(run, device="cpu").predict(NOTES), atol=1e-5, rtol=0)


@pytest.mark.parametrize("variant,lora,says", [
    ("clinical_trainable+downstream", DownstreamLoraSection(r=4, lora_dropout=0.0, use_dora=True),
     "DoRA adapter cannot be shipped as one LoRA adapter"),
    ("full", None, "variant full changed every base weight"),
])
def test_task_adapter_refusals_name_the_reason(variant, lora, says, tiny_llama, clinical_run, tmp_path, capsys):
    run = make_bundle(tmp_path / "run", tiny_llama, clinical_run, variant, lora)
    assert main(["export", str(run), "--as-adapter", "--out", str(tmp_path / "adapter"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.search(says, err)
    assert not (tmp_path / "adapter").exists()


def test_ranks_that_differ_within_a_module_name_get_exact_path_patterns(tiny_llama):
    """EVA redistributes ranks per layer: q_proj of layer 1 may differ from layer 0's; the pattern names that path."""
    from peft import get_peft_model

    from clinpeft.modeling.task_adapter import LoraUpdate, rank_patterns, task_lora_config

    def update(rank):
        return LoraUpdate(torch.zeros(rank, 32), torch.zeros(32, rank))

    updates = {"model.layers.0.self_attn.q_proj": update(8), "model.layers.1.self_attn.q_proj": update(6),
               "model.layers.0.self_attn.v_proj": update(8), "model.layers.1.self_attn.v_proj": update(8),
               "model.layers.0.self_attn.k_proj": update(4), "model.layers.1.self_attn.k_proj": update(4)}
    assert rank_patterns(updates) == (8, {r"model\.layers\.1\.self_attn\.q_proj": 6, "k_proj": 4})
    model = get_peft_model(plain_base(tiny_llama), task_lora_config(updates, "score", str(tiny_llama)))
    ranks = {n.split("base_model.model.")[-1]: m.r["default"] for n, m in model.named_modules()
             if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert ranks == {path: u.rank for path, u in updates.items()}


def test_task_adapter_of_an_encoder_without_pooler_weights_is_refused(tiny_bert, tmp_path, capsys):
    """The tiny BERT is a masked-LM checkpoint: its classifier's pooler is random at every load, and the run never
    saved one, so no adapter can give the run's logits."""
    lora = DownstreamLoraSection(r=4, lora_dropout=0.0, target_modules=["query", "value"])
    clf = build_classifier(tiny_bert, "binary", 2, "lora", None, lora, "float32")
    save_bundle(clf, tmp_path / "run", {"base_model": str(tiny_bert), "variant": "lora", "task": "mor",
                                         "task_type": "binary", "labels": ["0", "1"], "max_seq_len": 64,
                                         "padding_side": "right"})
    assert main(["export", str(tmp_path / "run"), "--as-adapter", "--out", str(tmp_path / "adapter"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no pooler weights" in err
