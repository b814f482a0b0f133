"""The demo base model: a tiny general-English LLaMA built offline, standing in for LLaMA-7B.

The real model is built once per test session (well under a minute on 2 CPU cores) into a
temporary directory; tests of the cache logic (reuse, rebuild, atomicity) swap the builder for a
fast fake that copies that real build.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from clinpeft.demo import llama as db
from clinpeft.errors import ClinpeftError

# Held-out general-text perplexity of the v1 recipe measured 95 (vocab 2048); the bound leaves
# room for thread-count and platform differences while still meaning "a real language model".
MAX_GENERAL_PERPLEXITY = 150.0
CLINICAL_TEXTS = [
    "Pt is a 67 yo M w/ hx of CHF, HTN, DM2 p/w SOB. CXR: bilateral pleural effusions. "
    "BP 128/76 HR 88.",
    "___ y/o F w/ PMH of COPD, AFib on coumadin, admitted for RLL PNA. Started on vanc/zosyn, "
    "O2 sat 91% on 2L NC.",
]


@pytest.fixture(scope="session")
def built(demo_base) -> Path:
    """The real demo base, built once per session (conftest), never in the user's home."""
    return demo_base


@pytest.fixture(scope="session")
def tokenizer(built):
    return AutoTokenizer.from_pretrained(built)


@pytest.fixture(scope="session")
def model(built):
    return AutoModelForCausalLM.from_pretrained(built).eval()


@pytest.fixture()
def fake_build(built, monkeypatch):
    """Replace the (slow) builder by one that copies the session's real build; count calls."""
    calls = []

    def fake(out_dir: Path, *, seed: int, progress: bool) -> dict:
        calls.append(out_dir)
        for f in built.iterdir():
            shutil.copy2(f, out_dir / f.name)
        return json.loads((built / "demo_base.json").read_text())

    monkeypatch.setattr(db, "_build", fake)
    return calls


# --- text ------------------------------------------------------------------------------------
def test_general_english_documents_are_clean_and_deterministic():
    docs = db.general_english_documents(max_chars=200_000)
    assert len(docs) > 300
    assert docs == db.general_english_documents(max_chars=200_000)
    assert sum(map(len, docs)) <= 200_000
    assert len(set(docs)) == len(docs)  # exact duplicates kept once
    for doc in docs:
        assert "\n" not in doc and doc == doc.strip() and "  " not in doc
        assert not doc.startswith(">>>")
        assert len(doc) >= 40
    # Real English prose, not code.
    words = " ".join(docs).lower().split()
    assert words.count("the") > 0.02 * len(words)


def test_clean_paragraph_drops_doctests_and_rules():
    text = "Return the sum of\n    the two numbers, as an integer.\n>>> add(1, 2)\n3"
    assert db._clean_paragraph(text) == "Return the sum of the two numbers, as an integer."
    assert db._clean_paragraph("Parameters\n----------") == ""
    assert db._clean_paragraph("x = {'a': [1, 2, 3], 'b': (4, 5, 6)} # 1234567890") == ""


# --- tokenizer -------------------------------------------------------------------------------
def test_train_tokenizer_is_deterministic():
    docs = db.general_english_documents(max_chars=100_000)
    a = db.train_tokenizer(docs, vocab_size=600)
    b = db.train_tokenizer(docs, vocab_size=600)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 600
    assert a.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]


