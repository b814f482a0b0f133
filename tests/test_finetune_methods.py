"""Downstream fine-tuning on clinical adapters of every Table 2 method (the LoRA one: test_finetune.py).

adaption_prompt, prompt_tuning, p_tuning: clinical_frozen and clinical_trainable train exactly
what they should and the bundle reloads. prefix_tuning (transformers 5.x), a downstream LoRA on a
non-LoRA adapter (peft) and trainable full models are refused with one line. A full clinical
model is a new base model: clinical_frozen trains the head on it.
"""

import json

import numpy as np
import pytest
import torch

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.data.tasks import load_task
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.adapters import CLINICAL, add_pretraining_adapter, find_clinical_adapter
from clinpeft.modeling.base import base_fingerprint, load_causal_lm
from clinpeft.modeling.classifier import build_classifier, load_bundle, save_bundle
from clinpeft.recipes import finetune, pretrain
from clinpeft.training.classification import make_trainer
from conftest import predict_logits, pretrain_overrides

CLINICAL_SETTINGS = {
    "adaption_prompt": ["peft.adapter_len=4", "peft.adapter_layers=2"],
    "prompt_tuning": ["peft.num_virtual_tokens=4"],
    "p_tuning": ["peft.num_virtual_tokens=4", "peft.encoder_hidden_size=8"],
    "prefix_tuning": ["peft.num_virtual_tokens=4"],
}
PROMPT_METHODS = ("adaption_prompt", "prompt_tuning", "p_tuning")


@pytest.fixture(scope="module")
def clinical_runs(tiny_llama, tmp_path_factory) -> dict:
    """{method: a pretrain-run-like directory}: adapters saved by the recipe's own save, with
    weights that have an effect (adaption gates start at zero)."""
    runs = {}
    for method, settings in CLINICAL_SETTINGS.items():
        torch.manual_seed(0)
        config = load_config(PretrainConfig, None, [f"peft.method={method}", *settings])
        model = add_pretraining_adapter(load_causal_lm(tiny_llama, "float32"), config.peft, tokenizer_path=tiny_llama)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if param.requires_grad:
                    param.add_(torch.randn_like(param) * 0.3)
        runs[method] = tmp_path_factory.mktemp("clinical") / method
        pretrain.save_clinical(model, method, runs[method], tiny_llama, base_fingerprint(model))
    return runs


def owner(name):
    """head / clinical / base. Prompt methods train the head's copy in peft's ModulesToSaveWrapper;
    its `original_module` is unused, so it counts as base."""
    if ".score." in f".{name}" and ".original_module." not in name:
        return "head"
    if name.startswith("prompt_encoder.") or ".adaption_" in name:
        return CLINICAL
    return "base"


def classifier_for(variant, tiny_llama, clinical_dir, num_labels=2, task_type="binary"):
    config = load_config(FinetuneConfig, None, [f"variant={variant}"])
    clinical = find_clinical_adapter(clinical_dir)
    return build_classifier(tiny_llama, task_type, num_labels, variant, clinical, config.lora, "float32")


def ft_overrides(base, task_dir, **extra):
    items = {"model.base": base, "task.path": task_dir, "task.max_seq_len": 64, "train.batch_size": 8,
             "train.grad_accum": 1, "train.epochs": 1, "train.lr": 1e-2, **extra}
    return [f"{k}={v}" for k, v in items.items()]


@pytest.mark.parametrize("method", PROMPT_METHODS)
@pytest.mark.parametrize("variant", ["clinical_frozen", "clinical_trainable"])
def test_variant_trains_exactly_the_head_and_the_trainable_clinical_adapter(method, variant, tiny_llama, clinical_runs,
                                                                             synthetic_tasks, tmp_path):
    config = load_config(FinetuneConfig, None, ft_overrides(tiny_llama, synthetic_tasks["mor"], variant=variant,
                                                            **{"train.max_steps": 2}))
    task = load_task(config.task.path)
    clf = classifier_for(variant, tiny_llama, clinical_runs[method])
    assert clf.tokenizer.padding_side == ("right" if method == "adaption_prompt" else "left")
    before = {n: p.detach().clone() for n, p in clf.model.named_parameters()}
    trainer, _, _ = make_trainer(clf, task, config, tmp_path, progress=False)
    trainer.train()
    expected = {"head", CLINICAL} if variant == "clinical_trainable" else {"head"}
    for name, param in clf.model.named_parameters():
        assert param.requires_grad == (owner(name) in expected), name
        assert (not torch.equal(before[name], param)) == (owner(name) in expected), name
    assert CLINICAL in {owner(n) for n in before}  # the clinical adapter is there, frozen or not


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_clinical_adapter_acts_in_the_classifier(method, tiny_llama, clinical_runs):
    clf = classifier_for("clinical_frozen", tiny_llama, clinical_runs[method])
    batch = clf.tokenizer(["BP 128/76 HR 88.", "Chief complaint: chest pain, shortness of breath."],
                          padding=True, return_tensors="pt")
    with torch.no_grad():
        with_adapter = clf.model.eval()(**batch).logits
        if method == "adaption_prompt":
            with clf.model.disable_adapter():
                without = clf.model(**batch).logits
        else:  # peft's disable_adapter fails on a prompt-learning classifier; the bare model has no prompt
            without = clf.model.get_base_model()(**batch).logits
    assert not torch.allclose(with_adapter, without)


