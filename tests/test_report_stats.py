"""`clinpeft report` statistics from fake run directories (metrics.json + predictions.csv + labels.txt):
intervals in Table 3, --compare p-values, plots and per-label lists. No model is trained."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clinpeft import cli
from clinpeft.data.tasks import TaskData
from clinpeft.errors import ClinpeftError
from clinpeft.evaluation.bootstrap import bootstrap_auroc
from clinpeft.reporting.report import write_report
from clinpeft.training.classification import split_metrics, write_predictions

N = 150  # test notes per task
RESAMPLES = 200
ML_LABELS = ["401", "428", "V458", "250", "585", "038"]


def task_data(task: str, seed: int = 0) -> tuple[TaskData, np.ndarray]:
    """A test split (ids shuffled, not sorted) and its targets; the same for every run of a task."""
    rng = np.random.default_rng(seed)
    ids = [f"adm{i:05d}" for i in rng.permutation(N)]
    if task == "diag":
        y = (rng.random((N, len(ML_LABELS))) < [0.3, 0.2, 0.1, 0.05, 0.02, 0.0]).astype(int)
        cells = [",".join(label for label, v in zip(ML_LABELS, row) if v) for row in y]
        task_obj = TaskData("diag", "multilabel", ML_LABELS, {"test": pd.DataFrame({"id": ids, "label": cells})})
    else:
        y = (rng.random(N) < 0.3).astype(int)
        frame = pd.DataFrame({"id": ids, "label": y.astype(str)})
        task_obj = TaskData(task, "single_label", ["0", "1"], {"test": frame})
    return task_obj, task_obj.targets("test")


def make_run(root: Path, name: str, task: str, variant: str, signal: float, seed: int = 1, **extra) -> Path:
    """A finetune-like run dir: logits with `signal` x the truth plus noise, metrics.json as finetune writes it."""
    task_obj, y = task_data(task)
    rng = np.random.default_rng(seed)
    if task == "diag":
        logits = signal * y + rng.normal(size=y.shape) - 2
    else:
        logits = np.stack([np.zeros(N), signal * y + rng.normal(size=N)], axis=1)
    run = root / name
    run.mkdir(parents=True)
    test = split_metrics(task_obj, "test", logits, RESAMPLES, 0)  # as finetune writes it
    metrics = {"kind": "finetune", "task": task, "task_type": task_obj.task_type, "variant": variant,
               "base_model_name": "LLaMA", "test": test, **extra}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "labels.txt").write_text("\n".join(task_obj.labels) + "\n")
    write_predictions(run / "predictions.csv", task_obj, "test", logits)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """LLaMA (weak), + LoRA (strong), + Clinical LoRA (Frozen) (strong, other noise) on MOR and DIAG,
    and a copy of + LoRA under another row name."""
    root = tmp_path_factory.mktemp("runs")
    for variant, signal, seed in [("head", 0.2, 1), ("lora", 2.0, 2), ("clinical_frozen", 2.0, 3)]:
        for task in ("mor", "diag"):
            make_run(root, f"{variant}/{task}", task, variant, signal, seed)
    for task in ("mor", "diag"):
        copy = root / f"copy/{task}"
        shutil.copytree(root / f"lora/{task}", copy)
        metrics = json.loads((copy / "metrics.json").read_text())
        (copy / "metrics.json").write_text(json.dumps({**metrics, "row": "LoRA copy"}))
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    argv = ["report", str(runs), "--out", str(out), "--compare", "+ LoRA", "--bootstrap-resamples", str(RESAMPLES),
            "--quiet"]
    assert cli.main(argv) == 0
    return out


def table_rows(markdown: str) -> dict[str, list[str]]:
    """First Markdown table of a section: row name -> cells."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("| Model"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows.setdefault(cells[0], cells[1:])
    return rows


