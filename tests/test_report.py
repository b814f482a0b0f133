"""Report tables built from fake run directories: exact cells, order, errors and file outputs."""

import json
from pathlib import Path

import pandas as pd
import pytest

from clinpeft.errors import ClinpeftError
from clinpeft.reporting.report import write_report
from clinpeft.reporting.runs import find_runs
from clinpeft.reporting.tables import (
    format_duration,
    format_markdown,
    format_params,
    format_percent,
    format_ppl,
    table2,
    table3,
)

LLAMA_PARAMS = 6738415616  # LLaMA-7B, as in the paper's Table 2


def write_json(path: Path, data) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    name = "run.json" if data.get("kind") == "pretrain" else "metrics.json"
    (path / name).write_text(json.dumps(data))
    return path


def pretrain_run(root: Path, name: str, **overrides) -> Path:
    data = {
        "kind": "pretrain", "method": "lora", "base_model": "/models/llama-7b", "base_model_name": "LLaMA",
        "trainable_params": 8388608, "total_params": LLAMA_PARAMS, "trainable_percent": 0.12449,
        "train_ppl": 1.8581, "test_ppl": 2.24362, "base_train_ppl": None, "base_test_ppl": None,
        "wall_time_s": 80000.0, "train_time_s": 77862.0, "tokens_per_s": 1500.0,
    }
    data.update(overrides)
    return write_json(root / name, data)


def finetune_run(root: Path, name: str, task: str, variant: str, auroc: float, **overrides) -> Path:
    task_type = {"los": "multiclass", "diag": "multilabel", "proc": "multilabel"}.get(task, "binary")
    data = {
        "kind": "finetune", "task": task, "task_type": task_type, "variant": variant,
        "base_model_name": "LLaMA", "val": {"auroc": 0.5}, "test": {"auroc": auroc, "n_examples": 100},
        "trainable_params": 4_000_000, "total_params": LLAMA_PARAMS, "train_time_s": 600.0,
    }
    if task_type == "multilabel":
        data["test"].update(n_labels_evaluated=120, n_labels_skipped=7)
    if task_type == "multiclass":
        data["test"]["multi_class"] = "ovo"
    data.update(overrides)
    return write_json(root / name, data)


# ------------------------------------------------------------------ cell formatting


@pytest.mark.parametrize(
    "n, text",
    [(8388608, "8.4M"), (61440, "61.4K"), (6738415616, "6.7B"), (40960, "41K"), (1228800, "1.2M"),
     (999_960, "1M"), (512, "512"), (0, "0"), (None, "")],
)
def test_format_params(n, text):
    assert format_params(n) == text


@pytest.mark.parametrize(
    "p, text",
    [(0.12449, "0.12%"), (0.000912, "0.0009%"), (0.0776, "0.08%"), (0.000608, "0.0006%"), (100.0, "100%"),
     (0.0, "0%"), (None, "")],
)
def test_format_percent(p, text):
    assert format_percent(p) == text


def test_format_ppl_and_duration():
    assert format_ppl(2.24362) == "2.244"
    assert format_ppl(None) == ""
    assert format_duration(77862) == "21:37:42"
    assert format_duration(178_000.4) == "49:26:40"
    assert format_duration(65) == "00:01:05"
    assert format_duration(None) == ""


# ------------------------------------------------------------------ find_runs


def test_find_runs_recursive_and_split_by_kind(tmp_path):
    pretrain_run(tmp_path / "runs", "pre/lora")
    finetune_run(tmp_path / "runs", "ft/a/mor", "mor", "lora", 0.8)
    # a run still being written (hidden temporary folder) is not read, even if corrupt
    (tmp_path / "runs" / "ft" / ".b.tmp-1").mkdir(parents=True)
    (tmp_path / "runs" / "ft" / ".b.tmp-1" / "metrics.json").write_text("{")
    # a metrics.json of another kind (e.g. a pretraining log) is not a fine-tuning run
    write_json(tmp_path / "runs" / "pre" / "lora" / "logs", {"kind": "pretrain_log", "loss": 1.0})
    pre, ft = find_runs([tmp_path / "runs", tmp_path / "runs" / "pre" / "lora"])  # overlapping paths
    assert len(pre) == 1 and len(ft) == 1
    assert pre[0]["_dir"] == tmp_path / "runs" / "pre" / "lora"
    assert ft[0]["task"] == "mor"