@pytest.mark.parametrize("method", PROMPT_METHODS)
def test_bundle_reloads_to_identical_logits(method, tiny_llama, clinical_runs, tmp_path):
    clf = classifier_for("clinical_trainable", tiny_llama, clinical_runs[method], num_labels=3, task_type="multiclass")
    with torch.no_grad():  # stand-in for training: move the head and the clinical adapter
        for name, param in clf.model.named_parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.2)
    save_bundle(clf, tmp_path, {"base_model": str(tiny_llama), "variant": "clinical_trainable", "task": "los",
                                "task_type": "multiclass", "labels": ["0", "1", "2"], "max_seq_len": 64,
                                "padding_side": clf.tokenizer.padding_side})
    again, meta = load_bundle(tmp_path, dtype="float32")
    notes = ["BP 128/76 HR 88.", "Chief complaint: chest pain, shortness of breath.", "Pt s/p CABG."]
    np.testing.assert_array_equal(predict_logits(clf, notes, 64, progress=False),
                                  predict_logits(again, notes, 64, progress=False))
    assert again.tokenizer.padding_side == clf.tokenizer.padding_side


def test_trainable_prompt_run_end_to_end(tiny_llama, clinical_runs, synthetic_tasks, tmp_path):
    """The real recipe on a p-tuning clinical adapter: metrics, predictions, a bundle that
    `evaluate` reloads to the same test AUROC, and its own Table 3 row."""
    from clinpeft.cli import main

    config = load_config(FinetuneConfig, None, ft_overrides(tiny_llama, synthetic_tasks["mor"],
                                                            variant="clinical_trainable",
                                                            clinical_adapter=clinical_runs["p_tuning"]))
    metrics = finetune.main(config, tmp_path / "run", progress=False)
    assert metrics["clinical_method"] == "p_tuning" and metrics["row"] == "+ Clinical P-tuning (Trainable)"
    assert 0 <= metrics["test"]["auroc"] <= 1
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(synthetic_tasks["mor"] / "test.csv"),
                 "--out", str(tmp_path / "eval"), "--quiet"]) == 0
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)


def test_prefix_tuning_cannot_classify(tiny_llama, clinical_runs):
    with pytest.raises(ClinpeftError) as error:
        classifier_for("clinical_frozen", tiny_llama, clinical_runs["prefix_tuning"])
    message = str(error.value)
    assert "prefix_tuning" in message and "transformers 5" in message and "lora, adaption_prompt" in message
    assert "\n" not in message


@pytest.mark.parametrize("method", ["adaption_prompt", "prompt_tuning"])
@pytest.mark.parametrize("variant", ["clinical_frozen+downstream", "clinical_trainable+downstream"])
def test_downstream_lora_on_a_non_lora_adapter_is_refused_before_any_work(method, variant, tiny_llama, clinical_runs,
                                                                          synthetic_tasks, tmp_path, capsys):
    from clinpeft.cli import main

    out, recipe = tmp_path / "run", tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    overrides = ft_overrides(tiny_llama, synthetic_tasks["mor"], variant=variant,
                             clinical_adapter=clinical_runs[method])
    code = main(["finetune", str(recipe), *overrides, "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and not out.exists()
    assert f"a {method} adapter" in err and f"variant={variant.removesuffix('+downstream')}" in err


@pytest.fixture(scope="module")
def full_run(tiny_llama, synthetic_corpus, tmp_path_factory):
    """A finished `pretrain` run with peft.method=full (Clinical LLaMA) on the tiny LLaMA."""
    out = tmp_path_factory.mktemp("runs") / "clinical-full"
    overrides = [o for o in pretrain_overrides(tiny_llama, synthetic_corpus) if not o.startswith("peft.")]
    pretrain.main(load_config(PretrainConfig, None, [*overrides, "peft.method=full", "train.lr=1e-3",
                                                    "eval.base_model=false"]), out, progress=False)
    return out


def test_full_pretraining_saves_a_whole_model(full_run, tiny_llama):
    from safetensors.torch import load_file

    run = json.loads((full_run / "run.json").read_text())
    assert run["method"] == "full" and run["packing"] is True
    assert run["trainable_params"] == run["total_params"] and run["trainable_percent"] == 100.0
    assert not (full_run / "adapter").exists()
    for name in ("config.json", "model.safetensors", "tokenizer.json", "clinpeft_adapter.json"):
        assert (full_run / "model" / name).is_file(), name
    trained, original = load_file(full_run / "model" / "model.safetensors"), load_file(tiny_llama / "model.safetensors")
    assert trained.keys() == original.keys()
    assert all(not torch.equal(trained[k], original[k]) for k in original if "norm" not in k)  # every weight trained


def test_full_clinical_model_is_the_base_of_clinical_frozen(full_run, tiny_llama, synthetic_tasks, tmp_path):
    config = load_config(FinetuneConfig, None, ft_overrides(tiny_llama, synthetic_tasks["mor"],
                                                            variant="clinical_frozen", clinical_adapter=full_run))
    metrics = finetune.main(config, tmp_path / "run", progress=False)
    assert metrics["variant"] == "head" and metrics["clinical_method"] == "full"  # the paper's "Clinical LLaMA" row
    assert metrics["base_model"] == str(full_run / "model") and metrics["base_model_name"] == "Clinical tiny-llama"
    bundle = json.loads((tmp_path / "run" / "bundle.json").read_text())
    assert bundle["adapters"] == [] and bundle["base_model"] == str(full_run / "model")
    assert metrics["trainable_params"] == 2 * 32  # the head only: 2 labels x hidden 32


def test_full_clinical_model_cannot_be_trained_further(full_run, tiny_llama, synthetic_tasks):
    config = load_config(FinetuneConfig, None, ft_overrides(tiny_llama, synthetic_tasks["mor"],
                                                            variant="clinical_trainable", clinical_adapter=full_run))
    with pytest.raises(ClinpeftError, match="full clinical model.*variant=clinical_frozen"):
        finetune.main(config, "/nonexistent/never-written", progress=False)