def test_table3_cells_carry_intervals_equal_to_metrics_json(runs, report):
    md = (report / "table3.md").read_text()
    main_table = md.split("## Paired comparison")[0]
    cells = table_rows(main_table)
    metrics = json.loads((runs / "lora" / "mor" / "metrics.json").read_text())["test"]
    lo, hi = metrics["auroc_ci"]
    # the report redraws the resamples metrics.json used (same seed, task stream, id order)
    assert cells["+ LoRA"][0] == f"{100 * metrics['auroc']:.2f} [{100 * lo:.1f}, {100 * hi:.1f}]"
    assert re.fullmatch(r"\d+\.\d\d \[\d+\.\d, \d+\.\d\]", cells["LLaMA"][2])  # macro avg with interval
    assert "1-point difference on ~700 notes is noise" in md and f"{RESAMPLES} resamples" in md

    csv = pd.read_csv(report / "table3.csv").set_index("Model")
    assert list(csv.columns[2:11]) == ["MOR", "MOR lo", "MOR hi", "DIAG", "DIAG lo", "DIAG hi",
                                       "Macro avg", "Macro avg lo", "Macro avg hi"]
    assert csv.loc["+ LoRA", "MOR lo"] == pytest.approx(100 * lo, abs=0.05)  # predictions.csv rounds to 7 digits
    for col in ("MOR", "DIAG", "Macro avg"):
        assert (csv[f"{col} lo"] <= csv[col]).all() and (csv[col] <= csv[f"{col} hi"]).all()


def test_compare_p_values(report):
    md = (report / "table3.md").read_text()
    assert "## Paired comparison with + LoRA" in md
    cells = table_rows(md.split("## Paired comparison")[1])
    assert cells["+ LoRA"] == ["(reference)"] * 3
    assert cells["LoRA copy"] == ["+0.00 (p=1.000)"] * 3  # identical predictions
    assert all(c.endswith("\u2020") and "(p=0.010)" in c for c in cells["LLaMA"])  # 2 / (200 + 1)
    csv = pd.read_csv(report / "table3.csv").set_index("Model")
    assert csv.loc["LoRA copy", "MOR p"] == 1.0 and csv.loc["LoRA copy", "Macro avg diff"] == 0.0
    assert csv.loc["LLaMA", "DIAG p"] == pytest.approx(2 / 201) and csv.loc["LLaMA", "DIAG diff"] < -10
    assert np.isnan(csv.loc["+ LoRA", "MOR p"]) and (csv["Compared with"] == "+ LoRA").all()


def test_plots_written_and_linked(report):
    import matplotlib.image

    md = (report / "table3.md").read_text()
    for name in ("roc_mor.png", "roc_diag.png", "macro_auroc.png"):
        assert f"]({name})" in md
        image = matplotlib.image.imread(report / name)
        assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 400
        assert image[..., :3].std() > 0.05  # not a blank canvas


