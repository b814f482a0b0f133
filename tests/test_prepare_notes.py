"""`clinpeft prepare notes`: one test per rule, on MIMIC-IV-Note-shaped files with rows built to trip it."""

import gzip
import json

import pandas as pd
import pytest

from clinpeft.cli import main
from clinpeft.data.notes import in_test_split, load_corpus
from clinpeft.prepare.notes import Source, prepare_notes, read_chunks

MESSY = "  Name:  ___ \t Unit No:   ___\r\n\r\n\r\n\r\nChief   Complaint:\u00a0SOB  \n  "
MESSY_NORMALISED = "Name: ___ Unit No: ___\n\nChief Complaint: SOB"


@pytest.fixture(scope="module")
def raw(synthetic_corpus, tmp_path_factory) -> dict:
    """discharge.csv.gz (gzip) and radiology.csv (plain), with a messy note and two empty ones."""
    out = tmp_path_factory.mktemp("raw")
    discharge = pd.read_csv(synthetic_corpus["discharge"], dtype=str, keep_default_na=False)
    radiology = pd.read_csv(synthetic_corpus["radiology"], dtype=str, keep_default_na=False)
    discharge.loc[0, "text"] = MESSY
    discharge.loc[1, "text"] = " \n\t \r\n "  # whitespace only: empty once normalised
    radiology.loc[2, "text"] = ""
    paths = {"discharge": out / "discharge.csv.gz", "radiology": out / "radiology.csv"}
    with gzip.open(paths["discharge"], "wt") as handle:
        discharge.to_csv(handle, index=False)
    radiology.to_csv(paths["radiology"], index=False)
    return {**paths, "frames": {"discharge": discharge, "radiology": radiology},
            "messy_id": discharge.loc[0, "note_id"],
            "empty_ids": {discharge.loc[1, "note_id"], radiology.loc[2, "note_id"]}}


def prepare_cli(raw, out, *extra) -> dict:
    code = main(["prepare", "notes", "--discharge", str(raw["discharge"]), "--radiology", str(raw["radiology"]),
                 "--out", str(out), "--test-fraction", "0.3", "--quiet", *extra])
    assert code == 0
    return json.loads((out / "manifest.json").read_text())


def read_split(corpus, name) -> pd.DataFrame:
    from datasets import Dataset, concatenate_datasets

    manifest = json.loads((corpus / "manifest.json").read_text())
    shards = [Dataset.from_file(str(corpus / s)) for s in manifest["splits"][name]["shards"]]
    return concatenate_datasets(shards).to_pandas()


