"""`clinpeft prepare mimic3-tasks` and `prepare pmv` on generated MIMIC-III tables whose answer is known.

One test per rule of `clinpeft.prepare.mimic3` (its docstring lists them), \
each on rows of `mimic3_tables.SCENARIOS` built to trip it,
plus one per validation error (one line, exit 2, nothing written).
"""

import json
import shutil

import pandas as pd
import pytest

from clinpeft.cli import main
from clinpeft.data.definitions import ADMISSION_SECTIONS
from clinpeft.data.tasks import load_task
from clinpeft.demo.mimic3_tables import write_mimic3_tables
from clinpeft.prepare import mimic3

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The tables (gzip), their truth, and the four tasks + PMV built once through the CLI."""
    root = tmp_path_factory.mktemp("mimic3")
    truth = write_mimic3_tables(root / "mimic", n_patients=30, seed=0)
    assert main(["prepare", "mimic3-tasks", "--mimic-dir", str(root / "mimic"), "--out", str(root / "tasks"),
                 "--quiet"]) == 0
    pmv_labels = truth.write_pmv_labels(root / "pmv_labels.csv")
    assert main(["prepare", "pmv", "--admission-notes", str(root / "tasks" / "mor"),
                 "--labels", str(root / "pmv_labels.csv"), "--out", str(root / "tasks" / "pmv"), "--quiet"]) == 0
    return {"root": root, "truth": truth, "tasks": root / "tasks", "pmv_labels": pmv_labels}


def rows(task_dir) -> pd.DataFrame:
    """All splits of a task, with a split column; ids as ints."""
    frames = [pd.read_csv(task_dir / f"{s}.csv", dtype=str, keep_default_na=False).assign(split=s) for s in SPLITS]
    frame = pd.concat(frames, ignore_index=True)
    frame["id"] = frame["id"].astype(int)
    return frame.set_index("id")


def scenario(built, name):
    truth = built["truth"]
    return truth.admissions[truth.scenarios[name]]


# --------------------------------------------------------------------------------------------
# The output format
# --------------------------------------------------------------------------------------------


def test_tasks_load_and_match_the_ground_truth(built):
    """Every task loads with load_task; its ids, labels and texts are exactly the generator's."""
    for task in ("mor", "los", "diag", "proc"):
        data = load_task(built["tasks"] / task)
        assert data.kind == ("multilabel" if task in ("diag", "proc") else "single_label")
        got = rows(built["tasks"] / task)
        expected = built["truth"].expected(task)
        assert set(got.index) == set(expected), task
        for hadm, (_, text, label) in expected.items():
            assert got.loc[hadm, "label"] == label, (task, hadm)
            if text is not None:
                assert got.loc[hadm, "text"] == text, (task, hadm)


def test_manifest_counts_per_split_and_class(built):
    import json

    for task in ("mor", "los", "diag", "proc", "pmv"):
        manifest = json.loads((built["tasks"] / task / "manifest.json").read_text())
        got = rows(built["tasks"] / task)
        for split in SPLITS:
            part = got[got["split"] == split]
            assert manifest["splits"][split]["rows"] == len(part)
            labels = part["label"].str.split(",").explode()
            assert manifest["splits"][split]["labels"] == {
                k: int(v) for k, v in labels[labels != ""].value_counts().items()}
    top = json.loads((built["tasks"] / "manifest.json").read_text())
    assert top["counts"]["dropped_notes_newborn"] == 1 and top["counts"]["dropped_admissions_no_report"] == 2


# --------------------------------------------------------------------------------------------
# Notes: which admissions, which texts
# --------------------------------------------------------------------------------------------


def test_newborn_admissions_excluded(built):
    assert scenario(built, "newborn").hadm_id not in rows(built["tasks"] / "mor").index


