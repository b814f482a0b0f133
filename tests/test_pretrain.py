"""`clinpeft pretrain`: only the adapter trains, outputs are complete, the split is by patient."""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from clinpeft.config import PretrainConfig, load_config
from clinpeft.data.notes import in_test_split, in_val_split, load_corpus
from clinpeft.modeling.adapters import add_pretraining_adapter
from clinpeft.modeling.base import load_causal_lm
from clinpeft.recipes import pretrain
from conftest import pretrain_overrides


def test_run_directory_is_complete(clinical_run):
    run = json.loads((clinical_run / "run.json").read_text())
    assert (clinical_run / "adapter" / "adapter_config.json").is_file()
    assert (clinical_run / "adapter" / "adapter_model.safetensors").is_file()
    assert (clinical_run / "config.yaml").is_file()
    # no trainer/cache leftovers; the one hidden file is the record of the command that wrote it (rundir.MARKER)
    assert [p.name for p in clinical_run.iterdir() if p.name.startswith(".")] == [".clinpeft-output.json"]
    assert run["kind"] == "pretrain" and run["method"] == "lora"
    assert 0 < run["trainable_params"] < run["total_params"]
    assert run["trainable_percent"] == pytest.approx(100 * run["trainable_params"] / run["total_params"])
    for key in ("train_ppl", "test_ppl", "base_train_ppl", "base_test_ppl", "wall_time_s", "tokens_per_s",
                "useful_tokens_per_s"):
        assert run[key] > 0, key
    assert run["split_by"] == "subject_id"
    assert run["optimizer_steps"] == 4
    assert run["useful_warmup_steps"] == 1  # 4 steps: the first is left out
    assert run["packing_mode"] == "fill" and set(run["segment_starts_added"]) >= {"train", "test"}
    assert run["packing_efficiency"] > 0.9  # fill: only segment starts and the window's last block unlabelled
    assert run["val_ppl"] is None and run["val_notes"] is None and run["val_blocks"] is None  # data.val_fraction=0


def test_lora_trainable_params_match_formula(tiny_llama):
    """LoRA on q_proj and v_proj: r * (d_in + d_out) per module, 2 modules per layer."""
    model = load_causal_lm(tiny_llama, "float32")
    config = load_config(PretrainConfig, None, ["peft.r=4"])
    peft_model = add_pretraining_adapter(model, config.peft)
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert trainable == 4 * (hidden + hidden) * 2 * layers


def test_one_step_changes_only_adapter_weights(tiny_llama):
    model = add_pretraining_adapter(load_causal_lm(tiny_llama, "float32"), load_config(PretrainConfig).peft)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(4, 300, (2, 16))
    for _ in range(2):  # lora_B starts at zero, so lora_A only moves from the second step
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param)
        assert changed == ("lora_" in name), name


def test_saved_adapter_reloads_to_the_trained_models_logits(tiny_llama, synthetic_corpus, tmp_path, monkeypatch):
    """The adapter the recipe saves, reloaded on the base model, gives exactly the logits of the model
    it trained (eval mode, same notes), taken just before the save."""
    from peft import PeftModel

    ids = torch.randint(4, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    trained = {}
    save_clinical = pretrain.save_clinical

    def remember_then_save(model, *args, **kwargs):
        with torch.no_grad():
            trained["device"] = model.device  # compared on the same device: exact
            trained["logits"] = model.eval()(input_ids=ids.to(model.device)).logits
            with model.disable_adapter():
                trained["base"] = model(input_ids=ids.to(model.device)).logits
        return save_clinical(model, *args, **kwargs)

    monkeypatch.setattr(pretrain, "save_clinical", remember_then_save)
    overrides = [*pretrain_overrides(tiny_llama, synthetic_corpus), "eval.base_model=false"]
    config = load_config(PretrainConfig, None, overrides)
    pretrain.main(config, tmp_path / "run", progress=False)
    weights = load_file(tmp_path / "run" / "adapter" / "adapter_model.safetensors")
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)  # it trained
    base_model = load_causal_lm(tiny_llama, "float32").to(trained["device"])
    reloaded = PeftModel.from_pretrained(base_model, tmp_path / "run" / "adapter").eval()
    with torch.no_grad():
        logits = reloaded(input_ids=ids.to(trained["device"])).logits
    torch.testing.assert_close(logits, trained["logits"], rtol=0, atol=0)
    assert not torch.allclose(trained["logits"], trained["base"])  # the adapter acts


def test_summary_is_the_line_the_cli_prints(clinical_run):
    run = json.loads((clinical_run / "run.json").read_text())
    [line] = pretrain.summary(run, "runs/x")
    assert line.startswith(f"runs/x: {run['trainable_params']:,} trainable params (")
    assert f"test ppl {run['test_ppl']:.3f} (base model {run['base_test_ppl']:.3f})" in line
    assert "val ppl" not in line  # no data.val_fraction


