"""The pieces of the real-base demo's Table 3 (issue 25), without training: the TF-IDF reference row
(training/reference.py) as a run `clinpeft report` reads, its place and interval in Table 3, the paired
p-values against `+ LoRA`, the sentence under the table written from the numbers, and the demo's grid wiring
(which base, tasks, variants and recipes each mode runs)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from clinpeft.config import FinetuneConfig, PretrainConfig, load_config
from clinpeft.demo.concepts import write_concept_world
from clinpeft.errors import ClinpeftError
from clinpeft.recipes import demo
from clinpeft.reporting.report import write_report
from clinpeft.training.reference import TFIDF_ROW, tfidf_run


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    return write_concept_world(tmp_path_factory.mktemp("world"), size="quick", seed=0, tasks=["mor"])["tasks"]["mor"]


def model_run(template, out, variant, signal, seed):
    """A fine-tuning run's files with made-up test scores: P(1) = sigmoid(signal * (2y - 1) + noise)."""
    shutil.copytree(template, out)
    frame = pd.read_csv(out / "predictions.csv", dtype={"id": str, "label": str})
    rng = np.random.default_rng(seed)
    y = frame["label"].astype(int).to_numpy()
    p1 = 1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(0, 1, len(y)))))
    frame["p_0"], frame["p_1"] = 1 - p1, p1
    frame.to_csv(out / "predictions.csv", index=False)
    from sklearn.metrics import roc_auc_score

    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("row", "model_kind", "C", "val_by_C", "vocabulary_size"):
        metrics.pop(key)
    metrics.update(variant=variant, base_model_name="smollm2-135m", pooling="mean")
    metrics["test"]["auroc"] = float(roc_auc_score(y, p1))
    (out / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture(scope="module")
def report(task_dir, tmp_path_factory):
    """head only ~ + LoRA (weak scores), the frozen clinical row far ahead, and the TF-IDF reference."""
    root = tmp_path_factory.mktemp("runs")
    tfidf = tfidf_run(task_dir, root / "reference" / "tfidf" / "mor")
    template = root / "reference" / "tfidf" / "mor"
    model_run(template, root / "finetune" / "head", "head", 0.55, 1)
    model_run(template, root / "finetune" / "lora", "lora", 0.5, 2)
    model_run(template, root / "finetune" / "frozen", "clinical_frozen+downstream", 1.6, 3)
    written = write_report([root], root / "report", compare="+ LoRA", n_resamples=300)
    return tfidf, written


def test_tfidf_run_is_a_reference_row_with_val_chosen_c(task_dir, tmp_path):
    result = tfidf_run(task_dir, tmp_path / "run")
    assert result["kind"] == "finetune" and result["row"] == TFIDF_ROW and result["model_kind"] == "reference"
    assert result["val_by_C"][str(result["C"])] == max(result["val_by_C"].values())  # chosen on val, never test
    test = pd.read_csv(tmp_path / "run" / "predictions.csv", dtype=str)
    assert len(test) == len(pd.read_csv(task_dir / "test.csv")) and {"p_0", "p_1"} <= set(test.columns)
    assert 0.5 < result["test"]["auroc"] < 0.95
    again = tfidf_run(task_dir, tmp_path / "again")  # deterministic
    assert again["test"]["auroc"] == result["test"]["auroc"]


def test_reference_row_is_last_with_its_interval_and_p_value(report):
    tfidf, written = report
    table = pd.read_csv(written["table3.csv"])
    assert table["Model"].tolist()[-1] == TFIDF_ROW  # below the model rows
    row = table[table["Model"] == TFIDF_ROW].iloc[0]
    assert row["MOR"] == pytest.approx(100 * tfidf["test"]["auroc"])
    assert row["MOR lo"] < row["MOR"] < row["MOR hi"]  # bootstrapped from its predictions.csv
    assert np.isfinite(row["MOR p"]) and row["Compared with"] == "+ LoRA"


def test_sentence_under_the_table_is_written_from_the_numbers(report):
    _, written = report
    table = pd.read_csv(written["table3.csv"]).set_index("Model")
    text = written["table3.md"].read_text()
    sentence = next(line for line in text.splitlines() if line.startswith("On the macro average"))
    best = table["Macro avg"].idxmax()
    assert best == "+ Clinical LoRA (Frozen) + Downstream LoRA"
    assert sentence.startswith(f"On the macro average the best row is {best} ({table.loc[best, 'Macro avg']:.1f} [")
    differ, _, same = sentence.partition("beyond chance")
    assert best in differ  # clearly ahead of + LoRA: p below 0.05
    assert "smollm2-135m (mean pooling) (" in same and "not" in same  # head only ~ + LoRA: within noise
    p_best = table.loc[best, "Macro avg p"]
    assert p_best < 0.05 and table.loc["smollm2-135m (mean pooling)", "Macro avg p"] >= 0.05
    assert text.index(sentence) < text.index("\n- ")  # right under the table, before the footnotes


def test_grid_wiring_of_each_mode():
    default, full, quick = demo.grid_for(), demo.grid_for(full=True), demo.grid_for(quick=True)
    assert default.base == full.base == "smollm2-135m" and quick.base == "demo"
    assert default.variants == full.variants == ("head", "lora", "clinical_frozen+downstream",
                                                 "clinical_trainable+downstream")
    assert set(default.tasks) <= set(full.tasks) and len(quick.tasks) == 5
    assert sum(default.minutes) <= 25  # the budget the grid was measured against (2 idle cores)
    with pytest.raises(ClinpeftError, match="exclude each other"):
        demo.grid_for(quick=True, full=True)
    for grid in (default, full, quick):  # every recipe loads with the demo's overrides
        config = load_config(PretrainConfig, demo.CONFIGS / grid.pretrain_recipe,
                             [f"model.base={grid.base}", "data.paths=[x.csv.gz]", *grid.pretrain_overrides])
        assert config.model.base == grid.base
        for variant in grid.variants:
            recipe = grid.finetune_recipes.get(variant, grid.finetune_recipes["*"])
            config = load_config(FinetuneConfig, demo.CONFIGS / recipe, [f"variant={variant}", "clinical_adapter=c",
                                                                          *grid.finetune_overrides])
            assert config.variant == variant and config.model.pooling == "mean"


def test_sentence_when_no_row_differs_names_them_all_as_within_noise():
    from types import SimpleNamespace

    from clinpeft.reporting.stats import comparison_sentence

    paired = {("head", "macro"): SimpleNamespace(diff=0.004, p_value=0.4),
              ("clinical", "macro"): SimpleNamespace(diff=0.06, p_value=0.052)}
    stats = SimpleNamespace(compare_row="+ LoRA", paired=paired, macro_ci={})
    sentence = comparison_sentence(stats, {"+ LoRA": 67.7, "head": 68.1, "clinical": 73.7})
    assert sentence == ("On the macro average the best row is clinical (73.7); against + LoRA (67.7), no row "
                        "differs from it at paired bootstrap p < 0.05 (within this test set's noise): "
                        "head (+0.4 points, p=0.400), clinical (+6.0 points, p=0.052).")
    assert "beyond chance" not in sentence
