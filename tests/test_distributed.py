"""The distributed parts, for real: a PostgreSQL sweep with two worker processes, one SIGKILLed mid-trial.

Multi-process training on CPU is not here: `accelerate launch --cpu --num_processes 2` (accelerate 1.15)
starts one process (its simple launcher), and `torchrun --nproc_per_node 2` on CPU starts two processes
that each train alone (the Trainer sets up no gloo process group); a test on either would prove nothing.

PostgreSQL comes from conftest.postgres_url (skips, saying why, only when no server can start);
`.ci/run` installs Debian's postgresql package so CI runs these.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
pytestmark = pytest.mark.slow

WORKER = textwrap.dedent("""
    import os, sys, time
    from clinpeft.sweep import study
    study.HEARTBEAT_INTERVAL_S, study.GRACE_PERIOD_S = 1, 3  # a dead worker's trial is stale after 3 s
    from clinpeft.recipes import sweep
    def run_trial(spec, trial, point, run_dir, progress):  # a 2-second stand-in for a training run
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "worker.pid").write_text(str(os.getpid()))
        time.sleep(2)
        return point["train.lr"], {}
    sweep.run_trial = run_trial
    from clinpeft.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def test_postgres_sweep_two_workers_one_killed(tmp_path, tiny_llama, synthetic_tasks, postgres_url, monkeypatch):
    from clinpeft.recipes import sweep
    from clinpeft.sweep import study
    from test_sweep import fake_objective, write_recipe

    recipe = write_recipe(tmp_path / "sweep.yaml", tiny_llama, synthetic_tasks["mor"],
                          search={"lora.lora_dropout": None, "train.lr": {"low": 1e-3, "high": 1e-1, "log": True}})
    out, trials, name = tmp_path / "sw", 4, f"kill-{os.getpid()}"
    args = ["sweep", recipe, "--out", str(out), "--trials", str(trials), "--storage", postgres_url,
            "--study", name, "--sampler", "random", "--quiet"]
    # the study (and its tables) first, as `clinpeft sweep --workers N` does before starting its workers
    spec = study.setup(recipe, [], trials=trials, out=out, storage=postgres_url, study_name=name, sampler="random")
    study.prepare_out(spec, out, overwrite=False)
    study.open_study(spec, out)
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, *args, "--worker", str(i)], env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    victim = workers[0]
    deadline = time.time() + 120
    while not any(p.read_text() == str(victim.pid) for p in out.glob("trials/*/worker.pid")):
        assert time.time() < deadline and victim.poll() is None, victim.stderr.read() if victim.poll() else "slow"
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)  # mid-trial: it never tells the study
    victim.wait()
    _, err = workers[1].communicate(timeout=300)
    assert workers[1].returncode == 0, err
    # the same command, as the user would rerun it: recovers what is left and writes the results
    monkeypatch.setattr(study, "GRACE_PERIOD_S", 3)
    time.sleep(4)
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    sweep.main(recipe, [], out=out, trials=trials, storage=postgres_url, study_name=name, sampler="random",
               progress=False)
    table = pd.read_csv(out / "trials.csv")
    assert (table["state"] == "COMPLETE").sum() == trials  # exactly N, the killed one retried once
    assert (table["state"] != "COMPLETE").sum() == 1 and (out / "best.yaml").is_file()