def test_label_lists(runs, report):
    text = (report / "labels_diag.md").read_text()
    assert "[DIAG best and worst labels](labels_diag.md)" in (report / "table3.md").read_text()
    section = text.split("## + LoRA")[1].split("## ")[0]
    metrics = json.loads((runs / "lora" / "diag" / "metrics.json").read_text())["test"]
    best = max(metrics["per_label_auroc"], key=metrics["per_label_auroc"].get)
    assert "5 labels evaluated, 1 skipped" in section
    row = next(line for line in section.splitlines() if line.startswith(f"| {best} |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == f"{100 * metrics['per_label_auroc'][best]:.2f}"
    assert cells[3] == str(metrics["per_label_support"][best])
    assert re.fullmatch(r"\[\d+\.\d, \d+\.\d\]", cells[2])
    assert section.index("Best 5") < section.index(f"| {best} |") < section.index("Worst 5")


@pytest.mark.parametrize("wanted, extra, message", [
    ("lora", [], r"matches 3 rows .*pass the full row name"),
    ("bert", [], r"matches no Table 3 row; the rows are: 'LLaMA'; '\+ LoRA'"),
    ("+ LoRA", ["--bootstrap-resamples", "0"], r"--compare needs resamples"),
])
def test_compare_row_errors(runs, tmp_path, capsys, wanted, extra, message):
    assert cli.main(["report", str(runs), "--out", str(tmp_path), "--compare", wanted, *extra]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_compare_refuses_different_test_notes(tmp_path):
    make_run(tmp_path, "a/mor", "mor", "head", 1.0)
    other = make_run(tmp_path, "b/mor", "mor", "lora", 1.0)
    frame = pd.read_csv(other / "predictions.csv", dtype=str)
    frame.loc[0, "id"] = "someone-else"
    frame.to_csv(other / "predictions.csv", index=False)
    with pytest.raises(ClinpeftError, match=r"tested on different notes \(1 ids only in the first, 1 only"):
        write_report([tmp_path], tmp_path / "out", compare="LLaMA", n_resamples=50)


def test_run_without_predictions_keeps_recorded_interval(tmp_path):
    run = make_run(tmp_path, "a/mor", "mor", "head", 1.0)
    (run / "predictions.csv").unlink()
    write_report([tmp_path], tmp_path / "out", n_resamples=50)
    md = (tmp_path / "out" / "table3.md").read_text()
    lo, hi = json.loads((run / "metrics.json").read_text())["test"]["auroc_ci"]
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}] |" in md  # the MOR cell, from metrics.json
    assert "No predictions.csv" in md and not (tmp_path / "out" / "macro_auroc.png").exists()


def test_macro_interval_resamples_tasks_independently(runs, report):
    """Macro interval = percentile interval of the per-resample mean of the tasks' resampled AUROCs."""
    from clinpeft.reporting.stats import read_predictions

    boots = []
    for task in ("mor", "diag"):
        run = {"_dir": runs / "head" / task, **json.loads((runs / "head" / task / "metrics.json").read_text())}
        preds = read_predictions(run)
        boots.append(bootstrap_auroc(preds.task_type, preds.y, preds.probs, ids=preds.ids, n_resamples=RESAMPLES,
                                     seed=0, stream=task))
    lo, hi = np.percentile((boots[0].values + boots[1].values) / 2, [2.5, 97.5])
    csv = pd.read_csv(report / "table3.csv").set_index("Model")
    assert csv.loc["LLaMA", "Macro avg lo"] == pytest.approx(100 * lo)
    assert csv.loc["LLaMA", "Macro avg hi"] == pytest.approx(100 * hi)


@pytest.mark.slow
def test_finetune_and_evaluate_record_intervals_that_report_reproduces(tiny_llama, synthetic_tasks, tmp_path):
    """metrics.json of a real (2-step) finetune run and of `evaluate` carry auroc_ci; report redraws it."""
    from clinpeft.config import FinetuneConfig, load_config
    from clinpeft.recipes import evaluate, finetune

    items = {"model.base": tiny_llama, "task.path": synthetic_tasks["diag"], "task.max_seq_len": 64, "variant": "head",
             "train.batch_size": 8, "train.grad_accum": 1, "train.max_steps": 2, "eval.bootstrap_resamples": 300,
             "eval.bootstrap_seed": 4}
    config = load_config(FinetuneConfig, None, [f"{k}={v}" for k, v in items.items()])
    metrics = finetune.main(config, tmp_path / "run", progress=False)
    for split in ("val", "test"):
        lo, hi = metrics[split]["auroc_ci"]
        assert lo <= metrics[split]["auroc"] <= hi
        assert metrics[split]["bootstrap"] | {"n_undefined": 0} == {
            "method": "percentile, the notes of the split resampled with replacement", "confidence": 0.95,
            "n_resamples": 300, "seed": 4, "stream": "diag", "n_undefined": 0}
    rescored = evaluate.main(tmp_path / "run", synthetic_tasks["diag"] / "test.csv", tmp_path / "eval", progress=False,
                             bootstrap_resamples=300, bootstrap_seed=4)
    assert rescored["eval"]["auroc_ci"] == pytest.approx(metrics["test"]["auroc_ci"], abs=1e-4)

    write_report([tmp_path / "run"], tmp_path / "report", n_resamples=300, seed=4)
    csv = pd.read_csv(tmp_path / "report" / "table3.csv")
    assert [csv.loc[0, "DIAG lo"], csv.loc[0, "DIAG hi"]] == pytest.approx(
        [100 * v for v in metrics["test"]["auroc_ci"]], abs=0.01)