def test_only_discharge_summaries(built):
    mor = rows(built["tasks"] / "mor")
    assert scenario(built, "only_nursing_note").hadm_id not in mor.index
    kept = scenario(built, "physician_note_too")
    assert kept.hadm_id in mor.index and "physicianmarker" not in mor.loc[kept.hadm_id, "text"]
    assert not mor["text"].str.contains("PORTABLE AP|ECG: sinus").any()  # other categories never reach a note


def test_addenda_appended_after_the_report(built):
    """The addendum (filed first, dated later) supplies the social history the report lacks."""
    expected = scenario(built, "addendum_first_in_file")
    text = rows(built["tasks"] / "los").loc[expected.hadm_id, "text"]
    assert text.endswith("SOCIAL HISTORY: Lives alone. Quit tobacco.") and text == expected.text
    # an empty addendum is dropped, not fatal
    assert scenario(built, "empty_addendum").hadm_id in rows(built["tasks"] / "los").index


def test_admissions_without_a_report_dropped(built):
    mor = rows(built["tasks"] / "mor")
    assert scenario(built, "addendum_only").hadm_id not in mor.index
    assert scenario(built, "empty_report_and_addendum").hadm_id not in mor.index  # an empty Report is no Report


def test_eight_headings_in_order_whatever_the_source_order_and_case(built):
    expected = scenario(built, "shuffled_odd_case")
    text = rows(built["tasks"] / "los").loc[expected.hadm_id, "text"]
    assert text == expected.text
    assert [block.split(":", 1)[0] for block in text.split("\n\n")] == list(ADMISSION_SECTIONS)


def test_section_ends_at_blank_line_and_new_heading(built):
    """A blank line before '2. ...:' does not end present illness (digit); '\\n\\nPertinent Results:' does."""
    expected = scenario(built, "blank_line_rules")
    text = rows(built["tasks"] / "los").loc[expected.hadm_id, "text"]
    assert "PRESENT ILLNESS: Pt with 2 days of fever.  2. also reports cough: since Monday Neuro: intact\n\n" in text
    assert "Pertinent" not in text and "Treated and improved" not in text  # irrelevant sections never leak in


def test_extract_sections_rules():
    note = ("Service: MEDICINE\n\nallergies:\n\nCHIEF COMPLAINT:\nfever\n\n"
            "History of Present Illness:\nline one\nline two"
            "\n\n\nPast Medical History:\nHTN\n\nFamily History:\nnone")  # family history has no end: not found
    sections = mimic3.extract_sections(note)
    assert sections == ("fever", "line one line two", "HTN", "", "", "", "", "")


def test_kept_note_rule(built):
    los = rows(built["tasks"] / "los")
    assert scenario(built, "irrelevant_only").hadm_id not in los.index  # allergies + exam only: dropped
    for name in ("missing_sections", "only_medical_history"):
        expected = scenario(built, name)
        assert los.loc[expected.hadm_id, "text"] == expected.text  # kept, the 8 headings all there
    assert los.loc[scenario(built, "missing_sections").hadm_id, "text"].endswith("SOCIAL HISTORY: ")


def test_death_mentions_removed_for_mor_only(built):
    expected = scenario(built, "death_mentions")
    mor = rows(built["tasks"] / "mor").loc[expected.hadm_id]
    assert mor["label"] == "1"
    for phrase in expected.death_phrases:
        assert phrase not in mor["text"].lower()
        # other tasks keep the text
        assert phrase in rows(built["tasks"] / "diag").loc[expected.hadm_id, "text"].lower()
    assert "was resuscitated" in mor["text"]
    # the subject goes with the verb; the rest of the sentence stays
    assert mimic3.remove_death_mentions("Pt expired at 0300. The patient passed away. Stable.") == " at 0300.. Stable."
    assert mimic3.remove_death_mentions("DECEASED\nwas pronounced dead") == "\n"


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------


