"""Encoder baselines and the `full` variant: BERT-family encoders fine-tuned in full (the paper's
BlueBERT / UmlsBERT / Bio+ClinicalBERT / CORe rows), and full fine-tuning of a LLaMA.

Tiny models (hidden 32, 2 layers), the small synthetic tasks, a few optimiser steps.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from clinpeft.config import FinetuneConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.base import is_encoder
from clinpeft.modeling.classifier import load_bundle
from clinpeft.recipes import evaluate, finetune
from conftest import predict_logits


def overrides(base, task_dir, variant="full", **extra) -> list[str]:
    items = [f"model.base={base}", f"variant={variant}", f"task.path={task_dir}", "task.max_seq_len=64",
             "task.max_examples=24", "train.batch_size=8", "train.grad_accum=1", "train.epochs=1",
             "train.lr=1e-3", "eval.batch_size=16", "eval.bootstrap_resamples=0"]
    return items + [f"{k.replace('__', '.')}={v}" for k, v in extra.items()]


def finetune_config(items: list[str]) -> FinetuneConfig:
    return load_config(FinetuneConfig, None, items)


@pytest.fixture(scope="module")
def bert_run(tiny_bert, synthetic_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("enc") / "mor-bert"
    config = finetune_config(overrides(tiny_bert, synthetic_tasks["mor"], model__name="TinyBERT"))
    return out, finetune.main(config, out, progress=False)


def test_encoder_detected_from_config_json(tiny_bert, tiny_llama, tmp_path):
    assert is_encoder(tiny_bert) and is_encoder("demo-bert")
    assert not is_encoder(tiny_llama) and not is_encoder("demo")
    # a BERT saved as a decoder (BertLMHeadModel) is not an encoder
    decoder = tmp_path / "bert-decoder"
    decoder.mkdir()
    config = json.loads((tiny_bert / "config.json").read_text())
    as_decoder = {**config, "is_decoder": True, "architectures": ["BertLMHeadModel"]}
    (decoder / "config.json").write_text(json.dumps(as_decoder))
    assert not is_encoder(decoder)


def test_encoder_full_finetuning_trains_every_weight(bert_run, tiny_bert):
    out, metrics = bert_run
    assert metrics["variant"] == "full" and metrics["model_kind"] == "encoder"
    assert metrics["row"] == "TinyBERT" and metrics["base_model_name"] == "TinyBERT"  # a baseline row of its own
    assert metrics["trainable_params"] == metrics["total_params"]
    assert 0.0 <= metrics["test"]["auroc"] <= 1.0
    # every encoder weight moved (the pooler and classifier are new, so compare the encoder's own)
    before = load_file(tiny_bert / "model.safetensors")
    after = load_file(out / "model" / "model.safetensors")
    shared = [k for k in after if k.startswith("bert.encoder.") or k.startswith("bert.embeddings.word")]
    assert shared and all(k in before for k in shared)
    changed = [k for k in shared if not torch.equal(before[k], after[k])]
    assert len(changed) == len(shared), f"unchanged: {sorted(set(shared) - set(changed))}"
    bundle = json.loads((out / "bundle.json").read_text())
    assert bundle["model_dir"] == "model" and bundle["adapters"] == [] and bundle["padding_side"] == "right"
    assert not (out / "head.safetensors").exists()  # the head is inside model/


def test_encoder_bundle_reload_reproduces_predictions(bert_run, synthetic_tasks, tmp_path):
    out, metrics = bert_run
    clf, meta = load_bundle(out)
    test = pd.read_csv(synthetic_tasks["mor"] / "test.csv", dtype=str, keep_default_na=False).head(24)
    logits = predict_logits(clf, test["text"].tolist(), meta["max_seq_len"], progress=False)
    saved = pd.read_csv(out / "predictions.csv")
    probs = torch.softmax(torch.tensor(logits), -1).numpy()
    np.testing.assert_allclose(probs[:, 1], saved["p_1"].to_numpy(), atol=1e-5)
    # [CLS] pooling, truncation at max_seq_len including [CLS]/[SEP]
    ids = clf.tokenizer(test["text"].tolist()[:1], truncation=True, max_length=meta["max_seq_len"])["input_ids"][0]
    assert ids[0] == clf.tokenizer.cls_token_id and ids[-1] == clf.tokenizer.sep_token_id and len(ids) <= 64
    # `evaluate` rebuilds it from the run directory alone
    result = evaluate.main(out, synthetic_tasks["mor"] / "test.csv", tmp_path / "eval", progress=False)
    assert result["variant"] == "full" and 0.0 <= result["eval"]["auroc"] <= 1.0


def test_clinical_variants_refused_for_encoders(tiny_bert, synthetic_tasks, clinical_run, tmp_path):
    config = finetune_config(overrides(tiny_bert, synthetic_tasks["mor"], "clinical_trainable+downstream",
                                   clinical_adapter=clinical_run))
    with pytest.raises(ClinpeftError, match="BERT-family encoder.*variant=full"):
        finetune.main(config, tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()


def test_encoder_too_long_and_wrong_lora_targets_refused(tiny_bert, synthetic_tasks, tmp_path):
    long = finetune_config(overrides(tiny_bert, synthetic_tasks["mor"], task__max_seq_len=1024))
    with pytest.raises(ClinpeftError, match="has 512 positions"):
        finetune.main(long, tmp_path / "long", progress=False)
    lora = finetune_config(overrides(tiny_bert, synthetic_tasks["mor"], "lora"))  # LLaMA's q_proj/v_proj
    with pytest.raises(ClinpeftError, match=r"BERT: \[query,value\]"):
        finetune.main(lora, tmp_path / "lora", progress=False)


def test_encoder_lora_with_bert_module_names(tiny_bert, synthetic_tasks, tmp_path):
    config = finetune_config(overrides(tiny_bert, synthetic_tasks["pmv"], "lora",
                                       **{"lora.target_modules": "[query,value]"}))
    metrics = finetune.main(config, tmp_path / "lora", progress=False)
    assert metrics["variant"] == "lora" and 0 < metrics["trainable_params"] < metrics["total_params"] / 2
    assert metrics["row"].endswith("+ LoRA")
    # the masked-LM checkpoint has no pooler weights: the bundle keeps the (frozen) pooler the head was trained on,
    # so every load scores like the run (before, each load drew a new random pooler: logits off by up to 0.26)
    from clinpeft.modeling.classifier import POOLER_FILE
    from clinpeft.recipes import evaluate

    assert (tmp_path / "lora" / POOLER_FILE).is_file()
    again = evaluate.main(tmp_path / "lora", synthetic_tasks["pmv"] / "test.csv", tmp_path / "eval", progress=False,
                          bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    original = pd.read_csv(tmp_path / "lora" / "predictions.csv")
    rescored = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    columns = [c for c in original.columns if c.startswith("p_")]
    assert (rescored[columns] - original[columns]).abs().to_numpy().max() < 1e-5


def test_llama_full_variant(tiny_llama, synthetic_tasks, tmp_path):
    config = finetune_config(overrides(tiny_llama, synthetic_tasks["diag"], train__lr="1e-3"))
    out = tmp_path / "diag-full"
    metrics = finetune.main(config, out, progress=False)
    assert metrics["variant"] == "full" and metrics["model_kind"] == "decoder" and "row" not in metrics
    assert metrics["trainable_params"] == metrics["total_params"]
    before = load_file(tiny_llama / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    after = load_file(out / "model" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    assert not torch.equal(before, after)
    clf, meta = load_bundle(out)
    test = pd.read_csv(synthetic_tasks["diag"] / "test.csv", dtype=str, keep_default_na=False).head(24)
    logits = predict_logits(clf, test["text"].tolist(), meta["max_seq_len"], progress=False)
    saved = pd.read_csv(out / "predictions.csv")
    first = [c for c in saved.columns if c.startswith("p_")][0]
    np.testing.assert_allclose(1 / (1 + np.exp(-logits[:, 0])), saved[first].to_numpy(), atol=1e-5)
