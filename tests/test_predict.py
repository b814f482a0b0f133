"""`clinpeft predict` and `clinpeft.load(RUN).predict(...)`: the probabilities `evaluate` and the run's own
predictions.csv give, on CSV / CSV.GZ / JSONL, in input order; one clear line for each bad input."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pandas as pd
import pytest

import clinpeft
from clinpeft.cli import main
from clinpeft.config import FinetuneConfig, load_config
from clinpeft.data.predictions import probability_columns
from clinpeft.recipes import evaluate, finetune, predict


@pytest.fixture(scope="module")
def diag_run(tiny_llama, clinical_run, synthetic_tasks, tmp_path_factory):
    """A multilabel run on the stacked LoRAs, notes in chunks (so predict must apply the bundle's settings)."""
    run = tmp_path_factory.mktemp("predict") / "diag"
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", f"task.path={synthetic_tasks['diag']}", "task.max_seq_len=64",
        "task.long_notes=chunks", "task.chunk_stride=8", "task.max_chunks=4", "train.batch_size=8",
        "train.grad_accum=1", "train.epochs=1", "train.lr=1e-2", "lora.r=4", "variant=clinical_frozen+downstream",
        f"clinical_adapter={clinical_run}", "eval.bootstrap_resamples=0"])
    finetune.main(config, run, progress=False)
    return run


def test_probability_columns_are_plain_and_unique():
    assert probability_columns(["<=3", "(3,7]", "V45.8", "a b", "a-b", ""]) == \
        ["p_3", "p_3_7", "p_V45_8", "p_a_b", "p_a_b_2", "p_label"]


def test_predict_equals_evaluate_and_the_runs_predictions(diag_run, synthetic_tasks, tmp_path, capsys):
    test_csv = synthetic_tasks["diag"] / "test.csv"
    assert main(["predict", str(diag_run), "--notes", str(test_csv), "--out", str(tmp_path / "p"),
                 "--batch-size", "3", "--quiet"]) == 0
    assert "notes scored for diag" in capsys.readouterr().out
    scored = pd.read_csv(tmp_path / "p" / "predictions.csv", dtype={"id": str, "predicted": str},
                         keep_default_na=False)
    header = json.loads((tmp_path / "p" / "labels.json").read_text())
    labels = (synthetic_tasks["diag"] / "labels.txt").read_text().split()
    assert list(header["columns"].values()) == labels and header["threshold"] == 0.5
    assert list(scored.columns) == ["id", "predicted", *header["columns"]]
    # the same columns and map as the run's own predictions.csv
    assert json.loads((tmp_path / "p" / "predictions_columns.json").read_text()) == header["columns"]
    assert json.loads((diag_run / "predictions_columns.json").read_text()) == header["columns"]
    own = pd.read_csv(diag_run / "predictions.csv", dtype={"id": str})
    assert scored["id"].tolist() == own["id"].tolist()  # input order restored
    probs = scored[list(header["columns"])].to_numpy()
    np.testing.assert_allclose(probs, own[list(header["columns"])].to_numpy(), atol=1e-5)
    evaluate.main(diag_run, test_csv, tmp_path / "e", progress=False, bootstrap_resamples=0)
    evaluated = pd.read_csv(tmp_path / "e" / "predictions.csv")
    np.testing.assert_allclose(probs, evaluated[list(header["columns"])].to_numpy(), atol=1e-5)
    expected = [",".join(label for label, p in zip(labels, row) if p >= 0.5) for row in probs]
    assert scored["predicted"].tolist() == expected
    # the Python API, for notebooks
    texts = pd.read_csv(test_csv)["text"].tolist()
    np.testing.assert_allclose(clinpeft.load(diag_run).predict(texts), probs, atol=1e-5)


def test_jsonl_gzip_and_missing_ids_give_the_same_scores(diag_run, synthetic_tasks, tmp_path):
    frame = pd.read_csv(synthetic_tasks["diag"] / "test.csv", dtype=str).head(6)
    frame[["text"]].to_json(tmp_path / "notes.jsonl", orient="records", lines=True)
    with gzip.open(tmp_path / "notes.csv.gz", "wt") as handle:
        frame.rename(columns={"text": "body", "id": "hadm"}).to_csv(handle, index=False)
    predict.main(diag_run, tmp_path / "notes.jsonl", tmp_path / "a", progress=False, chunk_rows=4)
    predict.main(diag_run, tmp_path / "notes.csv.gz", tmp_path / "b", text_column="body", id_column="hadm",
                 progress=False, chunk_rows=4)
    a, b = pd.read_csv(tmp_path / "a" / "predictions.csv"), pd.read_csv(tmp_path / "b" / "predictions.csv", dtype=str)
    assert a["id"].tolist() == [1, 2, 3, 4, 5, 6] and b["id"].tolist() == frame["id"].tolist()
    np.testing.assert_allclose(a.iloc[:, 1:-1].to_numpy(), b.iloc[:, 1:-1].astype(float).to_numpy(), atol=1e-6)