def test_los_class_boundaries_and_deaths_excluded(built):
    los = rows(built["tasks"] / "los")
    for name, cls in (("los_3d", "0"), ("los_3d1h", "0"), ("los_3d3h", "1"), ("los_7d", "1"), ("los_7d3h", "2"),
                      ("los_14d", "2"), ("los_14d3h", "3")):
        assert los.loc[scenario(built, name).hadm_id, "label"] == cls, name
    for name in ("died_long_stay", "death_mentions"):
        assert scenario(built, name).hadm_id not in los.index
        assert rows(built["tasks"] / "mor").loc[scenario(built, name).hadm_id, "label"] == "1"
    assert set(los["label"]) == {"0", "1", "2", "3"}


def test_icd_codes_cut_as_strings_and_deduplicated(built):
    hadm = scenario(built, "codes").hadm_id
    assert rows(built["tasks"] / "diag").loc[hadm, "label"] == "V458,E879,038,428"
    assert rows(built["tasks"] / "proc").loc[hadm, "label"] == "006,389"
    vocabulary = (built["tasks"] / "diag" / "labels.txt").read_text().split()
    assert {"V458", "E879", "038"} <= set(vocabulary) and vocabulary == sorted(set(vocabulary))
    no_codes = scenario(built, "no_codes").hadm_id
    assert no_codes not in rows(built["tasks"] / "diag").index and no_codes in rows(built["tasks"] / "mor").index


# --------------------------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------------------------


def test_split_by_patient_70_10_20(built):
    truth = built["truth"]
    subject_split = {}
    for task in ("mor", "los", "diag", "proc"):  # one split for every task
        for hadm, split in rows(built["tasks"] / task)["split"].items():
            subject = truth.admissions[hadm].subject_id
            assert subject_split.setdefault(subject, split) == split, (task, subject)
    n = len(subject_split)
    counts = pd.Series(subject_split).value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (
        round(0.7 * n), round(0.1 * n), n - round(0.7 * n) - round(0.1 * n))
    three = [truth.scenarios[k] for k in truth.scenarios if k.startswith("three_admissions")]
    assert len(three) == 3 and len({rows(built["tasks"] / "mor").loc[h, "split"] for h in three}) == 1


def test_split_is_seeded():
    a, b, c = (mimic3.split_by_patient(range(100), seed) for seed in (0, 0, 1))
    assert a == b and a != c


def test_split_lists_honoured(built, tmp_path):
    truth = built["truth"]
    subjects = sorted({a.subject_id for a in truth.cohort().values()})
    left_out = subjects[-1]
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train.txt").write_text(
        "SUBJECT_ID\n" + "\n".join(map(str, subjects[:30])) + "\n" + str(subjects[0]) + "\n")
    (lists / "val.txt").write_text("# val\n" + "\n".join(map(str, subjects[30:36])) + "\n")
    # van Aken's file
    (lists / "mimic_test.csv").write_text("SUBJECT_ID\n" + "\n".join(map(str, subjects[36:-1])) + "\n")
    out = tmp_path / "tasks"
    assert main(["prepare", "mimic3-tasks", "--mimic-dir", str(built["root"] / "mimic"), "--out", str(out),
                 "--tasks", "mor", "--split-lists", str(lists), "--quiet"]) == 0
    mor = rows(out / "mor")
    for hadm, split in mor["split"].items():
        subject = truth.admissions[hadm].subject_id
        assert split == ("train" if subject in subjects[:30] else "val" if subject in subjects[30:36] else "test")
    assert left_out not in {truth.admissions[h].subject_id for h in mor.index}
    assert not (out / "los").exists()


def test_copies_across_splits_dropped_from_the_later_split():
    frame = pd.DataFrame({"id": [1, 2, 3, 4], "text": ["a", "a", "b", "a"], "split": ["test", "train", "val", "val"]})
    kept, dropped = mimic3.drop_copies_across_splits(frame)
    assert list(kept["id"]) == [2, 3] and dropped == 2