def test_tokenizer_special_tokens_follow_llama(tokenizer):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.pad_token_id == 3
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<unk>", "<s>", "</s>", "<pad>"]
    ids = tokenizer("The patient was discharged home.")["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1  # one BOS, at the start
    assert 2 not in ids  # no EOS
    assert tokenizer.model_max_length == 1024


@pytest.mark.parametrize("text", [
    "Pt is a ___ yo M w/ hx of CHF, HTN, DM2 p/w SOB; BP 128/76, HR 88. s/p CABG x3 (2019).",
    "Name: ___  Unit No: ___\nAdmission Date: ___   Discharge Date: ___\n\tMeds: ASA 81mg PO QD",
    "Temp 38.5°C, SpO2 ≥ 92 % — “afebrile” overnight.",
])
def test_tokenizer_round_trips_clinical_text(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert 0 not in ids  # byte-level: nothing is unknown
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_batch_padding_uses_pad_id(tokenizer):
    batch = tokenizer(["short", "a somewhat longer sentence"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == 3
    assert batch["attention_mask"][0, -1].item() == 0


# --- model -----------------------------------------------------------------------------------
def test_saved_layout_is_standard_and_safetensors_only(built):
    names = {p.name for p in built.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "demo_base.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth", ".pkl")) for n in names)
    assert not any(p.name.startswith(".base.tmp") for p in built.parent.iterdir())


def test_model_loads_as_a_tiny_llama(model, tokenizer):
    assert isinstance(model, LlamaForCausalLM)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (64, 2, 4)
    assert cfg.num_key_value_heads == 4
    assert cfg.vocab_size == len(tokenizer)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (1, 2, 3)
    assert cfg.tie_word_embeddings is False
    assert cfg.max_position_embeddings == 1024
    # Trained, not random: the input and output embeddings are different matrices.
    assert not torch.equal(model.get_input_embeddings().weight, model.get_output_embeddings().weight)


def test_tiny_llama_config_overrides():
    cfg = db.tiny_llama_config(500, num_hidden_layers=1)
    assert cfg.vocab_size == 500 and cfg.num_hidden_layers == 1 and cfg.hidden_size == 64


def test_general_english_perplexity_is_low_and_clinical_is_higher(built, model, tokenizer):
    recipe = json.loads((built / "demo_base.json").read_text())
    _, heldout = db._split_heldout(db.general_english_documents())
    assert len(heldout) == recipe["n_heldout_documents"]
    general = db._perplexity(model, tokenizer, heldout)
    # Save/load reproduces the model the builder measured.
    assert general == pytest.approx(recipe["heldout_general_perplexity"], rel=1e-3)
    assert general < MAX_GENERAL_PERPLEXITY
    clinical = db._perplexity(model, tokenizer, CLINICAL_TEXTS)
    assert clinical > 1.5 * general  # the domain gap the demo closes


def test_recipe_is_recorded(built):
    recipe = json.loads((built / "demo_base.json").read_text())
    assert recipe["version"] == db.DEMO_BASE_VERSION
    assert recipe["n_documents"] > 1000 and recipe["n_train_tokens"] > 100_000
    assert recipe["steps"] == db.TRAIN_STEPS
    assert recipe["wall_time_s"]["total"] > 0
    assert recipe["clinical_probe_perplexity"] > recipe["heldout_general_perplexity"]


# --- caching ---------------------------------------------------------------------------------
def test_second_call_reuses_the_build(built):
    mtime = (built / "model.safetensors").stat().st_mtime_ns
    start = time.perf_counter()
    assert db.ensure_demo_base(built, progress=False) == built
    assert time.perf_counter() - start < 2.0
    assert (built / "model.safetensors").stat().st_mtime_ns == mtime


def test_incomplete_dir_is_rebuilt(built, fake_build, tmp_path):
    target = tmp_path / "base"
    shutil.copytree(built, target)
    (target / "model.safetensors").unlink()
    assert db.ensure_demo_base(target, progress=False) == target
    assert len(fake_build) == 1
    assert (target / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temp dirs left


def test_outdated_version_is_rebuilt(built, fake_build, tmp_path, monkeypatch):
    target = tmp_path / "base"
    shutil.copytree(built, target)
    monkeypatch.setattr(db, "DEMO_BASE_VERSION", "v-next")
    db.ensure_demo_base(target, progress=False)
    assert len(fake_build) == 1


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def failing(out_dir: Path, *, seed: int, progress: bool) -> dict:
        (out_dir / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(db, "_build", failing)
    with pytest.raises(KeyboardInterrupt):
        db.ensure_demo_base(tmp_path / "base", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_concurrent_build_that_finished_first_is_kept(built, tmp_path, monkeypatch):
    target = tmp_path / "base"

    def racing(out_dir: Path, *, seed: int, progress: bool) -> dict:
        shutil.copytree(built, target)  # another process completes its build meanwhile
        (target / "winner.txt").write_text("first")
        for f in built.iterdir():
            shutil.copy2(f, out_dir / f.name)
        return json.loads((built / "demo_base.json").read_text())

    monkeypatch.setattr(db, "_build", racing)
    assert db.ensure_demo_base(target, progress=False) == target
    assert (target / "winner.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]


def test_foreign_directory_is_never_replaced(fake_build, tmp_path):
    target = tmp_path / "my-llama"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    with pytest.raises(ClinpeftError, match="not a clinpeft demo base"):
        db.ensure_demo_base(target, progress=False)
    assert (target / "notes.txt").read_text() == "mine"
    assert fake_build == []


def test_default_location_honours_clinpeft_home(fake_build, tmp_path, monkeypatch):
    monkeypatch.setenv("CLINPEFT_HOME", str(tmp_path / "home"))
    assert db.clinpeft_home() == tmp_path / "home"
    assert db.demo_base_dir() == tmp_path / "home" / f"demo-base-{db.DEMO_BASE_VERSION}"
    assert db.ensure_demo_base(progress=False) == db.demo_base_dir()
    assert (db.demo_base_dir() / "model.safetensors").is_file()
    monkeypatch.delenv("CLINPEFT_HOME")
    assert db.clinpeft_home() == Path.home() / ".cache" / "clinpeft"


def test_a_build_leaves_the_callers_random_numbers_alone(tmp_path):
    """Building a demo model on first use must not change what a seeded run draws next."""
    def build(tmp):  # seeds and draws, as the demo builders do
        torch.manual_seed(123)
        torch.rand(10)
        (tmp / "done").write_text("yes")
        return {"built": True}

    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    assert db.build_into_place(tmp_path / "model", build, lambda p: (p / "done").is_file()) == {"built": True}
    assert torch.equal(torch.rand(3), expected)
    assert (tmp_path / "model" / "done").read_text() == "yes"


def test_the_demo_is_resolved_by_the_named_base_table_not_by_the_loader(demo_home, demo_base, monkeypatch):
    from clinpeft import bases
    from clinpeft.errors import ClinpeftError
    from clinpeft.modeling.base import resolve_base as loader_resolve

    monkeypatch.setenv("CLINPEFT_HOME", str(demo_home))
    assert bases.resolve_base("demo", progress=False) == demo_base
    assert bases.demo_built("demo") == str(demo_base)  # --base demo reaches the loader as the built folder
    assert bases.demo_built(str(demo_base)) == str(demo_base)  # anything else as given
    with pytest.raises(ClinpeftError, match="clinpeft.bases"):
        loader_resolve("demo", progress=False)
