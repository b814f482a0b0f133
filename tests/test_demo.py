"""`clinpeft demo --quick` end to end: both tables from the real recipes, and a rerun reuses the runs."""

import json

import pandas as pd
import pytest

from clinpeft.cli import main
from clinpeft.methods import METHOD_NAMES
from clinpeft.recipes import demo

TASKS = ["PMV", "MOR", "LOS", "DIAG", "PROC"]


@pytest.fixture(scope="module")
def demo_run(demo_home, tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("CLINPEFT_HOME", str(demo_home))
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    try:
        assert main(["demo", "--out", str(out), "--quick", "--quiet"]) == 0
    finally:
        mp.undo()
    return out


@pytest.mark.slow
def test_table2_shows_clinical_pretraining_lowers_test_perplexity(demo_run):
    table = pd.read_csv(demo_run / "report" / "table2.csv")
    run = json.loads((demo_run / "pretrain" / "lora" / "run.json").read_text())
    assert len(table) == 2  # the base model without adapter, and the clinical LoRA
    assert run["test_ppl"] < run["base_test_ppl"]
    assert run["trainable_params"] > 0 and run["train_time_s"] > 0
    markdown = (demo_run / "report" / "table2.md").read_text()
    assert "LoRA" in markdown and "(none: base model)" in markdown


@pytest.mark.slow
def test_table3_has_every_task_and_the_macro_average(demo_run):
    table = pd.read_csv(demo_run / "report" / "table3.csv")
    probes = table["Model"].str.endswith("(linear probe)")
    reference = table["Model"] == "TF-IDF + logistic regression"
    # lora, clinical_frozen+downstream, clinical_trainable+downstream; the frozen models' linear probes (the base,
    # the base + clinical LoRA) computed by those runs; and the bag-of-words reference, last
    assert (~probes & ~reference).sum() == 3 and probes.sum() == 2 and reference.tolist()[-1], table["Model"].tolist()
    for task in TASKS:
        assert table[task].between(0, 100).all(), task
        assert (table[f"{task} lo"] <= table[task]).all() and (table[task] <= table[f"{task} hi"]).all()  # every row
    assert table["Macro avg"].to_numpy() == pytest.approx(table[TASKS].mean(axis=1).to_numpy())
    for variant in ("lora", "clinical_frozen+downstream", "clinical_trainable+downstream"):
        for task in TASKS:
            metrics = json.loads((demo_run / "finetune" / variant / task.lower() / "metrics.json").read_text())
            assert metrics["variant"] == variant and metrics["task"] == task.lower()


@pytest.mark.slow
def test_table3_compares_with_lora_and_says_so_in_a_sentence(demo_run):
    table = pd.read_csv(demo_run / "report" / "table3.csv").set_index("Model")
    lora = next(name for name in table.index if name.endswith("+ LoRA"))
    assert (table["Compared with"].dropna() == lora).all()
    others = table.index.drop(lora)
    assert table.loc[others, "Macro avg p"].between(0, 1).all()  # every other row has a paired macro p-value
    text = (demo_run / "report" / "table3.md").read_text()
    sentence = next(line for line in text.splitlines() if line.startswith("On the macro average the best row is "))
    assert table["Macro avg"].idxmax() in sentence and f"against {lora} (" in sentence
    differ = [name for name in others if table.loc[name, "Macro avg p"] < 0.05]
    assert ("beyond chance" in sentence) == bool(differ)


@pytest.mark.slow
def test_rerun_reuses_finished_runs(demo_run, demo_home, monkeypatch, capsys):
    monkeypatch.setenv("CLINPEFT_HOME", str(demo_home))
    stamp = (demo_run / "finetune" / "lora" / "mor" / "metrics.json").stat().st_mtime
    assert main(["demo", "--out", str(demo_run), "--quick", "--quiet"]) == 0
    assert (demo_run / "finetune" / "lora" / "mor" / "metrics.json").stat().st_mtime == stamp
    assert "reusing" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(demo.GRIDS))
def test_every_run_of_every_grid_has_a_valid_config(name, tmp_path):
    """Each Table 2 run (--methods all) and Table 3 run of a grid resolves its recipe + overrides (a key a method
    refuses, e.g. peft.lora_dropout on prefix tuning, fails here, not minutes into a demo); --quick's cuts stay
    where they belong: dropout off on the LoRAs only, one probe per frozen model."""
    grid = demo.GRIDS[name]
    corpus = [tmp_path / "corpus.csv.gz"]
    for method in METHOD_NAMES:
        config = demo.pretrain_config(grid, method, grid.base, corpus, seed=0)
        assert config.peft.method == method and config.train.seed == 0
    for task in grid.tasks:
        for variant in grid.variants:
            config = demo.finetune_config(grid, variant, tmp_path / task, grid.base, tmp_path / "clinical", seed=0)
            assert config.variant == variant and config.task.path == str(tmp_path / task)
    if name == "quick":
        assert demo.pretrain_config(grid, "lora", grid.base, corpus, seed=0).peft.lora_dropout == 0
        probes = {v: demo.finetune_config(grid, v, tmp_path, grid.base, tmp_path, 0).eval.probe for v in grid.variants}
        assert probes == {"lora": True, "clinical_frozen+downstream": True, "clinical_trainable+downstream": False}


def test_frozen_libraries_hides_the_imported_objects_from_the_collector_until_the_demo_ends():
    import gc

    before = gc.get_freeze_count()
    with demo.frozen_libraries():
        assert gc.get_freeze_count() > before + 100_000  # torch, transformers, peft, datasets, sklearn
    assert gc.get_freeze_count() == 0  # unfrozen: a caller that goes on in the process collects as before