# --------------------------------------------------------------------------------------------
# PMV
# --------------------------------------------------------------------------------------------


def test_pmv_joined_to_mor_notes_with_its_own_split(built):
    pmv, mor = rows(built["tasks"] / "pmv"), rows(built["tasks"] / "mor")
    expected = built["pmv_labels"]
    assert set(pmv.index) == set(expected)
    for hadm, (label, split) in expected.items():
        assert (pmv.loc[hadm, "label"], pmv.loc[hadm, "split"]) == (label, split)
        assert pmv.loc[hadm, "text"] == mor.loc[hadm, "text"]  # death mentions already removed
    assert load_task(built["tasks"] / "pmv").labels == ["0", "1"]


def test_pmv_unknown_admission_refused_or_dropped(built, tmp_path, capsys):
    labels = pd.read_csv(built["root"] / "pmv_labels.csv", dtype=str)
    labels.loc[len(labels)] = ["999999", "1", "train"]
    labels.to_csv(tmp_path / "labels.csv", index=False)
    args = ["prepare", "pmv", "--admission-notes", str(built["tasks"] / "mor"),
            "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "pmv")]
    err = expect_error(main(args), capsys, tmp_path / "pmv")
    assert f"labels.csv row {len(labels) + 1}: hadm_id 999999 is not in" in err and "--drop-unknown" in err
    assert main([*args, "--drop-unknown"]) == 0
    import json

    assert (json.loads((tmp_path / "pmv" / "manifest.json").read_text())
            ["excluded"]["hadm_id_not_in_admission_notes"] == 1)


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.drop(columns="split"), "missing column(s) split"),
    (lambda f: f.assign(label=["1", "yes"] + list(f["label"][2:])), "row 3: label 'yes' is not 0 or 1"),
    (lambda f: pd.concat([f, f.head(1)]), "already at row 2"),
])
def test_pmv_label_file_checked(built, tmp_path, capsys, edit, message):
    edit(pd.read_csv(built["root"] / "pmv_labels.csv", dtype=str)).to_csv(tmp_path / "labels.csv", index=False)
    code = main(["prepare", "pmv", "--admission-notes", str(built["tasks"] / "mor"),
                 "--labels", str(tmp_path / "labels.csv"), "--out", str(tmp_path / "pmv")])
    assert message in expect_error(code, capsys, tmp_path / "pmv")


# --------------------------------------------------------------------------------------------
# Validation of the MIMIC-III tables
# --------------------------------------------------------------------------------------------


def expect_error(code, capsys, out):
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: ") and "\n" not in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))  # nothing half-written
    return err


@pytest.fixture(scope="module")
def plain_tables(tmp_path_factory):
    """A small uncompressed copy of the tables, to break one at a time."""
    return write_mimic3_tables(tmp_path_factory.mktemp("plain") / "mimic", n_patients=5, seed=1, gzip=False).paths


def broken(plain_tables, tmp_path, table, edit):
    mimic_dir = tmp_path / "mimic"
    shutil.copytree(plain_tables["ADMISSIONS"].parent, mimic_dir)
    path = mimic_dir / f"{table}.csv"
    if edit is None:
        path.unlink()
    else:
        edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)
    return mimic_dir


def set_cell(row, column, value):
    def edit(frame):
        frame.loc[row, column] = value
        return frame
    return edit