def test_single_label_prediction_is_the_argmax(tiny_llama, synthetic_tasks, tmp_path):
    run = tmp_path / "los"
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_llama}", f"task.path={synthetic_tasks['los']}", "task.max_seq_len=48", "variant=head",
        "train.batch_size=8", "train.grad_accum=1", "train.epochs=1", "eval.bootstrap_resamples=0",
        "model.pooling=mean"])
    finetune.main(config, run, progress=False)
    result = predict.main(run, synthetic_tasks["los"] / "val.csv", tmp_path / "p", progress=False)
    scored = pd.read_csv(tmp_path / "p" / "predictions.csv", dtype={"predicted": str})
    probs = scored[list(result["columns"])].to_numpy()
    labels = list(result["columns"].values())
    assert scored["predicted"].tolist() == [labels[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def error_of(capsys, *argv) -> str:
    assert main(["predict", *map(str, argv), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    return err


def test_bad_inputs_give_one_line_and_no_output(diag_run, clinical_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert "no such file" in error_of(capsys, diag_run, "--notes", tmp_path / "nope.csv", "--out", out)
    (tmp_path / "cols.csv").write_text("id,body\n1,chest pain\n")
    assert "no column 'text'" in error_of(capsys, diag_run, "--notes", tmp_path / "cols.csv", "--out", out)
    (tmp_path / "empty.csv").write_text("id,text\n1,chest pain\n2,  \n")
    assert "row 3: empty text" in error_of(capsys, diag_run, "--notes", tmp_path / "empty.csv", "--out", out)
    (tmp_path / "latin.csv").write_bytes(b"id,text\n1,chest pain\n2,caf\xe9 au lait\n")
    err = error_of(capsys, diag_run, "--notes", tmp_path / "latin.csv", "--out", out)
    assert "line 3: not UTF-8 (byte 0xe9" in err and "caf" not in err  # no note text in errors
    good = tmp_path / "good.csv"
    good.write_text("id,text\n1,chest pain\n")
    assert "pretrain" in error_of(capsys, clinical_run, "--notes", good, "--out", out)
    (tmp_path / "not-a-run").mkdir()  # beside --out: an --out inside an input is refused first (test_no_data_loss)
    assert "not a `clinpeft finetune` run" in error_of(capsys, tmp_path / "not-a-run", "--notes", good, "--out", out)
    moved = tmp_path / "moved"
    shutil.copytree(diag_run, moved)
    bundle = json.loads((moved / "bundle.json").read_text())
    (moved / "bundle.json").write_text(json.dumps({**bundle, "base_model": str(tmp_path / "gone")}))
    assert "--base" in error_of(capsys, moved, "--notes", good, "--out", out)
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))
    assert main(["predict", str(moved), "--notes", str(good), "--out", str(out), "--base", bundle["base_model"],
                 "--quiet"]) == 0


def test_import_clinpeft_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, clinpeft; assert callable(clinpeft.load); print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_encoder_baseline_with_chunks_predicts_as_it_evaluates(tiny_bert, synthetic_tasks, tmp_path):
    """A BERT run: every window carries [CLS] ... [SEP]; predict gives the run's own test probabilities."""
    from clinpeft.data.long_notes import LongNotes, encode_notes
    from clinpeft.modeling.base import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    encoded = encode_notes(tokenizer, ["chest pain " * 40], LongNotes(24, mode="chunks", chunk_stride=4))
    assert len(encoded.windows) > 1
    assert all(w[0] == tokenizer.cls_token_id and w[-1] == tokenizer.sep_token_id for w in encoded.windows)
    run = tmp_path / "bert"
    config = load_config(FinetuneConfig, None, [
        f"model.base={tiny_bert}", f"task.path={synthetic_tasks['mor']}", "task.max_seq_len=32", "variant=full",
        "task.long_notes=chunks", "task.chunk_stride=4", "task.max_chunks=3", "train.batch_size=8",
        "train.grad_accum=1", "train.epochs=1", "eval.bootstrap_resamples=0"])
    finetune.main(config, run, progress=False)
    result = predict.main(run, synthetic_tasks["mor"] / "test.csv", tmp_path / "p", progress=False)
    scored = pd.read_csv(tmp_path / "p" / "predictions.csv")
    own = pd.read_csv(run / "predictions.csv")
    columns = list(result["columns"])
    np.testing.assert_allclose(scored[columns].to_numpy(), own[columns].to_numpy(), atol=1e-5)
