"""`clinpeft experiment`: the Table 3 grid runs every cell, resumes after an interruption (only
missing cells run again), records a failing cell without stopping the others, and writes Table 3.

One tiny grid (tiny LLaMA with two variants, a tiny BERT baseline, a broken model) x two tasks,
a handful of notes and one epoch per cell.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from clinpeft import cli
from clinpeft.config import load_config
from clinpeft.errors import ClinpeftError
from clinpeft.recipes import experiment, finetune
from clinpeft.recipes.experiment import ExperimentConfig

CONFIGS = Path(experiment.__file__).resolve().parent.parent / "configs"
CELL_OVERRIDES = ["task.max_examples=24", "task.max_seq_len=64", "train.batch_size=8", "train.grad_accum=1",
                  "train.epochs=1", "train.lr=1e-2", "eval.batch_size=16", "eval.bootstrap_resamples=0",
                  "lora.r=4", "lora.target_modules=[q_proj,v_proj]"]


def grid_recipe(tmp_path: Path, tiny_llama, tiny_bert, clinical_run, synthetic_tasks) -> Path:
    grid = {
        "data": {"tasks_dir": str(synthetic_tasks["mor"].parent), "tasks": ["mor", "diag"]},
        "finetune": {"overrides": CELL_OVERRIDES},
        "models": [
            {"name": "tiny", "base": str(tiny_llama), "variants": ["lora", "clinical_trainable+downstream"],
             "clinical": {"run": str(clinical_run)}},
            {"name": "TinyBERT", "base": str(tiny_bert), "variants": ["full"], "overrides": ["train.lr=1e-3"]},
            {"name": "broken", "base": str(tmp_path / "no-such-model"), "variants": ["head"]},
        ],
        "report": {"bootstrap_resamples": 0},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def first_run(tiny_llama, tiny_bert, clinical_run, synthetic_tasks, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("experiment")
    recipe = grid_recipe(tmp, tiny_llama, tiny_bert, clinical_run, synthetic_tasks)
    out = tmp / "t3"
    state = experiment.main(load_config(ExperimentConfig, recipe), out, recipe, progress=False)
    return recipe, out, state


@pytest.mark.slow
def test_grid_runs_every_cell_and_writes_table3(first_run):
    recipe, out, state = first_run
    assert state["n_cells"] == 8 and state["n_ran"] == 6 and state["n_failed"] == 2
    for cell in ("tiny/lora/mor", "tiny/clinical_trainable+downstream/diag", "TinyBERT/full/mor"):
        metrics = json.loads((out / cell / "metrics.json").read_text())
        assert metrics["kind"] == "finetune" and 0.0 <= metrics["test"]["auroc"] <= 1.0
    assert json.loads((out / "tiny/lora/mor/metrics.json").read_text())["base_model_name"] == "tiny"
    table = pd.read_csv(out / "report" / "table3.csv")
    probes = table["Model"].str.endswith("(linear probe)")
    # each frozen model's linear probe (issue 24: what fine-tuning must clear) as rows of its own
    assert set(table.loc[probes, "Model"]) == {"tiny (linear probe)", "tiny + Clinical LoRA (linear probe)",
                                                "TinyBERT (linear probe)"}
    table = table[~probes]
    assert set(table["Model"]) == {"tiny + LoRA", "tiny + Clinical LoRA (Trainable) + Downstream LoRA", "TinyBERT"}
    assert table["Tasks averaged"].tolist() == [2, 2, 2]
    assert table[["MOR", "DIAG"]].notna().all().all()
    bert = table.set_index("Model").loc["TinyBERT"]
    mor = json.loads((out / "TinyBERT/full/mor/metrics.json").read_text())["test"]["auroc"]
    assert bert["MOR"] == pytest.approx(100 * mor)
    assert "TinyBERT" in (out / "report" / "table3.md").read_text()
    assert (out / "experiment.yaml").is_file()


@pytest.mark.slow
def test_failing_cell_is_recorded_and_the_others_finish(first_run):
    recipe, out, state = first_run
    failed = {r["cell"]: r for r in state["cells"] if r["status"] == "failed"}
    assert set(failed) == {"broken/head/mor", "broken/head/diag"}
    assert "model.base" in failed["broken/head/mor"]["error"] and "no-such-model" in failed["broken/head/mor"]["error"]
    record = json.loads((out / "broken" / "head" / "mor.failed.json").read_text())
    assert record["cell"] == "broken/head/mor" and "no-such-model" in record["error"]
    assert not (out / "broken" / "head" / "mor").exists()  # no half-written run directory
    on_disk = json.loads((out / "experiment.json").read_text())
    assert on_disk["n_failed"] == 2 and len(on_disk["cells"]) == 8


@pytest.mark.slow
def test_rerun_runs_only_the_missing_and_failed_cells(first_run, monkeypatch, capsys):
    recipe, out, _ = first_run
    removed = out / "tiny" / "lora" / "diag"
    shutil.rmtree(removed)  # as if the run had been interrupted during this cell
    kept = {p: p.stat().st_mtime_ns for p in out.glob("*/*/*/metrics.json")}
    calls = []
    real = finetune.main

    def counting(config, run_dir, *args, **kwargs):
        calls.append(Path(run_dir).relative_to(out).as_posix())
        return real(config, run_dir, *args, **kwargs)

    monkeypatch.setattr(finetune, "main", counting)
    code = cli.main(["experiment", str(recipe), "--out", str(out), "--quiet"])
    assert code == 1  # the broken cells failed again
    assert calls == ["tiny/lora/diag", "broken/head/mor", "broken/head/diag"]  # finished cells: skipped
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # untouched
    assert (removed / "metrics.json").is_file()
    printed = capsys.readouterr()
    assert "[2/8] tiny/lora/diag ... val AUROC" in printed.out and "[1/8] tiny/lora/mor ... done earlier" in printed.out
    assert "broken/head/mor" in printed.err and "rerun the same command" in printed.err
    state = json.loads((out / "experiment.json").read_text())
    assert (state["n_ran"], state["n_done_earlier"], state["n_failed"]) == (1, 5, 2)


def test_grid_recipe_errors_name_the_key(tmp_path):
    base = {"data": {"demo": "quick"}, "models": [{"name": "m", "base": "demo", "variants": ["clinical_frozen"]}]}
    cases = [
        (base, "clinical_\\* variants need clinical.run or clinical.recipe"),
        ({**base, "models": [{"name": "m", "base": "demo", "variants": ["lora"]}] * 2}, "unique"),
        ({**base, "data": {"demo": "quick", "tasks_dir": "x"}}, "exactly one of data.demo"),
        ({**base, "models": [{"name": "m", "base": "demo", "variants": ["loraa"]}]}, "models.0.variants.0"),
    ]
    for tree, message in cases:
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump(tree))
        with pytest.raises(ClinpeftError, match=message):
            load_config(ExperimentConfig, path)
    # a bad key inside a cell's overrides stops the grid before anything is written
    grid = load_config(ExperimentConfig, None, [f"data.tasks_dir={tmp_path}", "finetune.overrides=[train.lrr=1]",
                                                 "models=[{name: m, base: demo, variants: [lora]}]"])
    with pytest.raises(ClinpeftError, match="unknown config key 'train.lrr'"):
        experiment.main(grid, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("recipe, n_cells", [("demo/table3.yaml", 40), ("llama-7b/table3.yaml", 85)])
def test_shipped_grids_plan_and_validate_every_cell(recipe, n_cells, tmp_path):
    """Every cell config of the shipped grids is valid (a typo would stop the grid before training)."""
    path = CONFIGS / recipe
    grid = load_config(ExperimentConfig, path)
    clinical = {m.name: tmp_path / m.name / "pretrain" for m in grid.models if m.clinical}
    cells = experiment.plan_cells(grid, tmp_path, tmp_path / "tasks", path, clinical)
    assert len(cells) == n_cells
    assert len({c.out for c in cells}) == n_cells
    for model in grid.models:
        if model.clinical and model.clinical.recipe:
            config = experiment.pretrain_config(model, path, ["notes.csv"], grid.models[0].name)  # validates too
            assert config.model.name == grid.models[0].name and config.data.paths == ["notes.csv"]