@pytest.fixture(scope="module")
def corpus(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    return out, prepare_cli(raw, out)


@pytest.fixture(scope="module")
def corpus_no_addenda(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "corpus"
    return out, prepare_cli(raw, out, "--note-types", "DS,rr")


def kept_notes(corpus_dir) -> pd.DataFrame:
    return pd.concat([read_split(corpus_dir, "train"), read_split(corpus_dir, "test")], ignore_index=True)


def test_whitespace_is_normalised(corpus, raw):
    notes = kept_notes(corpus[0]).set_index("note_id")
    assert notes.loc[raw["messy_id"], "text"] == MESSY_NORMALISED
    for text in notes["text"]:
        assert text == text.strip() and "\r" not in text and "\t" not in text and "  " not in text
        assert "\n\n\n" not in text and " \n" not in text and "\n " not in text


def test_deidentification_marks_are_kept(corpus, raw):
    notes = kept_notes(corpus[0]).set_index("note_id")["text"]
    originals = pd.concat(raw["frames"].values()).set_index("note_id")["text"]
    assert sum(t.count("___") for t in notes) > 100  # the synthetic notes are full of them
    for note_id, text in notes.items():
        assert text.count("___") == originals[note_id].count("___"), note_id


def test_empty_notes_are_dropped_and_counted(corpus, raw):
    directory, manifest = corpus
    assert manifest["dropped"]["empty"] == 2
    assert not raw["empty_ids"] & set(kept_notes(directory)["note_id"])
    by_file = {f["kind"]: f["dropped"]["empty"] for f in manifest["files"]}
    assert by_file == {"discharge": 1, "radiology": 1}


def test_addenda_kept_by_default_dropped_by_note_types(corpus, corpus_no_addenda, raw):
    raw_types = pd.concat(raw["frames"].values())["note_type"].value_counts().to_dict()
    assert raw_types.get("AD", 0) > 0 and raw_types.get("AR", 0) > 0  # the generator writes addenda
    with_addenda = kept_notes(corpus[0])["note_type"].value_counts().to_dict()
    assert with_addenda == {k: v - (1 if k in ("DS", "RR") else 0) for k, v in raw_types.items()}  # one empty each
    directory, manifest = corpus_no_addenda
    assert set(kept_notes(directory)["note_type"]) == {"DS", "RR"}
    assert manifest["note_types"] == ["DS", "RR"]  # upper-cased
    assert manifest["dropped"]["note_type"] == {"AD": raw_types["AD"], "AR": raw_types["AR"]}


def test_split_is_by_patient_with_pretrains_rule(corpus):
    directory, manifest = corpus
    train, test = read_split(directory, "train"), read_split(directory, "test")
    assert not set(train["subject_id"]) & set(test["subject_id"])
    assert all(in_test_split(s, 0.3, 0) for s in test["subject_id"])
    assert not any(in_test_split(s, 0.3, 0) for s in train["subject_id"])
    assert manifest["split_by"] == "subject_id" and manifest["seed"] == 0
    assert manifest["splits"]["test"]["patients"] == test["subject_id"].nunique() > 0


def test_manifest_counts_add_up(corpus_no_addenda, raw):
    directory, manifest = corpus_no_addenda
    rows = {kind: len(frame) for kind, frame in raw["frames"].items()}
    assert {f["kind"]: f["notes_read"] for f in manifest["files"]} == rows  # gzip and plain both read whole
    assert manifest["notes_read"] == sum(rows.values()) == manifest["notes_kept"] + manifest["notes_dropped"]
    assert manifest["notes_dropped"] == manifest["dropped"]["empty"] + sum(manifest["dropped"]["note_type"].values())
    splits = manifest["splits"]
    assert manifest["notes_kept"] == splits["train"]["notes"] + splits["test"]["notes"]
    assert len(read_split(directory, "train")) == splits["train"]["notes"]
    assert sum(f["notes_kept"] for f in manifest["files"]) == manifest["notes_kept"]


def test_missing_column_names_file_and_column(raw, tmp_path, capsys):
    bad = tmp_path / "radiology.csv"
    raw["frames"]["radiology"].drop(columns="note_type").to_csv(bad, index=False)
    out = tmp_path / "corpus"
    code = main(["prepare", "notes", "--discharge", str(raw["discharge"]), "--radiology", str(bad), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert err.startswith(f"error: {bad}: no column 'note_type'")
    assert not out.exists() and not list(tmp_path.glob(".corpus.tmp-*"))


def test_reader_streams_in_bounded_chunks(raw, corpus, tmp_path):
    """Memory holds one chunk: never more than chunk_rows notes, and the result does not depend on it."""
    source = Source(raw["discharge"], "discharge")
    chunks = list(read_chunks(source, chunk_rows=7))
    n_rows = len(raw["frames"]["discharge"])
    assert max(len(c["text"]) for c, _ in chunks) == 7 and len(chunks) == -(-n_rows // 7)
    progress = [read for _, read in chunks]
    assert progress == sorted(progress) and progress[-1] == raw["discharge"].stat().st_size  # compressed bytes
    small = prepare_notes([Source(raw["discharge"], "discharge"), Source(raw["radiology"], "radiology")],
                          tmp_path / "small", test_fraction=0.3, chunk_rows=7, shard_bytes=20_000, progress=False)
    assert len(small["splits"]["train"]["shards"]) > 1  # several Arrow shards, all read back
    for name in ("train", "test"):
        pd.testing.assert_frame_equal(read_split(tmp_path / "small", name), read_split(corpus[0], name))


def test_jsonl_and_txt_inputs_with_text_column(tmp_path):
    jsonl = tmp_path / "notes.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in [
        {"patient": 7, "body": "CXR:  clear.", "note_type": "RR"},
        {"patient": 7, "body": "  ", "note_type": "RR"},
        {"patient": 8, "body": "BP 120/80\t HR 80", "note_type": "RR"},
    ]) + "\n")
    out = tmp_path / "corpus"
    assert main(["prepare", "notes", "--input", str(jsonl), "--text-column", "body", "--subject-column", "patient",
                 "--test-fraction", "0.5", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    notes = kept_notes(out)
    assert sorted(notes["text"]) == ["BP 120/80 HR 80", "CXR: clear."]
    assert set(notes["subject_id"]) == {"7", "8"} and manifest["split_by"] == "subject_id"
    assert manifest["dropped"]["empty"] == 1
    # a .txt file is one note and has no patient id: the split falls back to per note
    (tmp_path / "a.txt").write_text("Pt with CHF.\n\n\n\nSOB.")
    (tmp_path / "b.txt").write_text("Chief complaint: chest pain.")
    out = tmp_path / "txt"
    assert main(["prepare", "notes", "--input", str(tmp_path / "a.txt"), str(tmp_path / "b.txt"),
                 "--test-fraction", "0.5", "--seed", "1", "--out", str(out), "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_by"] == "note" and manifest["notes_kept"] == 2
    assert set(kept_notes(out)["text"]) == {"Pt with CHF.\n\nSOB.", "Chief complaint: chest pain."}


@pytest.mark.slow
def test_pretrain_reads_prepared_corpus_with_val_split(corpus, tiny_llama, tmp_path):
    directory, manifest = corpus
    before = sorted(p.relative_to(directory) for p in directory.rglob("*"))
    recipe = tmp_path / "r.yaml"
    recipe.write_text("{}\n")
    overrides = [f"model.base={tiny_llama}", f"data.paths=[{directory}]", "data.val_fraction=0.3",
                 "data.max_seq_len=128", "train.batch_size=4", "train.grad_accum=1", "train.max_steps=2",
                 "eval.train_max_blocks=4", "eval.base_model=false", "peft.r=4"]
    assert main(["pretrain", str(recipe), *overrides, "--out", str(tmp_path / "run"), "--quiet"]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert isinstance(run["val_ppl"], float) and run["val_ppl"] > 1  # the sweep's contract
    assert run["val_blocks"] > 0 and run["val_notes"] > 0 and run["split_by"] == "subject_id"
    assert run["train_notes"] + run["val_notes"] == manifest["splits"]["train"]["notes"]  # val comes out of train
    assert run["test_notes"] == manifest["splits"]["test"]["notes"]  # the prepared test split, as it is
    assert sorted(p.relative_to(directory) for p in directory.rglob("*")) == before  # the corpus is not written into
    # the same corpus through load_corpus: val patients are train patients of the corpus, disjoint from the rest
    from clinpeft.config import PretrainConfig, load_config

    config = load_config(PretrainConfig, None, [f"data.paths=[{directory}]", "data.val_fraction=0.3"])
    splits, _ = load_corpus(config.data, tmp_path / "cache")
    prepared_train = read_split(directory, "train")
    train = dict(zip(prepared_train["text"], prepared_train["subject_id"]))
    val_patients = {train[t] for t in splits["val"]["text"]}
    assert val_patients and not val_patients & {train[t] for t in splits["train"]["text"]}
    assert not val_patients & set(read_split(directory, "test")["subject_id"])
