"""`clinpeft report`: a Table 3 row per frozen model's linear probe, and the guard's warnings said again."""

from clinpeft.recipes import report as report_recipe
from clinpeft.reporting.runs import find_runs, probe_runs
from test_report import finetune_run


def probe(val, test):
    return {"val": val, "test": test, "C": 0.1}


def runs_with_probes(root):
    # two runs on the base (head, lora) share one probe: one row; the clinical variants have their own
    finetune_run(root, "head-mor", "mor", "head", 0.80, probe=probe(0.82, 0.79))
    finetune_run(root, "lora-mor", "mor", "lora", 0.85, probe=probe(0.82, 0.79))
    finetune_run(root, "lora-los", "los", "lora", 0.70, probe=probe(0.66, 0.64))
    finetune_run(root, "cf-mor", "mor", "clinical_frozen+downstream", 0.61, clinical_adapter="runs/clin",
                 clinical_method="lora", probe=probe(0.84, 0.83),
                 guard={"warnings": ["warning: fine-tuning ended below the linear probe of its own frozen model: "
                                     "val AUROC 0.6000 < probe 0.8400; try train.head_init=probe (LP-FT)"]})
    finetune_run(root, "old-pmv", "pmv", "lora", 0.7)  # before the probe existed: no probe row, no error


def test_probe_rows_one_per_frozen_model_and_task(tmp_path):
    runs_with_probes(tmp_path)
    probes = probe_runs(find_runs([tmp_path])[1])
    cells = sorted((p["row"], p["task"], p["test"]["auroc"]) for p in probes)
    assert cells == [("LLaMA (linear probe)", "los", 0.64), ("LLaMA (linear probe)", "mor", 0.79),
                     ("LLaMA + Clinical LoRA (linear probe)", "mor", 0.83)]


def test_report_table3_has_the_probe_rows_and_prints_the_guard(tmp_path):
    runs_with_probes(tmp_path / "runs")
    written = report_recipe.main([tmp_path / "runs"], tmp_path / "out", n_resamples=0, progress=False)
    table = written["table3.md"].read_text()
    row = next(line for line in table.splitlines() if line.startswith("| LLaMA (linear probe)"))
    assert "79.00" in row and "64.00" in row
    assert "| LLaMA + Clinical LoRA (linear probe) " in table
    assert "(linear probe) rows: a logistic regression" in table
    lines = report_recipe.summary(written, tmp_path / "out")
    warnings = [line for line in lines if line.startswith("warning: ")]
    assert len(warnings) == 1 and "cf-mor" in warnings[0] and "0.6000 < probe 0.8400" in warnings[0]
