"""Checkpoints and resume: a SIGKILLed run continues from its last checkpoint, as if never stopped.

The first run is a real `clinpeft` process killed with SIGKILL once its first checkpoint is complete
(not an exception: nothing in the process gets to clean up). Its optimizer steps are slowed down
after that checkpoint (a test-only patch inside the child) so the kill lands mid-run on any machine.
The rerun must pick up at the checkpoint's step, with the same learning-rate schedule and data
order: its loss curve after the checkpoint equals an uninterrupted run's. Both runs are fp32 on CPU
with the same seeds and batches, so they differ only by floating-point reduction order in the
restored optimizer state: we allow 1e-4 relative (observed: ~1e-7), far below the step-to-step
change of the loss at lr 1e-2 (~1e-2 relative), so a shifted data order or schedule would fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from clinpeft.rundir import complete_checkpoints, partial_dir
from conftest import pretrain_overrides

SRC = Path(__file__).resolve().parents[1] / "src"
pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import sys, time
    import transformers
    step = transformers.Trainer.training_step
    def slow_step(self, *args, **kwargs):  # after the first checkpoint, slow enough to be killed mid-run
        if self.state.global_step >= {slow_after}:
            time.sleep(0.4)
        return step(self, *args, **kwargs)
    transformers.Trainer.training_step = slow_step
    from clinpeft.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def recipe(folder: Path) -> str:
    (folder / "r.yaml").write_text("{}\n")
    return str(folder / "r.yaml")


def start(args: list[str], slow_after: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD.format(slow_after=slow_after), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(proc: subprocess.Popen, out: Path, timeout: float = 240) -> list[Path]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = complete_checkpoints(partial_dir(out) / "checkpoints")
        if found:
            return found
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before a checkpoint: {proc.stderr.read()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("no checkpoint appeared")


def kill_after_first_checkpoint(args: list[str], out: Path, slow_after: int, sig=signal.SIGKILL) -> int:
    proc = start(args, slow_after)
    wait_for_checkpoint(proc, out)
    os.kill(proc.pid, sig)
    proc.communicate(timeout=120)
    return proc.returncode


def curve(result: dict) -> dict[int, tuple[float, float]]:
    return {e["step"]: (e["loss"], e["learning_rate"]) for e in result["loss_curve"]}


def assert_continues(resumed: dict, straight: dict, steps: int) -> None:
    assert resumed["resumed_from_step"] > 0  # continued, not from zero
    assert resumed["optimizer_steps"] == straight["optimizer_steps"] == steps  # counted once
    logged = [e["step"] for e in resumed["loss_curve"]]
    assert logged == sorted(set(logged)) == list(range(1, steps + 1))  # every step once
    a, b = curve(resumed), curve(straight)
    for step in range(resumed["resumed_from_step"] + 1, steps + 1):
        assert a[step][1] == pytest.approx(b[step][1], rel=1e-9)  # the schedule continued
        assert a[step][0] == pytest.approx(b[step][0], rel=1e-4)  # so did the data order (and the weights)


def test_killed_pretraining_resumes_from_its_checkpoint(tiny_llama, synthetic_corpus, tmp_path):
    from clinpeft.config import PretrainConfig, load_config
    from clinpeft.errors import ClinpeftError
    from clinpeft.recipes import pretrain

    steps = 10
    overrides = [*pretrain_overrides(tiny_llama, synthetic_corpus), f"train.max_steps={steps}",
                 "train.checkpoint_every=3", "train.logging_steps=1", "eval.base_model=false"]
    out = tmp_path / "run"
    rc = kill_after_first_checkpoint(["pretrain", recipe(tmp_path), *overrides, "--out", str(out), "--quiet"], out, 3)
    assert rc == -signal.SIGKILL
    partial = partial_dir(out)
    assert not out.exists() and partial.is_dir() and (partial / "config.yaml").exists()

    # another config is refused, naming the key; the partial run is untouched
    other = load_config(PretrainConfig, None, [*overrides, "train.lr=5e-3"])
    with pytest.raises(ClinpeftError, match=r"train\.lr.*--restart"):
        pretrain.main(other, out, progress=False)
    assert complete_checkpoints(partial / "checkpoints")

    config = load_config(PretrainConfig, None, overrides)
    resumed = pretrain.main(config, out, progress=False)
    straight = pretrain.main(config, tmp_path / "straight", progress=False)
    assert_continues(resumed, straight, steps)
    assert resumed["test_ppl"] == pytest.approx(straight["test_ppl"], rel=1e-4)
    assert not partial.exists() and not (out / "checkpoints").exists() and not (out / ".cache").exists()
    assert json.loads((out / "run.json").read_text())["optimizer_steps"] == steps


def test_sigterm_writes_a_checkpoint_and_exits(tiny_llama, synthetic_corpus, tmp_path):
    """Pre-emption: SIGTERM -> a checkpoint at the current step, one line, exit 143; --restart starts over."""
    from clinpeft.cli import main

    overrides = [*pretrain_overrides(tiny_llama, synthetic_corpus), "train.max_steps=40", "train.checkpoint_every=2",
                 "train.checkpoint_minutes=0", "eval.base_model=false"]
    out = tmp_path / "run"
    proc = start(["pretrain", recipe(tmp_path), *overrides, "--out", str(out), "--quiet"], slow_after=2)
    first = wait_for_checkpoint(proc, out)
    os.kill(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: SIGTERM at optimizer step") and "Traceback" not in err
    last = complete_checkpoints(partial_dir(out) / "checkpoints")[-1]
    assert int(last.name.split("-")[1]) >= int(first[-1].name.split("-")[1])
    assert f"optimizer step {last.name.split('-')[1]}:" in lines[-1]  # the checkpoint is at the step it stopped

    shorter = ["pretrain", recipe(tmp_path), *overrides, "train.max_steps=4", "--out", str(out), "--quiet"]
    assert main(shorter) == 2  # another config: refused
    assert main([*shorter, "--restart"]) == 0
    assert json.loads((out / "run.json").read_text())["resumed_from_step"] == 0


def test_killed_finetuning_resumes_at_the_next_epoch(tiny_llama, synthetic_tasks, tmp_path):
    from clinpeft.config import FinetuneConfig, load_config
    from clinpeft.recipes import finetune

    overrides = [f"model.base={tiny_llama}", f"task.path={synthetic_tasks['mor']}", "task.max_seq_len=64",
                 "train.batch_size=8", "train.grad_accum=1", "train.epochs=3", "train.lr=1e-2", "lora.r=4",
                 "variant=lora", "train.logging_steps=1", "eval.bootstrap_resamples=0"]
    config = load_config(FinetuneConfig, None, overrides)
    straight = finetune.main(config, tmp_path / "straight", progress=False)
    per_epoch = straight["optimizer_steps"] // 3
    out = tmp_path / "run"
    args = ["finetune", recipe(tmp_path), *overrides, "--out", str(out), "--quiet"]
    rc = kill_after_first_checkpoint(args, out, per_epoch)
    assert rc == -signal.SIGKILL and not out.exists()
    resumed = finetune.main(config, out, progress=False)
    assert resumed["resumed_from_step"] % per_epoch == 0  # per-epoch checkpoints
    assert_continues(resumed, straight, straight["optimizer_steps"])
    # the keep-best selection survived: the same history, the same epoch kept, the same test scores
    assert [h["epoch"] for h in resumed["val_history"]] == [1.0, 2.0, 3.0]
    for a, b in zip(resumed["val_history"], straight["val_history"]):
        assert a["val_auroc"] == pytest.approx(b["val_auroc"], abs=1e-6)
    assert resumed["best_epoch"] == straight["best_epoch"]
    assert resumed["test"]["auroc"] == pytest.approx(straight["test"]["auroc"], abs=1e-6)


def test_killed_experiment_cell_resumes(tiny_llama, synthetic_tasks, tmp_path):
    """`experiment` SIGKILLed inside a cell: the rerun resumes that cell from its checkpoint, runs the rest."""
    import yaml

    from clinpeft.config import load_config
    from clinpeft.recipes import experiment
    from clinpeft.recipes.experiment import ExperimentConfig

    grid = {"data": {"tasks_dir": str(synthetic_tasks["mor"].parent), "tasks": ["mor", "pmv"]},
            "finetune": {"overrides": ["task.max_examples=24", "task.max_seq_len=64", "train.batch_size=8",
                                       "train.grad_accum=1", "train.epochs=2", "train.lr=1e-2", "lora.r=4",
                                       "eval.bootstrap_resamples=0"]},
            "models": [{"name": "tiny", "base": str(tiny_llama), "variants": ["lora"]}],
            "report": {"bootstrap_resamples": 0}}
    recipe_path = tmp_path / "grid.yaml"
    recipe_path.write_text(yaml.safe_dump(grid))
    out = tmp_path / "t3"
    cell = out / "tiny" / "lora" / "mor"
    rc = kill_after_first_checkpoint(["experiment", str(recipe_path), "--out", str(out), "--quiet"], cell, 1)
    assert rc == -signal.SIGKILL and not cell.exists() and partial_dir(cell).is_dir()
    state = experiment.main(load_config(ExperimentConfig, recipe_path), out, recipe_path, progress=False)
    assert state["n_failed"] == 0
    for task in ("mor", "pmv"):
        assert (out / "tiny" / "lora" / task / "metrics.json").is_file()
    resumed = json.loads((cell / "metrics.json").read_text())
    assert resumed["resumed_from_step"] > 0 and resumed["optimizer_steps"] == 2 * resumed["resumed_from_step"]
    assert not list(out.rglob("*.partial"))


def test_killed_sweep_worker_trial_is_rerun_to_the_requested_count(tiny_llama, synthetic_tasks, tmp_path):
    """A sweep worker SIGKILLed mid-trial: the rerun re-queues the trial (its worker is gone), finishes
    exactly the requested trials, writes best.yaml and leaves no checkpoint of the dead trial behind."""
    import pandas as pd
    import yaml

    from clinpeft.recipes import sweep

    recipe_path = tmp_path / "sweep.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "model": {"base": str(tiny_llama), "dtype": "float32"}, "variant": "lora",
        "lora": {"target_modules": ["q_proj", "v_proj"]},
        "task": {"path": str(synthetic_tasks["mor"]), "max_seq_len": 64, "max_examples": 24},
        "train": {"lr": 1e-2, "batch_size": 8, "grad_accum": 1, "epochs": 2}, "eval": {"batch_size": 16},
        "search": {"lora.lora_dropout": None, "train.lr": {"low": 1e-3, "high": 1e-1, "log": True}}}))
    out = tmp_path / "sw"
    trial0 = out / "trials" / "trial-0000"
    rc = kill_after_first_checkpoint(["sweep", str(recipe_path), "--out", str(out), "--trials", "2",
                                      "--sampler", "random", "--quiet"], trial0, 1)
    assert rc == -signal.SIGKILL
    sweep.main(str(recipe_path), [], out=out, trials=2, sampler="random", progress=False)
    trials = pd.read_csv(out / "trials.csv")
    assert (trials["state"] == "COMPLETE").sum() == 2 and list(trials["state"])[0] == "DIED"
    assert (out / "best.yaml").is_file()
    assert not list(out.rglob("*.partial"))
