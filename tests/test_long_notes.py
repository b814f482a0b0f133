"""`task.long_notes`: truncate (either end) or chunks (windows over the whole note, logits pooled per note)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clinpeft.config import DownstreamLoraSection, FinetuneConfig, load_config
from clinpeft.data.long_notes import LongNotes, encode_notes, special_tokens, window_starts
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.adapters import head_module
from clinpeft.modeling.classifier import build_classifier
from clinpeft.modeling.pooling import pool_windows
from clinpeft.recipes import evaluate, finetune
from conftest import predict_logits

FILLER = "BP 128/76 HR 88 RR 18 SpO2 96% RA. " * 12
KEYWORD = " Discharge diagnosis: pneumonia, sepsis, acute kidney injury."


@pytest.fixture(scope="module")
def tokenizer(tiny_llama):
    from clinpeft.modeling.base import load_tokenizer

    return load_tokenizer(tiny_llama)


def test_truncate_right_equals_the_tokenizers_own_truncation(tokenizer):
    texts = [FILLER, "Pt s/p CABG.", FILLER + KEYWORD]
    encoded = encode_notes(tokenizer, texts, LongNotes(40))
    assert encoded.windows == tokenizer(texts, truncation=True, max_length=40)["input_ids"]
    assert encoded.note_index == [0, 1, 2]


def test_truncate_left_keeps_the_end_and_the_special_tokens(tokenizer):
    prefix, suffix = special_tokens(tokenizer)
    assert prefix == [tokenizer.bos_token_id]
    ids = tokenizer(FILLER + KEYWORD, add_special_tokens=False)["input_ids"]
    [window] = encode_notes(tokenizer, [FILLER + KEYWORD], LongNotes(40, truncate_side="left")).windows
    assert window == prefix + ids[-(40 - len(prefix) - len(suffix)):] + suffix


def test_chunks_cover_the_whole_note_with_the_stride_and_count_what_is_cut(tokenizer):
    ids = tokenizer(FILLER, add_special_tokens=False)["input_ids"]
    n = len(ids)
    settings = LongNotes(32, mode="chunks", chunk_stride=8)
    encoded = encode_notes(tokenizer, [FILLER, "Pt s/p CABG."], settings)
    windows = [w for w, i in zip(encoded.windows, encoded.note_index) if i == 0]
    body = [w[1:] for w in windows]  # BOS stripped
    assert all(len(w) <= 32 for w in windows) and all(w[0] == tokenizer.bos_token_id for w in windows)
    assert [t for part in body[:-1] for t in part[:-8]] + body[-1] == ids  # the windows tile the note, 8 shared
    assert encoded.truncation() == {"notes_cut": 0, "n_notes": 2, "tokens_seen_share": 1.0}
    capped = encode_notes(tokenizer, [FILLER], LongNotes(32, mode="chunks", chunk_stride=8, max_chunks=2))
    assert len(capped.windows) == 2 and capped.truncation()["notes_cut"] == 1
    assert capped.truncation()["tokens_seen_share"] == pytest.approx((31 + 23) / n)
    truncated = encode_notes(tokenizer, [FILLER], LongNotes(32)).truncation()
    assert truncated["notes_cut"] == 1 and truncated["tokens_seen_share"] == pytest.approx(31 / n)


def test_window_starts_left_cap_keeps_the_end():
    assert window_starts(100, 30, 10, 2, "right") == [0, 20]
    assert window_starts(100, 30, 10, 2, "left") == [50, 70]  # the last window ends at token 100
    assert window_starts(100, 30, 10, 99, "right") == [0, 20, 40, 60, 80]


def test_pool_windows_max_and_mean():
    logits = torch.tensor([[1.0, -1.0], [3.0, -2.0], [0.5, 0.5]])
    index = torch.tensor([0, 0, 1])
    assert pool_windows(logits, index, 2, "max").tolist() == [[3.0, -1.0], [0.5, 0.5]]
    assert pool_windows(logits, index, 2, "mean").tolist() == [[2.0, -1.5], [0.5, 0.5]]


def test_stride_must_fit_in_a_window():
    with pytest.raises(ClinpeftError, match="chunk_stride"):
        load_config(FinetuneConfig, None, ["task.long_notes=chunks", "task.max_seq_len=32", "task.chunk_stride=32"])
    load_config(FinetuneConfig, None, ["task.max_seq_len=32"])  # truncate: the stride is unused


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_a_keyword_after_max_seq_len_changes_the_chunked_prediction_only(tiny_llama, tokenizer, pooling):
    """Deterministic: a fixed random tiny LLaMA whose head is set by hand to the direction of the final
    hidden state of the keyword's window, so that window scores highest (Cauchy-Schwarz); the keyword
    sits after token max_seq_len (checked)."""
    settings = LongNotes(64, mode="chunks", chunk_stride=16, chunk_pooling=pooling)
    clf = build_classifier(tiny_llama, "binary", 2, "head", None, DownstreamLoraSection(), "float32")
    assert len(tokenizer(FILLER)["input_ids"]) > 64  # the keyword comes after token 64
    keyword_window = encode_notes(tokenizer, [FILLER + KEYWORD], settings).windows[-1]
    with torch.no_grad():
        hidden = clf.model.model(torch.tensor([keyword_window])).last_hidden_state[0, -1]
        direction = hidden / hidden.norm()
        head_module(clf.model, clf.head_name).weight.copy_(torch.stack([direction, -direction]) * 3)
    notes = [FILLER, FILLER + KEYWORD]
    truncated = predict_logits(clf, notes, 64, progress=False)
    np.testing.assert_array_equal(truncated[0], truncated[1])  # the keyword is past the cut
    chunked = predict_logits(clf, notes, 64, progress=False, long_notes=settings)
    assert chunked[1, 0] > chunked[0, 0] + 1e-3  # the keyword's window raised the note's label-0 logit
    probs = torch.softmax(torch.tensor(chunked), -1)[:, 0]
    assert probs[1] > probs[0]


def test_finetune_with_chunks_records_settings_and_evaluate_applies_them(tiny_llama, synthetic_tasks, tmp_path):
    """Training takes the loss on pooled logits (a full epoch runs); bundle.json keeps long_notes so that
    evaluate reproduces the test predictions; metrics.json reports the truncation per split."""
    run, out = tmp_path / "run", tmp_path / "eval"
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}", "task.max_seq_len=48",
        "task.long_notes=chunks", "task.chunk_stride=8", "task.max_chunks=3", "task.chunk_pooling=mean",
        "train.batch_size=8", "train.grad_accum=1", "train.epochs=1", "train.lr=1e-2", "variant=lora", "lora.r=4",
        "eval.bootstrap_resamples=0"])
    metrics = finetune.main(config, run, progress=False)
    bundle = json.loads((run / "bundle.json").read_text())
    assert bundle["long_notes"] == {"max_seq_len": 48, "mode": "chunks", "truncate_side": "right",
                                    "chunk_stride": 8, "chunk_pooling": "mean", "max_chunks": 3}
    for split in ("train", "val", "test"):
        cut = metrics["truncation"][split]
        assert 0 <= cut["notes_cut"] <= cut["n_notes"] and 0 < cut["tokens_seen_share"] <= 1
    again = evaluate.main(run, synthetic_tasks["mor"] / "test.csv", out, progress=False, bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-6)
    assert again["truncation"]["eval"] == metrics["truncation"]["test"]
    lines = finetune.summary(metrics, run)
    share = metrics["truncation"]["test"]["notes_cut"] / metrics["truncation"]["test"]["n_notes"]
    cut_lines = [line for line in lines if line.startswith("note: notes longer than")]
    assert len(cut_lines) == any(t["notes_cut"] / t["n_notes"] > 0.05 for t in metrics["truncation"].values())
    assert share >= 0


def test_old_bundles_truncate_on_the_right():
    assert LongNotes.from_bundle({"max_seq_len": 128}) == LongNotes(128, "truncate", "right")
