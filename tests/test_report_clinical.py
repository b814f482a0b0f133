"""`clinpeft report` clinical additions from fake runs: clinical.md/.csv (AUPRC, Brier, ECE, operating point),
honest aggregates (absent / rare classes marked), subgroups, the averaged curves and index.html. No model."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import auc, average_precision_score, brier_score_loss, roc_auc_score

from clinpeft import cli
from clinpeft.data.tasks import TaskData
from clinpeft.evaluation.metrics import softmax
from clinpeft.reporting.stats import Predictions, roc_points
from clinpeft.training.classification import split_metrics, write_predictions

N, RESAMPLES = 160, 100


def _mor(rng):
    ids = [f"a{i:04d}" for i in rng.permutation(N)]
    y = (rng.random(N) < 0.3).astype(int)
    gender = np.where(rng.random(N) < 0.5, "F", "M")
    age = rng.choice(["18-44", "45-64", "65-89", "90+"], N)
    frame = pd.DataFrame({"id": ids, "label": y.astype(str), "gender": gender, "age_group": age})
    signal = np.where(gender == "F", 2.5, 0.3)  # the model is better for F: a real gap
    logits = np.stack([np.zeros(N), signal * y + rng.normal(size=N)], axis=1)
    return TaskData("mor", "single_label", ["0", "1"], {"test": frame}), logits


def _los(rng):
    ids = [f"b{i:04d}" for i in range(N)]
    y = rng.choice([0, 1], N)
    y[:2] = 2  # class "7-14" with 2 examples (< 5); class ">14" absent
    labels = ["<=3", "3-7", "7-14", ">14"]
    frame = pd.DataFrame({"id": ids, "label": [labels[k] for k in y]})
    logits = rng.normal(size=(N, 4)) + 1.5 * np.eye(4)[y]
    return TaskData("los", "single_label", labels, {"test": frame}), logits


def _write_run(run: Path, task: TaskData, logits, val: tuple | None = None):
    run.mkdir(parents=True)
    test = split_metrics(task, "test", logits, RESAMPLES, 0)
    metrics = {"kind": "finetune", "task": task.name, "task_type": task.task_type, "variant": "lora",
               "base_model_name": "LLaMA", "test": test, "trainable_params": 10, "total_params": 1000,
               "trainable_percent": 1.0}
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "labels.txt").write_text("\n".join(task.labels) + "\n")
    extras = [c for c in task.splits["test"].columns if c not in ("id", "label")]
    write_predictions(run / "predictions.csv", task, "test", logits, extras)
    if val is not None:
        write_predictions(run / "predictions_val.csv", val[0], "test", val[1], extras)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    mor, mor_logits = _mor(rng)
    val, val_logits = _mor(np.random.default_rng(1))
    _write_run(root / "lora/mor", mor, mor_logits, (val, val_logits))
    los, los_logits = _los(rng)
    _write_run(root / "lora/los", los, los_logits)
    out = tmp_path_factory.mktemp("report")
    assert cli.main(["report", str(root), "--out", str(out), "--bootstrap-resamples", str(RESAMPLES),
                     "--subgroups", "gender,age_group", "--html", "--quiet"]) == 0
    return {"out": out, "root": root, "mor": (mor, mor_logits), "val": (val, val_logits), "los": (los, los_logits)}


def test_predictions_csv_has_predicted_class_safe_columns_and_subgroups(report):
    run = report["root"] / "lora/los"
    frame = pd.read_csv(run / "predictions.csv", dtype=str, keep_default_na=False)
    header = json.loads((run / "predictions_columns.json").read_text())
    assert header == {"p_3": "<=3", "p_3_7": "3-7", "p_7_14": "7-14", "p_14": ">14"}  # no "=" or ">" in a header
    probs = frame[list(header)].astype(float).to_numpy()
    assert list(frame["predicted"]) == [list(header.values())[j] for j in probs.argmax(axis=1)]
    mor = pd.read_csv(report["root"] / "lora/mor/predictions.csv", dtype=str)
    assert list(mor.columns) == ["id", "label", "predicted", "p_0", "p_1", "gender", "age_group"]


def test_clinical_table_matches_sklearn(report):
    table = pd.read_csv(report["out"] / "clinical.csv", dtype=str, keep_default_na=False)
    mor = table[table["Task"] == "MOR"].iloc[0]
    task, logits = report["mor"]
    y, p = task.targets("test"), softmax(logits)[:, 1]
    assert float(mor["AUPRC"].split()[0]) == pytest.approx(100 * average_precision_score(y, p), abs=0.06)
    assert float(mor["Prevalence"]) == pytest.approx(100 * y.mean(), abs=0.06)
    assert float(mor["Brier"].split()[0]) == pytest.approx(100 * brier_score_loss(y, p), abs=0.06)
    # operating point: threshold fixed on validation predictions, applied to test
    val, val_logits = report["val"]
    yv, pv = val.targets("test"), softmax(val_logits)[:, 1]
    t = float(mor["Threshold"])
    assert ((pv < t + 5e-4) & (yv == 0)).sum() / (yv == 0).sum() >= 0.9
    sens = ((p >= t - 5e-4) & (y == 1)).sum() / (y == 1).sum()
    assert float(mor["Sensitivity"].split()[0]) == pytest.approx(100 * sens, abs=1.0)
    los = table[table["Task"] == "LOS"].iloc[0]
    ltask, llogits = report["los"]
    yl, pl = ltask.targets("test"), softmax(llogits)
    present = [0, 1, 2]
    pr = pl[:, present] / pl[:, present].sum(1, keepdims=True)
    ovr = roc_auc_score(yl, pr, multi_class="ovr")
    assert los["Other AUROC"] == f"one-vs-rest {100 * ovr:.1f}"


def test_absent_and_rare_classes_marked_in_table3_and_metrics(report):
    text = (report["out"] / "table3.md").read_text()
    los_cell = [line for line in text.splitlines() if line.startswith("| LLaMA + LoRA")][0]
    assert "\u2021" in los_cell
    assert re.search(r"LOS: class\(es\) >14 absent from the test split; 1 class\(es\)/label\(s\) with fewer than 5 "
                     r"test examples \(7-14\)", text)
    support = json.loads((report["root"] / "lora/los/metrics.json").read_text())["test"]["class_support"]
    assert support["absent"] == [">14"] and support["few"] == ["7-14"]


def test_subgroups_per_group_metrics_and_largest_gap(report):
    table = pd.read_csv(report["out"] / "subgroups.csv", dtype=str, keep_default_na=False)
    mor = table[(table["Task"] == "MOR") & (table["Column"] == "gender")]
    task, logits = report["mor"]
    frame, y, p = task.splits["test"], task.targets("test"), softmax(logits)[:, 1]
    expected = {g: roc_auc_score(y[frame["gender"] == g], p[frame["gender"] == g]) for g in ("F", "M")}
    for g in ("F", "M"):
        row = mor[mor["Group"] == g].iloc[0]
        assert float(row["AUROC"].split()[0]) == pytest.approx(100 * expected[g], abs=0.06)
        assert int(row["Notes"]) == int((frame["gender"] == g).sum())
        assert re.match(r"^[\d.]+ \[[\d.]+, [\d.]+\]$", row["AUPRC"])
    gap = mor[mor["Group"] == "largest AUROC gap"].iloc[0]["AUROC"]
    assert gap == f"{100 * abs(expected['F'] - expected['M']):.1f} points (F over M)"
    assert set(table["Column"]) == {"gender", "age_group"}


def test_multiclass_roc_curve_is_macro_averaged_like_the_table():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 300)
    probs = softmax(rng.normal(size=(300, 3)) + 1.2 * np.eye(3)[y])
    fpr, tpr = roc_points(Predictions(np.arange(300).astype(str), y, probs, ["a", "b", "c"], "multiclass"))
    macro_ovr = roc_auc_score(y, probs, multi_class="ovr")
    assert auc(fpr, tpr) == pytest.approx(macro_ovr, abs=0.01)  # the curve's area is the macro (not micro)


def test_index_html_is_self_contained_with_every_section(report):
    page = (report["out"] / "index.html").read_text()
    for section in ("table3", "clinical", "figures", "subgroups", "cards"):
        assert f"id='{section}'" in page
    assert "http://" not in page and "https://" not in page  # no network
    assert page.count("src='data:image/png;base64,") == len(list(report["out"].glob("*.png")))
    assert {p.name.split("_")[0] for p in report["out"].glob("*.png")} >= {"roc", "pr", "reliability"}
    assert "Intended use." in page and "Limitations." in page and "Trainable parameters" in page


def _chromium() -> str | None:
    import shutil

    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_index_html_renders_in_headless_chromium(report, tmp_path):
    """The page loads in a real browser with no console error or failed load, and every image has a size."""
    import subprocess

    page = report["out"] / "index.html"
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-extensions", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
         "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    body = re.search(r"<body([^>]*)>", result.stdout)
    assert body, result.stdout[:500]
    images = re.search(r'data-images="(\d+):(\d+)"', body.group(1))
    errors = re.search(r'data-errors="([^"]*)"', body.group(1))
    n_png = len(list(report["out"].glob("*.png")))
    assert images and int(images.group(1)) == n_png and int(images.group(2)) == 0  # all rendered, none broken
    assert errors is not None and errors.group(1) == ""
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line or "Refused to" in line]
    assert not console, console


def test_old_predictions_files_still_read_and_get_a_predicted_column(tmp_path):
    """A predictions.csv from before this version (no predicted column, p_<label> names, no header map)."""
    from clinpeft.reporting.stats import read_predictions

    run = tmp_path / "old"
    run.mkdir()
    (run / "labels.txt").write_text("<=3\n3-7\n")
    pd.DataFrame({"id": ["a", "b"], "label": ["<=3", "3-7"], "p_<=3": [0.8, 0.3], "p_3-7": [0.2, 0.7]}).to_csv(
        run / "predictions.csv", index=False)
    preds = read_predictions({"_dir": run, "task_type": "binary"})
    assert list(preds.predicted) == ["<=3", "3-7"] and preds.probs.tolist() == [[0.8, 0.2], [0.3, 0.7]]