def test_find_runs_missing_path(tmp_path):
    with pytest.raises(ClinpeftError, match="nowhere does not exist"):
        find_runs([tmp_path / "nowhere"])


def test_find_runs_folder_without_runs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ClinpeftError, match="empty holds no run.json"):
        find_runs([tmp_path / "empty"])


def test_find_runs_corrupt_json_names_file(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text('{"kind": "finetune",')
    with pytest.raises(ClinpeftError, match=r"bad/metrics.json: not valid JSON"):
        find_runs([tmp_path])


# ------------------------------------------------------------------ Table 2


def test_table2_cells_and_base_row(tmp_path):
    pretrain_run(tmp_path, "lora", base_train_ppl=5.4321, base_test_ppl=6.78912)
    pretrain_run(
        tmp_path, "prompt", method="prompt_tuning", trainable_params=61440, trainable_percent=None,
        train_ppl=4.846, test_ppl=4.007, train_time_s=84448,
    )
    pretrain_run(tmp_path, "pmc", method="p_tuning", base_model_name=None, base_model="/models/pmc-llama/",
                 trainable_params=16_100_000, train_time_s=None)
    df = table2(find_runs([tmp_path])[0])
    assert list(df.columns) == ["Base model", "PEFT", "Trainable params", "Trainable %", "Train ppl", "Test ppl",
                                "Time (h:m:s)"]
    assert df.values.tolist() == [
        ["LLaMA", "(none: base model)", "0", "0%", "5.432", "6.789", ""],
        ["LLaMA", "LoRA", "8.4M", "0.12%", "1.858", "2.244", "21:37:42"],
        ["LLaMA", "Prompt Tuning", "61.4K", "0.0009%", "4.846", "4.007", "23:27:28"],  # % from the counts
        ["pmc-llama", "P-tuning", "16.1M", "0.12%", "1.858", "2.244", ""],  # name from base_model path
    ]


def test_table2_no_base_row_without_base_ppl(tmp_path):
    pretrain_run(tmp_path, "lora")
    df = table2(find_runs([tmp_path])[0])
    assert "(none: base model)" not in df["PEFT"].tolist()


def test_table2_method_order_and_names(tmp_path):
    for method in ["full", "p_tuning", "prompt_tuning", "prefix_tuning", "adaption_prompt", "lora", "ia3"]:
        pretrain_run(tmp_path, method, method=method)
    peft = table2(find_runs([tmp_path])[0])["PEFT"].tolist()
    assert peft == ["LoRA", "Adaptation Prompt", "Prefix Tuning", "Prompt Tuning", "P-tuning", "Full fine-tuning",
                    "ia3"]


def test_table2_missing_optional_keys_are_blank(tmp_path):
    write_json(tmp_path / "r", {"kind": "pretrain", "method": "lora", "base_model_name": "X"})
    assert table2(find_runs([tmp_path])[0]).values.tolist() == [["X", "LoRA", "", "", "", "", ""]]


def test_table2_notes_base_ppl_disagreement(tmp_path):
    pretrain_run(tmp_path, "a", base_test_ppl=6.0)
    pretrain_run(tmp_path, "b", method="prompt_tuning", base_test_ppl=7.0)
    notes = table2(find_runs([tmp_path])[0]).attrs["notes"]
    assert len(notes) == 1 and "base_test_ppl differs" in notes[0]


# ------------------------------------------------------------------ Table 3


def full_grid(root: Path):
    """LLaMA rows in scrambled directory order; one incomplete row (no DIAG/PROC)."""
    aurocs = {"pmv": 0.5138, "mor": 0.6680, "los": 0.5765, "diag": 0.6006, "proc": 0.6383}
    variants = ["clinical_trainable+downstream", "lora", "head", "clinical_frozen+downstream",
                "clinical_trainable", "clinical_frozen"]
    for i, variant in enumerate(variants):
        for task, auroc in aurocs.items():
            finetune_run(root, f"{i}-{variant}-{task}", task, variant, auroc + 0.01 * i)
    finetune_run(root, "x-lora-mor", "mor", "lora", 0.7803, base_model_name="PMC-LLaMA")
    finetune_run(root, "x-lora-pmv", "pmv", "lora", 0.5384, base_model_name="PMC-LLaMA")


def test_table3_rows_columns_and_cells(tmp_path):
    full_grid(tmp_path)
    df = table3(find_runs([tmp_path])[1])
    assert list(df.columns) == ["Model", "PMV", "MOR", "LOS", "DIAG", "PROC", "Macro avg"]
    assert df["Model"].tolist() == [
        "LLaMA",
        "+ LoRA",
        "+ Clinical LoRA (Frozen)",
        "+ Clinical LoRA (Frozen) + Downstream LoRA",
        "+ Clinical LoRA (Trainable)",
        "+ Clinical LoRA (Trainable) + Downstream LoRA",
        "PMC-LLaMA + LoRA",  # no head-only PMC-LLaMA row, so the base is named
    ]
    # head is variant index 2 in full_grid: +0.02 on every task; macro = mean of the five
    assert df.iloc[0].tolist() == ["LLaMA", "53.38", "68.80", "59.65", "62.06", "65.83", "61.94"]
    assert df.iloc[6].tolist() == ["PMC-LLaMA + LoRA", "53.84", "78.03", "", "", "", "65.94*"]


def test_table3_macro_average_is_unweighted_mean(tmp_path):
    for task, auroc in {"mor": 0.80, "los": 0.70, "diag": 0.65}.items():
        finetune_run(tmp_path, task, task, "lora", auroc)
    df = table3(find_runs([tmp_path])[1])
    assert list(df.columns) == ["Model", "MOR", "LOS", "DIAG", "Macro avg"]  # only tasks present
    assert df["Macro avg"].tolist() == ["71.67"]


def test_table3_incomplete_row_marked_and_explained(tmp_path):
    finetune_run(tmp_path, "h-mor", "mor", "head", 0.70)
    finetune_run(tmp_path, "h-los", "los", "head", 0.60)
    finetune_run(tmp_path, "l-mor", "mor", "lora", 0.80)
    df = table3(find_runs([tmp_path])[1])
    assert df.values.tolist() == [["LLaMA", "70.00", "60.00", "65.00"], ["+ LoRA", "80.00", "", "80.00*"]]
    assert any("+ LoRA lacks LOS" in note for note in df.attrs["notes"])


def test_table3_row_override_and_other_tasks(tmp_path):
    finetune_run(tmp_path, "a", "mor", "head", 0.7)
    finetune_run(tmp_path, "b", "sepsis", "head", 0.9)
    finetune_run(tmp_path, "c", "mor", "lora", 0.8, row="LLaMA + LoRA r=2")
    finetune_run(tmp_path, "d", "mor", "lora", 0.85)  # same variant, different row: no clash
    finetune_run(tmp_path, "e", "mor", "my_variant", 0.75)
    df = table3(find_runs([tmp_path])[1])
    assert list(df.columns) == ["Model", "MOR", "SEPSIS", "Macro avg"]
    assert df["Model"].tolist() == ["LLaMA", "+ LoRA", "LLaMA + LoRA r=2", "+ my_variant"]


def test_table3_encoder_baselines_come_first(tmp_path):
    finetune_run(tmp_path, "a", "mor", "head", 0.7)
    finetune_run(tmp_path, "b", "mor", "lora", 0.8)
    finetune_run(tmp_path, "c", "mor", "full", 0.75, base_model_name="UmlsBERT", model_kind="encoder", row="UmlsBERT")
    finetune_run(tmp_path, "d", "mor", "full", 0.72, base_model_name="BlueBERT", model_kind="encoder", row="BlueBERT")
    df = table3(find_runs([tmp_path])[1])
    assert df["Model"].tolist() == ["BlueBERT", "UmlsBERT", "LLaMA", "+ LoRA"]


def test_table3_mean_pooling_runs_form_their_own_block(tmp_path):
    finetune_run(tmp_path, "a", "mor", "head", 0.7, pooling="last")
    finetune_run(tmp_path, "b", "mor", "lora", 0.8, pooling="last")
    finetune_run(tmp_path, "c", "mor", "head", 0.71, pooling="mean")
    finetune_run(tmp_path, "d", "mor", "lora", 0.82, pooling="mean")
    df = table3(find_runs([tmp_path])[1])
    assert df["Model"].tolist() == ["LLaMA", "+ LoRA", "LLaMA (mean pooling)", "+ LoRA"]
    assert df["MOR"].tolist() == ["70.00", "80.00", "71.00", "82.00"]


def test_table3_duplicate_cell_names_both_dirs(tmp_path):
    finetune_run(tmp_path, "first", "mor", "lora", 0.8)
    finetune_run(tmp_path, "second", "mor", "lora", 0.81)
    with pytest.raises(ClinpeftError, match=r"first and .*second"):
        table3(find_runs([tmp_path])[1])


def test_table3_missing_task_key_names_file(tmp_path):
    write_json(tmp_path / "r", {"kind": "finetune", "variant": "lora", "test": {"auroc": 0.8}})
    with pytest.raises(ClinpeftError, match=r"r/metrics.json: no \"task\""):
        table3(find_runs([tmp_path])[1])


def test_table3_missing_auroc_is_blank_and_noted(tmp_path):
    finetune_run(tmp_path, "a", "mor", "head", 0.7)
    finetune_run(tmp_path, "b", "los", "head", None, test={})
    df = table3(find_runs([tmp_path])[1])
    assert df.values.tolist() == [["LLaMA", "70.00", "", "70.00*"]]
    assert any("No test AUROC recorded" in note for note in df.attrs["notes"])


# ------------------------------------------------------------------ markdown and files


def test_format_markdown_aligns_and_escapes():
    df = pd.DataFrame({"Model": ["a|b", "c"], "MOR": ["70.00", None]})
    assert format_markdown(df) == (
        "| Model |   MOR |\n"
        "|-------|------:|\n"
        "| a\\|b  | 70.00 |\n"
        "| c     |       |\n"
    )


def test_write_report_files_markdown_and_csv_roundtrip(tmp_path):
    runs = tmp_path / "runs"
    pretrain_run(runs, "pre/lora", base_train_ppl=5.4321, base_test_ppl=6.78912)
    pretrain_run(runs, "pre/prompt", method="prompt_tuning", trainable_params=61440, trainable_percent=0.000912)
    full_grid(runs / "ft")
    written = write_report([runs], tmp_path / "report" / "nested")
    out = tmp_path / "report" / "nested"
    assert written == {name: out / name for name in ["table2.md", "table2.csv", "table3.md", "table3.csv"]}

    md2 = (out / "table2.md").read_text()
    assert md2.startswith("# Table 2")
    assert "| Base model | PEFT" in md2
    assert "| LLaMA      | (none: base model) |" in md2
    assert "8.4M" in md2 and "0.0009%" in md2 and "21:37:42" in md2
    assert "token-weighted" in md2

    md3 = (out / "table3.md").read_text()
    assert md3.startswith("# Table 3")
    assert "| Model " in md3 and "| Macro avg |" in md3
    for name in ["LLaMA", "+ LoRA", "+ Clinical LoRA (Trainable) + Downstream LoRA", "PMC-LLaMA + LoRA"]:
        assert f"| {name} " in md3
    assert "65.94*" in md3
    assert "120 labels evaluated, 7 skipped" in md3
    assert "one-vs-one" in md3 and "sigmoid" in md3
    assert "\\* Macro avg over only the tasks" in md3

    csv2 = pd.read_csv(out / "table2.csv")
    assert csv2["Trainable params"].tolist() == [0, 8388608, 61440]  # exact integers
    assert csv2["Total params"].iloc[1] == LLAMA_PARAMS
    assert csv2["Test ppl"].tolist() == [6.78912, 2.24362, 2.24362]
    assert csv2["Trainable %"].iloc[2] == 0.000912
    assert csv2["Train time (s)"].iloc[1] == 77862.0

    csv3 = pd.read_csv(out / "table3.csv")
    assert csv3.columns.tolist() == ["Model", "Base model", "Variant", "PMV", "MOR", "LOS", "DIAG", "PROC", "Macro avg",
                                     "Tasks averaged"]
    head = csv3[csv3["Variant"] == "head"].iloc[0]
    assert head["MOR"] == pytest.approx(68.80)
    assert head["Macro avg"] == pytest.approx(61.944)
    assert csv3["Tasks averaged"].tolist() == [5, 5, 5, 5, 5, 5, 2]


def test_write_report_only_finetune_runs(tmp_path):
    finetune_run(tmp_path / "runs", "a", "mor", "head", 0.7)
    written = write_report([tmp_path / "runs"], tmp_path / "out")
    assert sorted(written) == ["table3.csv", "table3.md"]
    assert not (tmp_path / "out" / "table2.md").exists()


def test_write_report_missing_path(tmp_path):
    with pytest.raises(ClinpeftError, match="does not exist"):
        write_report([tmp_path / "missing"], tmp_path / "out")
