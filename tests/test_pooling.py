"""`model.pooling`: what a decoder classifier's head reads.

last (default): transformers' last non-pad token, unchanged. mean: score(mean of the final hidden
states over the note's tokens), which for LLaMA's bias-free linear head `score` is the masked mean
of the per-token logits; checked by hand against the hidden states the head receives, for right and
left padding, stacked LoRAs, prompt tuning's virtual tokens, train and eval mode, and a saved bundle.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clinpeft.config import DownstreamLoraSection, FinetuneConfig, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.adapters import find_clinical_adapter, head_module
from clinpeft.modeling.classifier import build_classifier, load_bundle, pad_batch
from clinpeft.modeling.pooling import apply_pooling
from clinpeft.recipes import finetune
from conftest import predict_logits

NOTES = ["Chief complaint: shortness of breath.", "Pt s/p CABG.",
         "Discharge diagnosis: pneumonia, sepsis, acute kidney injury. Medications on admission: aspirin 81 mg daily."]
NO_DROPOUT = DownstreamLoraSection(lora_dropout=0.0)  # train mode stays deterministic


def perturb(model, scale: float = 0.3) -> None:
    """Stand-in for training: a fresh LoRA's B is zero, so move every trainable weight."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * scale)


def logits_and_head_input(clf, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's logits, and the final hidden states its head received (batch, seq, hidden)."""
    seen = {}
    handle = head_module(clf.model, clf.head_name).register_forward_hook(lambda m, args, out: seen.update(h=args[0]))
    try:
        logits = clf.model(**batch).logits
    finally:
        handle.remove()
    return logits, seen["h"]


def score(clf, hidden: torch.Tensor) -> torch.Tensor:
    return hidden @ head_module(clf.model, clf.head_name).weight.T


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(hidden.dtype)[..., None]
    return (hidden * mask).sum(1) / mask.sum(1)


def batch_of(clf, notes=NOTES) -> dict:
    return pad_batch(clf.tokenizer, [clf.tokenizer(n)["input_ids"] for n in notes])


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_mean_pooling_is_score_of_the_masked_mean(side, mode, tiny_llama):
    clf = build_classifier(tiny_llama, "multiclass", 3, "lora", None, NO_DROPOUT, dtype="float32", pooling="mean")
    perturb(clf.model)
    clf.tokenizer.padding_side = side
    clf.model.train(mode == "train")
    batch = batch_of(clf)
    assert len(set(batch["attention_mask"].sum(1).tolist())) == 3  # three lengths: padding on every row but one
    logits, hidden = logits_and_head_input(clf, batch)
    assert logits.shape == (3, 3)
    torch.testing.assert_close(logits, score(clf, masked_mean(hidden, batch["attention_mask"])))
    if side == "right":  # causal attention: a right-padded note's states are its own, so pads are left out
        for i, note in enumerate(NOTES):
            alone = {k: v[i : i + 1, : int(batch["attention_mask"][i].sum())] for k, v in batch.items()}
            torch.testing.assert_close(logits[i : i + 1], clf.model(**alone).logits, rtol=1e-4, atol=1e-5)


def test_last_pooling_is_the_default_last_token(tiny_llama):
    clf = build_classifier(tiny_llama, "multiclass", 3, "lora", None, NO_DROPOUT, dtype="float32")
    assert clf.pooling == "last" and not clf.model._forward_pre_hooks
    assert not head_module(clf.model, clf.head_name)._forward_hooks
    perturb(clf.model)
    batch = batch_of(clf)
    with torch.no_grad():
        logits, hidden = logits_and_head_input(clf, batch)
    last = batch["attention_mask"].sum(1) - 1  # right padding
    torch.testing.assert_close(logits, score(clf, hidden[torch.arange(3), last]))
    mean = masked_mean(hidden, batch["attention_mask"])
    assert not torch.allclose(logits, score(clf, mean))


def test_mean_pooling_on_stacked_clinical_and_downstream_lora_trains_both(tiny_llama, clinical_run):
    clinical = find_clinical_adapter(clinical_run)
    clf = build_classifier(tiny_llama, "binary", 2, "clinical_trainable+downstream", clinical, NO_DROPOUT,
                           dtype="float32", pooling="mean")
    perturb(clf.model)
    clf.model.train()
    batch = batch_of(clf)
    logits, hidden = logits_and_head_input(clf, batch)
    torch.testing.assert_close(logits, score(clf, masked_mean(hidden, batch["attention_mask"])))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 1])).backward()
    grads = {name: p.grad for name, p in clf.model.named_parameters() if p.requires_grad}
    assert any(n.endswith(f"{clf.head_name}.weight") for n in grads)
    for part in (f"{clf.head_name}.", "lora_A.clinical", "lora_B.clinical", "lora_A.downstream", "lora_B.downstream"):
        found = [g for n, g in grads.items() if part in n]
        assert found and all(g is not None and g.abs().sum() > 0 for g in found), part