def test_split_is_by_patient(synthetic_corpus, tmp_path):
    paths = f"data.paths=[{synthetic_corpus['discharge']}, {synthetic_corpus['radiology']}]"
    config = load_config(PretrainConfig, None, [paths, "data.test_fraction=0.3"])
    splits, info = load_corpus(config.data, tmp_path / "cache")
    notes = pd.concat([pd.read_csv(synthetic_corpus[k]) for k in ("discharge", "radiology")])
    test_patients = {s for s in notes["subject_id"].astype(str) if in_test_split(s, 0.3, 0)}
    expected_test = notes[notes["subject_id"].astype(str).isin(test_patients)]
    assert info["test_notes"] == len(expected_test) == len(splits["test"])
    assert info["train_notes"] == len(notes) - len(expected_test)
    assert set(splits["test"]["text"]) == set(expected_test["text"])
    assert not set(splits["train"]["text"]) & set(splits["test"]["text"])


def test_val_split_is_carved_from_train_by_patient(synthetic_corpus, tmp_path):
    paths = f"data.paths=[{synthetic_corpus['discharge']}, {synthetic_corpus['radiology']}]"
    plain, _ = load_corpus(load_config(PretrainConfig, None, [paths, "data.test_fraction=0.3"]).data, tmp_path / "a")
    splits, info = load_corpus(load_config(PretrainConfig, None, [paths, "data.test_fraction=0.3",
                                                                    "data.val_fraction=0.4"]).data, tmp_path / "b")
    assert sorted(splits["test"]["text"]) == sorted(plain["test"]["text"])  # the test split does not move
    assert sorted(list(splits["train"]["text"]) + list(splits["val"]["text"])) == sorted(plain["train"]["text"])
    assert info["val_notes"] == len(splits["val"]) > 0 and info["train_notes"] == len(splits["train"]) > 0
    notes = pd.concat([pd.read_csv(synthetic_corpus[k]) for k in ("discharge", "radiology")])
    patient_of = dict(zip(notes["text"], notes["subject_id"].astype(str)))
    patients = {name: {patient_of[t] for t in splits[name]["text"]} for name in ("train", "val", "test")}
    assert not patients["val"] & patients["train"] and not patients["val"] & patients["test"]
    assert patients["val"] == {p for p in patients["val"] | patients["train"] if in_val_split(p, 0.4, 0)}
    # salted: the val draw is not the test draw (with the same fraction it would pick no train patient)
    assert any(not in_test_split(p, 0.4, 0) for p in patients["val"])


def test_txt_and_jsonl_corpora_split_by_note(tmp_path):
    """A .txt file is one note; JSONL has one note object per line; no patient id -> split per note."""
    corpus = tmp_path / "notes"
    corpus.mkdir()
    (corpus / "a.txt").write_text("Pt with CHF.\n\nSOB on exertion.")
    (corpus / "b.txt").write_text("Chief complaint: chest pain.")
    (corpus / "c.jsonl").write_text('{"text": "CXR clear."}\n{"text": "BP 120/80."}\n{"text": "  "}\n')
    config = load_config(PretrainConfig, None, [f"data.paths=[{corpus}]", "data.test_fraction=0.5"])
    splits, info = load_corpus(config.data, tmp_path / "cache")
    assert info["split_by"] == "note" and info["notes_read"] == 5 and info["notes_dropped_empty"] == 1
    texts = set(splits["train"]["text"]) | set(splits["test"]["text"])
    assert texts == {"Pt with CHF.\n\nSOB on exertion.", "Chief complaint: chest pain.", "CXR clear.", "BP 120/80."}


@pytest.mark.parametrize("problem, override, message", [
    ("missing file", "data.paths=[/nonexistent/notes.csv]", "/nonexistent/notes.csv not found"),
    ("missing column", "data.text_column=body", "no column 'body'"),
])
def test_bad_corpus_fails_before_work(tiny_llama, synthetic_corpus, tmp_path, problem, override, message):
    from clinpeft.cli import main

    out = tmp_path / "run"
    args = ["pretrain", str(tmp_path / "r.yaml"), *pretrain_overrides(tiny_llama, synthetic_corpus), override,
            "--out", str(out)]
    (tmp_path / "r.yaml").write_text("{}\n")
    assert main(args) == 2
    assert not out.exists() and not list(tmp_path.glob(".run.tmp-*"))


def test_error_message_is_one_line(tiny_llama, synthetic_corpus, tmp_path, capsys):
    from clinpeft.cli import main

    (tmp_path / "r.yaml").write_text("{}\n")
    code = main(["pretrain", str(tmp_path / "r.yaml"), *pretrain_overrides(tiny_llama, synthetic_corpus),
                 "data.text_column=body", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith("error: ") and "discharge.csv.gz" in err and "data.text_column" in err
