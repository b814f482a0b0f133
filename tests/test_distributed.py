"""The distributed parts, for real: a PostgreSQL sweep with two worker processes, one SIGKILLed mid-trial,
and data-parallel training with `torchrun --nproc_per_node 2` on the CPU (a gloo process group: the same
Trainer/accelerate path as several GPUs, with the gradients all-reduced).

PostgreSQL comes from conftest.postgres_url (skips, saying why, only when no server can start);
`.ci/run` installs Debian's postgresql package so CI runs these.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
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


LAUNCHERS = {  # two processes on this machine; on a CPU both give a gloo group (accelerate's --cpu would not)
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", "0"],
}


def launch(launcher: str, *args: str, wait: bool = True):
    command = [*LAUNCHERS[launcher], "-m", "clinpeft.cli", *args, "--quiet"]
    if not wait:
        return subprocess.Popen(command, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    done = subprocess.run(command, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (Linux /proc): the launcher's agent and the training processes."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def kill_all(process: subprocess.Popen) -> None:
    """Pre-emption without a grace period: SIGKILL the launcher and every process it started."""
    for pid in [*descendants(process.pid), process.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    process.wait()


def wait_for_checkpoint(process, out: Path, seconds: float = 300) -> None:
    """Until the first complete Trainer checkpoint of `out` (its trainer_state.json written) while `process` runs."""
    deadline = time.time() + seconds
    while not list(Path(f"{out}.partial").glob("checkpoints/checkpoint-*/trainer_state.json")):
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the training processes through /proc")
def test_two_processes_train_one_model_together_and_resume(tmp_path, tiny_llama, synthetic_corpus, synthetic_tasks):
    """pretrain and finetune with two data-parallel processes (torchrun, accelerate launch): one process group
    (half the optimizer steps of one process for the same epoch), one run directory, one summary line,
    perplexities and test predictions exactly those one process computes; a pretraining SIGKILLed with all its
    processes resumes from its checkpoint to the uninterrupted run's adapter (same test perplexity)."""
    from clinpeft.config import PretrainConfig, load_config
    from clinpeft.recipes import evaluate, pretrain
    from conftest import pretrain_overrides

    recipe = "configs/demo/pretrain_lora.yaml"
    overrides = [*pretrain_overrides(tiny_llama, synthetic_corpus), "train.max_steps=-1", "train.epochs=1",
                 "train.checkpoint_every=5", "train.logging_steps=1"]  # a logged loss per step (the Trainer's
    # logged value averages its window, and a window cut by the resumption averages only its resumed part)
    done = launch("torchrun", "pretrain", recipe, *overrides, "--out", str(tmp_path / "clinical"))
    assert done.stdout.count("trainable params") == 1  # printed by the main process only
    run = json.loads((tmp_path / "clinical" / "run.json").read_text())
    assert run["processes"] == 2 and run["resumed_from_step"] == 0
    # one epoch, 4 blocks per process per step: the two processes share the blocks (DistributedSampler)
    assert run["optimizer_steps"] == math.ceil(run["train_blocks"] / (4 * 2)) and run["optimizer_steps"] > 5
    assert run["test_ppl"] < run["base_test_ppl"]
    # the sharded perplexity pass adds up to one process's: same base model, same test blocks
    single = pretrain.main(load_config(PretrainConfig, recipe, [*overrides, "train.max_steps=1"]),
                           tmp_path / "single", progress=False)
    assert single["processes"] == 1 and single["test_blocks"] == run["test_blocks"]
    assert run["base_test_ppl"] == pytest.approx(single["base_test_ppl"], rel=1e-9)

    # pre-empted after its first checkpoint, all processes at once; the same command resumes it
    out = tmp_path / "resumed"
    killed = launch("accelerate", "pretrain", recipe, *overrides, "--out", str(out), wait=False)
    wait_for_checkpoint(killed, out)
    kill_all(killed)
    assert not out.exists() and Path(f"{out}.partial").is_dir()
    launch("accelerate", "pretrain", recipe, *overrides, "--out", str(out))
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["resumed_from_step"] >= 5 and resumed["optimizer_steps"] == run["optimizer_steps"]
    # same data order, schedule and all-reduced gradients: the uninterrupted run's adapter (fp32 sums in
    # another order at most: 1e-6 relative)
    assert resumed["test_ppl"] == pytest.approx(run["test_ppl"], rel=1e-6)
    assert [p["loss"] for p in resumed["loss_curve"]] == pytest.approx([p["loss"] for p in run["loss_curve"]],
                                                                         rel=1e-5)

    task = synthetic_tasks["mor"]
    done = launch("torchrun", "finetune", "configs/demo/finetune_clinical.yaml", f"model.base={tiny_llama}",
                  f"clinical_adapter={tmp_path / 'clinical'}", f"task.path={task}", "task.max_seq_len=64",
                  "train.batch_size=8", "train.epochs=1", "eval.bootstrap_resamples=0", "--out", str(tmp_path / "mor"))
    assert done.stdout.count("clinical_trainable+downstream: val AUROC") == 1  # the run's line, once
    metrics = json.loads((tmp_path / "mor" / "metrics.json").read_text())
    n_train = len(pd.read_csv(task / "train.csv"))
    assert metrics["processes"] == 2 and metrics["optimizer_steps"] == math.ceil(n_train / (8 * 2))
    predictions = pd.read_csv(tmp_path / "mor" / "predictions.csv", dtype={"id": str})
    assert predictions["id"].tolist() == pd.read_csv(task / "test.csv", dtype={"id": str})["id"].tolist()
    again = evaluate.main(tmp_path / "mor", task / "test.csv", tmp_path / "eval", progress=False,
                          bootstrap_resamples=0)
    assert again["eval"]["auroc"] == pytest.approx(metrics["test"]["auroc"], abs=1e-9)
    rescored = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    np.testing.assert_allclose(rescored[["p_0", "p_1"]], predictions[["p_0", "p_1"]], atol=1e-5)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["clinical", "eval", "mor", "resumed", "single"]  # no other process's temporary directory