def test_prompt_tuning_virtual_tokens_are_left_out_of_the_mean(tiny_llama):
    """peft prepends the virtual tokens inside the outer model; the mean covers the note's tokens only."""
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from clinpeft.modeling.base import load_sequence_classifier, load_tokenizer

    n_virtual = 4
    tokenizer = load_tokenizer(tiny_llama, padding_side="left")  # prompt methods pad on the left
    model = load_sequence_classifier(tiny_llama, 2, tokenizer.pad_token_id, "single_label_classification", "float32")
    model = get_peft_model(model, PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=n_virtual))
    apply_pooling(model, "score", "mean")
    clf = type("C", (), {"model": model, "head_name": "score", "tokenizer": tokenizer})()
    batch = batch_of(clf)
    with torch.no_grad():
        logits, hidden = logits_and_head_input(clf, batch)
    assert hidden.shape[1] == batch["input_ids"].shape[1] + n_virtual
    torch.testing.assert_close(logits, score(clf, masked_mean(hidden[:, n_virtual:], batch["attention_mask"])))
    # the virtual tokens' states do not depend on the note (they come first): including them would
    # only add a length-dependent constant
    torch.testing.assert_close(hidden[0, :n_virtual], hidden[1, :n_virtual])


@pytest.fixture(scope="module")
def mean_run(tiny_llama, synthetic_tasks, tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "mor-mean"
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", "model.pooling=mean", "variant=lora", f"task.path={synthetic_tasks['mor']}",
        "task.max_seq_len=64", "task.max_examples=16", "train.batch_size=8", "train.grad_accum=1", "train.epochs=1",
        "train.lr=1e-2", "eval.batch_size=16", "eval.bootstrap_resamples=0", "model.dtype=float32"])
    return out, finetune.main(config, out, progress=False)


def test_bundle_records_and_reapplies_mean_pooling(mean_run, synthetic_tasks):
    out, metrics = mean_run
    assert metrics["pooling"] == "mean"
    assert json.loads((out / "bundle.json").read_text())["pooling"] == "mean"
    clf, _ = load_bundle(out, dtype="float32")
    assert clf.pooling == "mean"
    import pandas as pd

    test = pd.read_csv(synthetic_tasks["mor"] / "test.csv").head(16)
    saved = pd.read_csv(out / "predictions.csv")
    logits = predict_logits(clf, test["text"].tolist(), 64, progress=False)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs[:, 1] / probs.sum(1), saved["p_1"].to_numpy(), rtol=1e-5, atol=1e-6)


def test_bundle_without_pooling_key_reads_the_last_token(mean_run, tmp_path):
    import shutil

    out, _ = mean_run
    old = shutil.copytree(out, tmp_path / "old")
    meta = json.loads((old / "bundle.json").read_text())
    del meta["pooling"]
    (old / "bundle.json").write_text(json.dumps(meta))
    clf, _ = load_bundle(old, dtype="float32")
    mean_clf, _ = load_bundle(out, dtype="float32")
    assert clf.pooling == "last" and not clf.model._forward_pre_hooks
    last, mean = (predict_logits(c, NOTES, 64, progress=False) for c in (clf, mean_clf))
    assert not np.allclose(last, mean)


def test_mean_pooling_refused_for_encoders_and_pretraining(tiny_bert, synthetic_tasks, tmp_path):
    with pytest.raises(ClinpeftError, match="model.pooling=mean.*encoder.*model.pooling=last"):
        build_classifier(tiny_bert, "binary", 2, "full", None, NO_DROPOUT, pooling="mean")
    config = load_config(FinetuneConfig, None, [f"model.base={tiny_bert}", "model.pooling=mean", "variant=full",
                                                f"task.path={synthetic_tasks['mor']}"])
    with pytest.raises(ClinpeftError, match="encoder"):
        finetune.main(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ClinpeftError, match="model.pooling"):  # pretraining has no head: an unknown key
        load_config(PretrainConfig, None, ["model.pooling=mean"])
    with pytest.raises(ClinpeftError, match="pooling"):
        load_config(FinetuneConfig, None, ["model.pooling=max"])
