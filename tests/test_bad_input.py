"""Bad input: one clear line naming the file/row/key, a non-zero exit, and no run directory."""

import shutil

import pytest

from clinpeft.cli import main


@pytest.fixture
def task_copy(synthetic_tasks, tmp_path):
    """A writable copy of the MOR and DIAG tasks to break."""
    for name in ("mor", "diag"):
        shutil.copytree(synthetic_tasks[name], tmp_path / name)
    return tmp_path


def run_finetune(tmp_path, capsys, base, task_dir, *extra):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  epochs: 1\n  batch_size: 8\n  grad_accum: 1\n")
    out = tmp_path / "out"
    code = main(["finetune", str(recipe), f"model.base={base}", f"task.path={task_dir}", *extra,
                 "--out", str(out), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert not out.exists() and not list(tmp_path.glob(".out.tmp-*"))  # nothing half-written
    return err


def edit_csv(path, row, column, value):
    import pandas as pd

    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame.loc[row, column] = value
    frame.to_csv(path, index=False)


def test_missing_split_file(task_copy, tiny_llama, tmp_path, capsys):
    (task_copy / "mor" / "val.csv").unlink()
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "mor")
    assert "mor/val.csv not found" in err


def test_missing_column(task_copy, tiny_llama, tmp_path, capsys):
    import pandas as pd

    path = task_copy / "mor" / "train.csv"
    pd.read_csv(path, dtype=str).rename(columns={"label": "outcome"}).to_csv(path, index=False)
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "mor")
    assert "train.csv: missing column(s) label" in err


def test_empty_text_names_the_row(task_copy, tiny_llama, tmp_path, capsys):
    edit_csv(task_copy / "mor" / "test.csv", 4, "text", "   ")
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "mor")
    assert "test.csv row 6: empty text" in err  # data row 5 (0-based 4) is line 6 after the header


def test_label_not_in_vocabulary(task_copy, tiny_llama, tmp_path, capsys):
    edit_csv(task_copy / "mor" / "train.csv", 0, "label", "2")
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "mor")
    assert "train.csv row 2: label '2' is not in labels.txt" in err


def test_malformed_multilabel(task_copy, tiny_llama, tmp_path, capsys):
    edit_csv(task_copy / "diag" / "val.csv", 2, "label", "401,,428")
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "diag")
    assert "val.csv row 4: malformed multilabel '401,,428'" in err


def test_leakage_between_splits(task_copy, tiny_llama, tmp_path, capsys):
    import pandas as pd

    train_id = pd.read_csv(task_copy / "mor" / "train.csv", dtype=str)["id"][0]
    edit_csv(task_copy / "mor" / "test.csv", 0, "id", train_id)
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "mor")
    assert f"id '{train_id}' is in both train.csv and test.csv" in err


def test_clinical_adapter_of_another_base_model(task_copy, other_tiny_llama, clinical_run, tmp_path, capsys):
    err = run_finetune(tmp_path, capsys, other_tiny_llama, task_copy / "mor",
                       "variant=clinical_trainable", f"clinical_adapter={clinical_run}")
    assert "was trained on base model" in err and "set model.base" in err


def test_clinical_variant_without_adapter(task_copy, tiny_llama, tmp_path, capsys):
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "mor", "variant=clinical_frozen")
    assert "needs clinical_adapter=" in err


def test_unknown_variant(task_copy, tiny_llama, tmp_path, capsys):
    err = run_finetune(tmp_path, capsys, tiny_llama, task_copy / "mor", "variant=clinical_sideways")
    assert "'variant'" in err and "clinical_sideways" in err


def test_missing_base_model(task_copy, tmp_path, capsys):
    err = run_finetune(tmp_path, capsys, tmp_path / "no-such-model", task_copy / "mor")
    assert "no-such-model does not exist" in err


def test_existing_out_dir_is_not_overwritten(task_copy, tiny_llama, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("results")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("{}\n")
    code = main(["finetune", str(recipe), f"model.base={tiny_llama}", f"task.path={task_copy / 'mor'}",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "already exists" in capsys.readouterr().err
    assert (tmp_path / "out" / "keep.txt").read_text() == "results"
