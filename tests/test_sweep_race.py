"""The two-worker sweep under CPU load: exactly N trials, none taken for dead (issue 11, item 2).

The race it guards: a worker asked for a trial, then recorded host, pid and start time as three
writes; another worker's recovery, outside the ask lock, read the trial between them, took it for a
dead worker's and re-queued it (N + 1 trials). A busy process stretches every gap between writes.
Run it in a loop to gain confidence (see the sweep part of the report), e.g.
    for i in $(seq 20); do pytest -q -p no:cacheprovider tests/test_sweep_race.py || echo FAIL; done
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from clinpeft.cli import main as cli_main

TRIALS = 3  # two workers, three trials: each worker recovers while the other holds a running trial
BUSY_S = 300  # the CPU load ends by itself after this, if the test cannot kill it


@pytest.mark.slow
def test_two_workers_under_cpu_load_run_exactly_n_trials(tmp_path, tiny_llama, synthetic_tasks):
    recipe = tmp_path / "race.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"base": str(tiny_llama), "dtype": "float32"}, "variant": "lora",
        "lora": {"target_modules": ["q_proj", "v_proj"]},
        "task": {"path": str(synthetic_tasks["mor"]), "max_seq_len": 32, "max_examples": 16},
        "train": {"lr": 1e-2, "batch_size": 8, "grad_accum": 1, "epochs": 1}, "eval": {"batch_size": 16},
        "search": {"lora.lora_dropout": None, "lora.lora_alpha": None}}, sort_keys=False))
    out = tmp_path / "sw"
    busy = subprocess.Popen([sys.executable, "-c", f"import time\nend = time.time() + {BUSY_S}\n"
                             "while time.time() < end:\n    pass"])
    try:
        code = cli_main(["sweep", str(recipe), "--out", str(out), "--trials", str(TRIALS), "--workers", "2",
                         "--sampler", "random", "--quiet"])
    finally:
        busy.kill()
        busy.wait()
    assert code == 0
    trials = pd.read_csv(out / "trials.csv")
    assert list(trials["number"]) == list(range(TRIALS))  # exactly N: no trial failed as dead and re-run
    assert set(trials["state"]) == {"COMPLETE"} and trials["error"].isna().all()
    assert len(set(trials["run_dir"])) == TRIALS