@pytest.mark.parametrize("table, edit, message", [
    ("DIAGNOSES_ICD", None, "no DIAGNOSES_ICD.csv or DIAGNOSES_ICD.csv.gz"),
    ("ADMISSIONS", lambda f: f.drop(columns="HOSPITAL_EXPIRE_FLAG"),
     "ADMISSIONS.csv: missing column(s) HOSPITAL_EXPIRE_FLAG"),
    ("NOTEEVENTS", lambda f: f.drop(columns="TEXT"), "NOTEEVENTS.csv: missing column(s) TEXT"),
    ("ADMISSIONS", set_cell(3, "DISCHTIME", "2150-13-45 25:00:00"),
     "ADMISSIONS.csv row 5: cannot parse DISCHTIME '2150-13-45 25:00:00'"),
    ("ADMISSIONS", lambda f: f.assign(HADM_ID=f["HADM_ID"].where(f.index != 4, f["HADM_ID"][0])),
     "ADMISSIONS.csv row 6: HADM_ID"),
    ("ADMISSIONS", set_cell(2, "HOSPITAL_EXPIRE_FLAG", "yes"),
     "ADMISSIONS.csv row 4: HOSPITAL_EXPIRE_FLAG 'yes' is not 0 or 1"),
    ("DIAGNOSES_ICD", set_cell(1, "HADM_ID", "abc"), "DIAGNOSES_ICD.csv row 3: HADM_ID 'abc' is not an integer id"),
    ("NOTEEVENTS", set_cell(0, "CHARTDATE", "yesterday"), "NOTEEVENTS.csv row 2: cannot parse CHARTDATE 'yesterday'"),
])
def test_bad_tables_named_with_file_and_row(plain_tables, tmp_path, capsys, table, edit, message):
    mimic_dir = broken(plain_tables, tmp_path, table, edit)
    code = main(["prepare", "mimic3-tasks", "--mimic-dir", str(mimic_dir), "--out", str(tmp_path / "tasks"), "--quiet"])
    err = expect_error(code, capsys, tmp_path / "tasks")
    assert message in err
    if message.endswith("row 6: HADM_ID"):  # a duplicate admission names both rows
        assert "already at row 2" in err


def test_split_list_patient_in_two_files(plain_tables, tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    for split, ids in (("train", "1000\n1001\n"), ("val", "1002\n"), ("test", "1003\n1001\n")):
        (lists / f"{split}.txt").write_text(ids)
    code = main(["prepare", "mimic3-tasks", "--mimic-dir", str(plain_tables["ADMISSIONS"].parent), "--out",
                 str(tmp_path / "tasks"), "--split-lists", str(lists)])
    assert "test.txt line 2: SUBJECT_ID 1001 is also in" in expect_error(code, capsys, tmp_path / "tasks")


def test_unknown_task_name(plain_tables, tmp_path, capsys):
    code = main(["prepare", "mimic3-tasks", "--mimic-dir", str(plain_tables["ADMISSIONS"].parent), "--out",
                 str(tmp_path / "tasks"), "--tasks", "mor,pmv"])
    assert "unknown task(s) pmv" in expect_error(code, capsys, tmp_path / "tasks")


# --------------------------------------------------------------------------------------------
# Task-directory validation (what `finetune` checks on any task directory)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def los_copy(built, tmp_path):
    shutil.copytree(built["tasks"] / "los", tmp_path / "los")
    return tmp_path / "los"


def edit_split(task_dir, split, edit):
    path = task_dir / f"{split}.csv"
    edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)


def test_task_same_text_in_two_splits_is_leakage(los_copy):
    from clinpeft.errors import ClinpeftError

    train_text = pd.read_csv(los_copy / "train.csv", dtype=str)["text"][0]
    edit_split(los_copy, "test", set_cell(1, "text", train_text))
    with pytest.raises(ClinpeftError, match=r"test.csv row 3 has the same text as train.csv row 2"):
        load_task(los_copy)


def test_task_empty_and_duplicate_ids_named_with_row(los_copy):
    from clinpeft.errors import ClinpeftError

    edit_split(los_copy, "val", set_cell(1, "id", " "))
    with pytest.raises(ClinpeftError, match=r"val.csv row 3: empty id"):
        load_task(los_copy)
    edit_split(los_copy, "val", lambda f: f.assign(id=[f["id"][0]] * len(f)))
    with pytest.raises(ClinpeftError, match=r"val.csv row 3: id '\d+' appears more than once \(first at row 2\)"):
        load_task(los_copy)


