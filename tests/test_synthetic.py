"""Synthetic MIMIC-style data (clinpeft.demo.synthetic): shape, determinism, labels, learnability."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinpeft.data import definitions as D
from clinpeft.demo import synthetic as S

DEATH_WORDS = re.compile(r"expired|died|death|deceased|passed away|morgue|autopsy", re.IGNORECASE)
SPLITS = ("train", "val", "test")
DISCHARGE_HEADINGS = (
    "Name:", "Admission Date:", "Date of Birth:", "Service:", "Allergies:", "Chief Complaint:",
    "Major Surgical or Invasive Procedure:", "History of Present Illness:", "Past Medical History:", "Social History:",
    "Family History:", "Physical Exam:", "Pertinent Results:", "Brief Hospital Course:", "Medications on Admission:",
    "Discharge Medications:", "Discharge Disposition:", "Discharge Diagnosis:", "Discharge Condition:",
    "Discharge Instructions:", "Followup Instructions:",
)
RADIOLOGY_HEADINGS = ("EXAMINATION:", "INDICATION:", "TECHNIQUE:", "COMPARISON:", "FINDINGS:", "IMPRESSION:")


def read_split(task_dir: Path, split: str) -> pd.DataFrame:
    return pd.read_csv(task_dir / f"{split}.csv", dtype=str, keep_default_na=False)


def read_notes(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def label_vocab(task_dir: Path) -> list[str]:
    return (task_dir / "labels.txt").read_text(encoding="utf-8").splitlines()


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return S.write_demo_data(tmp_path_factory.mktemp("quick"), size="quick", seed=0)


@pytest.fixture(scope="module")
def default_tasks(tmp_path_factory):
    return S.write_tasks(tmp_path_factory.mktemp("default"), n_patients=S.SIZES["default"]["tasks"], seed=0)


# ---------------------------------------------------------------------------------------------
# determinism and API
# ---------------------------------------------------------------------------------------------


def _write_small(out: Path, seed: int) -> dict[str, bytes]:
    S.write_pretraining_corpus(out / "corpus", n_patients=12, seed=seed)
    S.write_tasks(out / "tasks", n_patients=80, seed=seed)
    return all_files(out)


def test_same_seed_gives_identical_bytes_and_another_seed_does_not(tmp_path):
    a, b, c = _write_small(tmp_path / "a", 7), _write_small(tmp_path / "b", 7), _write_small(tmp_path / "c", 8)
    assert len(a) == 2 + 5 * 4  # two corpus files, five task dirs of four files
    assert a == b
    changed = [name for name in a if a[name] != c[name]]
    assert set(changed) >= {"corpus/discharge.csv.gz", "corpus/radiology.csv.gz", "tasks/mor/train.csv",
                            "tasks/diag/test.csv"}


def test_write_demo_data_layout(quick):
    assert set(quick) == {"corpus", "tasks"}
    assert set(quick["corpus"]) == {"discharge", "radiology"}
    assert (quick["corpus"]["discharge"].name == "discharge.csv.gz"
            and quick["corpus"]["discharge"].parent.name == "corpus")
    assert tuple(quick["tasks"]) == S.TASKS
    for task, task_dir in quick["tasks"].items():
        assert task_dir.name == task and task_dir.parent.name == "tasks"
        assert sorted(p.name for p in task_dir.iterdir()) == ["labels.txt", "test.csv", "train.csv", "val.csv"]


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="size"):
        S.write_demo_data(tmp_path, size="huge")
    with pytest.raises(ValueError, match="unknown task"):
        S.write_tasks(tmp_path, n_patients=100, tasks=["mortality"])
    with pytest.raises(ValueError, match="too small"):
        S.write_tasks(tmp_path, n_patients=10)


def test_write_tasks_writes_only_the_tasks_asked_for(tmp_path):
    dirs = S.write_tasks(tmp_path, n_patients=60, seed=1, tasks=["mor", "proc"])
    assert list(dirs) == ["mor", "proc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mor", "proc"]


def test_code_cutting_and_los_classes():
    assert D.cut_dx_code("0389") == "038" and D.cut_dx_code("00845") == "008" and D.cut_dx_code("4019") == "401"
    assert D.cut_dx_code("V4581") == "V458" and D.cut_dx_code("E8889") == "E888"
    assert D.cut_proc_code("0066") == "006" and D.cut_proc_code("9671") == "967" and D.cut_proc_code("966") == "966"
    assert [D.los_class(d) for d in (0.5, 3.0, 3.01, 7.0, 7.5, 14.0, 14.2, 60)] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_patient_split_is_70_10_20_and_seeded():
    split = S.patient_split(1000, seed=3)
    assert [split.count(s) for s in SPLITS] == [700, 100, 200]
    assert split == S.patient_split(1000, seed=3)
    assert split != S.patient_split(1000, seed=4)


# ---------------------------------------------------------------------------------------------
# pretraining corpus
# ---------------------------------------------------------------------------------------------


def test_corpus_is_mimic_iv_note_shaped(quick):
    paths = quick["corpus"]
    for path in paths.values():
        assert path.read_bytes()[:2] == b"\x1f\x8b"  # gzip
        with gzip.open(path, "rt", encoding="utf-8") as f:
            assert f.readline().strip() == ",".join(S.CORPUS_COLUMNS)
    discharge, radiology = read_notes(paths["discharge"]), read_notes(paths["radiology"])
    for notes in (discharge, radiology):
        assert tuple(notes.columns) == S.CORPUS_COLUMNS
        assert notes["subject_id"].str.fullmatch(r"1\d{7}").all()
        assert notes["charttime"].str.fullmatch(r"21[1-9]\d-\d\d-\d\d \d\d:\d\d:\d\d").all()
        assert (notes["storetime"] > notes["charttime"]).all()  # same-format strings sort as times
        ids = notes["note_id"].str.extract(r"^(\d{8})-([A-Z]{2})-(\d+)$")
        assert ids.notna().all().all()
        assert ((ids[0] == notes["subject_id"]).all() and (ids[1] == notes["note_type"]).all()
                and (ids[2] == notes["note_seq"]).all())
        assert notes["text"].str.contains("___", regex=False).all()  # de-identified spans
    assert set(discharge["note_type"]) <= {"DS", "AD"} and (discharge["note_type"] == "DS").mean() > 0.85
    assert set(radiology["note_type"]) <= {"RR", "AR"} and (radiology["note_type"] == "RR").mean() > 0.85
    assert discharge["hadm_id"].str.fullmatch(r"2\d{7}").all()
    assert radiology["hadm_id"].str.fullmatch(r"(2\d{7})?").all()  # empty: outpatient study, as in MIMIC-IV
    assert pd.concat([discharge["note_id"], radiology["note_id"]]).is_unique
    assert discharge["charttime"].str.endswith("00:00:00").all()  # discharge notes are charted on the day
    assert set(radiology["hadm_id"]) - {""} <= set(discharge["hadm_id"])


def test_corpus_notes_have_mimic_headings_and_moderate_length(quick):
    discharge = read_notes(quick["corpus"]["discharge"])
    summaries = discharge.loc[discharge["note_type"] == "DS", "text"]
    for text in summaries:
        positions = [text.find(h) for h in DISCHARGE_HEADINGS]
        assert -1 not in positions and positions == sorted(positions)
        assert "\n\n" in text  # sections separated by blank lines
    words = summaries.str.split().str.len()
    assert 150 <= words.mean() <= 400 and words.min() >= 100 and words.max() <= 600
    radiology = read_notes(quick["corpus"]["radiology"])
    for text in radiology["text"]:
        positions = [text.find(h) for h in RADIOLOGY_HEADINGS]
        assert -1 not in positions and positions == sorted(positions)
    words = radiology["text"].str.split().str.len()
    assert 50 <= words.mean() <= 150
    assert re.search(r"\bBP \d+/\d+ HR \d+ RR \d+ SpO2 \d+%", " ".join(summaries))  # clinical shorthand


# ---------------------------------------------------------------------------------------------
# downstream tasks
# ---------------------------------------------------------------------------------------------


def test_task_files_have_van_aken_shape(quick):
    for task, task_dir in quick["tasks"].items():
        vocab = label_vocab(task_dir)
        assert vocab and len(vocab) == len(set(vocab))
        for split in SPLITS:
            frame = read_split(task_dir, split)
            assert tuple(frame.columns) == S.TASK_COLUMNS + S.SUBGROUP_COLUMNS, (task, split)
            assert set(frame["gender"]) <= {"F", "M"} and set(frame["age_group"]) <= {"18-44", "45-64", "65-89", "90+"}
            assert frame["id"].str.fullmatch(r"\d+").all()
            for text in frame["text"]:
                blocks = text.split("\n\n")
                assert [b.split("\n", 1)[0] for b in blocks] == [f"{h}:" for h in D.ADMISSION_SECTIONS]
            words = frame["text"].str.split().str.len()
            assert words.min() >= 60 and words.max() <= 300
            assert frame["text"].str.contains("___", regex=False).mean() > 0.5
            assert not frame["text"].str.contains(DEATH_WORDS).any(), (task, split)
            codes = {c for cell in frame["label"] for c in cell.split(",") if c}
            assert codes <= set(vocab), (task, split)


def test_ids_unique_and_split_by_patient_the_same_way_for_every_task(quick):
    n_patients = S.SIZES["quick"]["tasks"]
    expected = S.patient_split(n_patients, seed=0)
    split_of_id: dict[str, str] = {}
    for task_dir in quick["tasks"].values():
        frames = {split: read_split(task_dir, split) for split in SPLITS}
        ids = pd.concat([f["id"] for f in frames.values()])
        assert ids.is_unique
        subjects = {split: {S.subject_id_of(int(i)) for i in f["id"]} for split, f in frames.items()}
        assert not (subjects["train"] & subjects["val"] or subjects["train"] & subjects["test"]
                    or subjects["val"] & subjects["test"])
        for split, f in frames.items():
            assert all(expected[S.subject_id_of(int(i)) - 1] == split for i in f["id"])
            for i in f["id"]:
                assert split_of_id.setdefault(i, split) == split
    share = pd.Series(expected).value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.01) and share["test"] == pytest.approx(0.2, abs=0.01)
    readmitted = [i for i in split_of_id if int(i) % 10 == 1]
    assert readmitted  # some patients have two admissions (hadm_id = 100000 + 10 * patient + k)


def test_binary_and_los_labels(quick):
    tasks = quick["tasks"]
    assert label_vocab(tasks["mor"]) == ["0", "1"] and label_vocab(tasks["pmv"]) == ["0", "1"]
    assert label_vocab(tasks["los"]) == ["0", "1", "2", "3"]
    mor = pd.concat([read_split(tasks["mor"], s) for s in SPLITS])
    los = pd.concat([read_split(tasks["los"], s) for s in SPLITS])
    pmv = pd.concat([read_split(tasks["pmv"], s) for s in SPLITS])
    assert 0.08 <= (mor["label"] == "1").mean() <= 0.22
    # LOS leaves out the patients who died (van Aken); PMV is a smaller subset of the mortality cohort
    assert set(los["id"]) == set(mor.loc[mor["label"] == "0", "id"])
    assert set(pmv["id"]) < set(mor["id"]) and len(pmv) < 0.5 * len(mor)
    assert 0.15 <= (pmv["label"] == "1").mean() <= 0.45
    for split in SPLITS:
        assert set(read_split(tasks["los"], split)["label"]) == {"0", "1", "2", "3"}, split
        assert set(read_split(tasks["mor"], split)["label"]) == {"0", "1"}, split
        assert set(read_split(tasks["pmv"], split)["label"]) == {"0", "1"}, split
    # the same admission has the same text in every task
    merged = mor.merge(los, on="id", suffixes=("_mor", "_los"))
    assert (merged["text_mor"] == merged["text_los"]).all()


def test_multilabel_codes(quick):
    for task, width_ok in (("diag", lambda c: len(c) == (4 if c[0] in "VE" else 3)),
                           ("proc", lambda c: len(c) == 3 and c.isdigit())):
        task_dir = quick["tasks"][task]
        vocab = label_vocab(task_dir)
        assert vocab == sorted(vocab) and all(width_ok(c) for c in vocab), vocab
        cells = pd.concat([read_split(task_dir, s)["label"] for s in SPLITS])
        for cell in cells:
            codes = cell.split(",") if cell else []
            assert len(codes) == len(set(codes))
        if task == "diag":
            assert 30 <= len(vocab) <= 65
            assert {"008", "038", "042", "070"} <= set(vocab)  # leading zeros kept
            assert any(c.startswith("V") for c in vocab) and any(c.startswith("E") for c in vocab)
            assert (cells != "").all()
        else:
            assert 15 <= len(vocab) <= 30
            assert {"004", "006", "033"} <= set(vocab)
            assert 0.05 < (cells == "").mean() < 0.5  # admissions without a procedure: empty cell


def test_csvs_round_trip_through_pandas_unchanged(quick):
    for task_dir in quick["tasks"].values():
        for split in SPLITS:
            path = task_dir / f"{split}.csv"
            frame = read_split(task_dir, split)
            assert frame.to_csv(index=False, lineterminator="\n").encode("utf-8") == path.read_bytes()
    diag = read_split(quick["tasks"]["diag"], "train")
    assert diag["label"].str.contains(r"(?:^|,)0\d\d(?:,|$)").any()  # e.g. "038" stays "038"


# ---------------------------------------------------------------------------------------------
# learnability: a bag of words finds the signal, but not all of it
# ---------------------------------------------------------------------------------------------


def _multilabel_matrix(cells: pd.Series, vocab: list[str]) -> np.ndarray:
    index = {c: j for j, c in enumerate(vocab)}
    y = np.zeros((len(cells), len(vocab)), dtype=int)
    for i, cell in enumerate(cells):
        for code in filter(None, cell.split(",")):
            y[i, index[code]] = 1
    return y


def _tfidf_auroc(task: str, task_dir: Path) -> float:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    train, test = read_split(task_dir, "train"), read_split(task_dir, "test")
    vectorizer = TfidfVectorizer(min_df=2, sublinear_tf=True)
    x_train, x_test = vectorizer.fit_transform(train["text"]), vectorizer.transform(test["text"])
    if task in ("mor", "pmv"):
        model = LogisticRegression(solver="liblinear").fit(x_train, train["label"].astype(int))
        return roc_auc_score(test["label"].astype(int), model.decision_function(x_test))
    if task == "los":  # macro one-vs-one, as van Aken
        model = LogisticRegression(solver="newton-cg").fit(x_train, train["label"])
        return roc_auc_score(test["label"], model.predict_proba(x_test), multi_class="ovo", labels=model.classes_)
    # DIAG / PROC: per-label scores, macro over labels with both classes in train and test
    vocab = label_vocab(task_dir)
    y_train, y_test = _multilabel_matrix(train["label"], vocab), _multilabel_matrix(test["label"], vocab)
    aurocs = []
    for j in range(len(vocab)):
        if 0 < y_train[:, j].sum() < len(y_train) and 0 < y_test[:, j].sum() < len(y_test):
            model = LogisticRegression(solver="liblinear").fit(x_train, y_train[:, j])
            aurocs.append(roc_auc_score(y_test[:, j], model.decision_function(x_test)))
    assert len(aurocs) >= 0.8 * len(vocab)
    return float(np.mean(aurocs))


@pytest.mark.parametrize("task", S.TASKS)
def test_tfidf_logistic_regression_learns_but_does_not_solve(default_tasks, task):
    pytest.importorskip("sklearn")
    auroc = _tfidf_auroc(task, default_tasks[task])
    assert 0.6 < auroc < 0.97, f"{task}: test AUROC {auroc:.3f}"