def test_task_label_spaces_ignored_and_manifest_kind_used(los_copy, built, tmp_path):
    edit_split(los_copy, "train", set_cell(0, "label", " 2 "))
    task = load_task(los_copy)
    assert task.splits["train"]["label"][0] == "2" and task.targets("train")[0] == 2
    diag = tmp_path / "diag"
    shutil.copytree(built["tasks"] / "diag", diag)
    for split in SPLITS:  # at most one code per admission: no comma anywhere
        edit_split(diag, split, lambda f: f.assign(label=f["label"].str.split(",").str[0]))
    assert load_task(diag).kind == "multilabel"  # from manifest.json, not guessed from commas


def test_generator_is_deterministic(tmp_path):
    a = write_mimic3_tables(tmp_path / "a", n_patients=3, seed=4)
    b = write_mimic3_tables(tmp_path / "b", n_patients=3, seed=4)
    assert all(a.paths[t].read_bytes() == b.paths[t].read_bytes() for t in a.paths)
    assert a.admissions == b.admissions


# --------------------------------------------------------------------------------------------
# Subgroup columns
# --------------------------------------------------------------------------------------------


def test_subgroup_columns_from_patients_and_admissions(built):
    """gender / age_group from PATIENTS (age at admission; shifted 90+ DOBs -> "90+"), ethnicity / insurance from
    ADMISSIONS, exactly the generator's; training still loads the task (extra columns ignored)."""
    truth = built["truth"]
    for task in ("mor", "los"):
        got = rows(built["tasks"] / task)
        assert list(got.columns[:3]) == ["text", "label", "gender"]
        for hadm in got.index:
            expected = truth.admissions[hadm]
            assert tuple(got.loc[hadm, ["gender", "age_group", "ethnicity", "insurance"]]) == (
                expected.gender, expected.age_group, expected.ethnicity, expected.insurance), (task, hadm)
        assert load_task(built["tasks"] / task).splits["test"].columns[:3].tolist() == ["id", "text", "label"]
    groups = {a.age_group for a in truth.admissions.values()}
    assert "90+" in groups and len(groups) >= 3  # the shifted ages of patients over 89 land in 90+
    manifest = json.loads((built["tasks"] / "manifest.json").read_text())
    assert manifest["subgroup_columns"]["columns"] == ["gender", "age_group", "ethnicity", "insurance"]


def test_no_patients_table_no_gender_or_age_and_manifest_says_so(tmp_path):
    write_mimic3_tables(tmp_path / "mimic", n_patients=8, seed=1, patients=False)
    assert main(["prepare", "mimic3-tasks", "--mimic-dir", str(tmp_path / "mimic"), "--out", str(tmp_path / "tasks"),
                 "--tasks", "mor", "--quiet"]) == 0
    header = pd.read_csv(tmp_path / "tasks" / "mor" / "train.csv", nrows=0).columns.tolist()
    assert header == ["id", "text", "label", "ethnicity", "insurance"]
    note = json.loads((tmp_path / "tasks" / "manifest.json").read_text())["subgroup_columns"]
    assert note["why_missing"] == {"gender": "no PATIENTS table in --mimic-dir",
                                   "age_group": "no PATIENTS table in --mimic-dir"}


def test_age_group_rule():
    from datetime import datetime

    from clinpeft.data.definitions import age_at, age_group

    assert age_group(age_at(datetime(2150, 3, 1), datetime(1850, 3, 1))) == "90+"  # MIMIC's shift
    assert age_at(datetime(2150, 2, 28), datetime(2100, 3, 1)) == 49
    assert [age_group(a) for a in (17, 18, 44, 45, 64, 65, 89, 90)] == [
        "0-17", "18-44", "18-44", "45-64", "45-64", "65-89", "65-89", "90+"]
