"""Running a sweep's trials: one worker's loop (ask -> run -> tell), and `--workers N` processes.

A trial is one ordinary pretrain / finetune run directory (trials/trial-NNNN). The runs themselves
are the recipes' (clinpeft.recipes), which this package does not import: recipes/sweep.py hands a
`run_trial(sweep, trial, point, run_dir, progress) -> (objective, extra user attrs)` to work().
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from clinpeft.config import config_to_yaml
from clinpeft.errors import ClinpeftError
from clinpeft.sweep.study import (
    Heartbeat,
    Sweep,
    ask_lock,
    n_counted,
    open_study,
    quiet_optuna,
    recover_dead_trials,
    requeue,
    this_process,
)

TrialRunner = Callable[..., tuple[float, dict]]  # (sweep, trial, point, run_dir, progress) -> (value, attrs)


# --------------------------------------------------------------------------------------------
# one trial: ordinary run directories, one number back


def trial_dir(out: Path, number: int) -> Path:
    return out / "trials" / f"trial-{number:04d}"


def pruning_callback(trial, step_offset: int):
    """Report each epoch's val AUROC to the trial; stop the run when the pruner says so."""
    import optuna
    from transformers import TrainerCallback

    class ReportValAuroc(TrainerCallback):
        def __init__(self):
            self.step = step_offset

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            auroc = (metrics or {}).get("eval_auroc")
            if auroc is not None and not math.isnan(auroc):
                trial.report(auroc, self.step)
                self.step += 1
                if trial.should_prune():
                    raise optuna.TrialPruned(f"val AUROC {auroc:.4f} at evaluation {self.step}")

    return ReportValAuroc()


def run_trial(sweep: Sweep, trial, point: dict, run_dir: Path, progress: bool, *, pretrain: Callable,
              finetune: Callable) -> tuple[float, dict]:
    """Run one trial's pretrain or finetune run(s) -> (objective, extra user attrs).

    pretrain, finetune: the recipes' main functions, pretrain(config, out, progress=) -> run.json's
    dict and finetune(config, out, progress=, callbacks=) -> metrics.json's dict."""
    if sweep.step == "pretrain":
        result = pretrain(sweep.config(point), run_dir, progress=progress)
        value = result.get("val_ppl")
        if value is None or not math.isfinite(value):
            raise ClinpeftError(f"{run_dir}/run.json: val_ppl is {value}; the validation split is empty "
                                "(raise data.val_fraction or data.max_documents)")
        return value, {}
    aurocs = {}
    for i, task in enumerate(sweep.tasks):
        config = sweep.config(point, task)
        callbacks = [pruning_callback(trial, 1000 * i)] if sweep.pruner != "none" else []  # step: task, then epoch
        out = run_dir / Path(task).name if len(sweep.tasks) > 1 else run_dir
        auroc = finetune(config, out, progress=progress, callbacks=callbacks)["val"]["auroc"]
        if auroc is None or not math.isfinite(auroc):
            raise ClinpeftError(f"{out}/metrics.json: val AUROC undefined for task {Path(task).name} "
                                "(val.csv has one class only?); choose a larger val split")
        aurocs[f"val_auroc_{Path(task).name}"] = auroc
    return sum(aurocs.values()) / len(aurocs), aurocs


def clean_partial(out: Path, number: int) -> None:
    """What a killed trial leaves: hidden temporary folders, and the resumable `.partial/` runs
    (a re-queued trial runs again under a new number, so they would never be resumed)."""
    trials = out / "trials"
    for tmp in [*trials.glob(f".trial-{number:04d}.tmp-*"), *trials.glob(f"trial-{number:04d}.partial"),
                *trials.glob(f"trial-{number:04d}/*.partial")]:
        shutil.rmtree(tmp, ignore_errors=True)


def tell(study, trial, value: float | None = None, state=None) -> None:
    """study.tell; a trial another worker finished meanwhile raises UpdateFinishedTrialError, as every
    other write to it does (study.tell itself says ValueError "Cannot tell a FAIL trial")."""
    import optuna

    try:
        study.tell(trial, value, state=state)
    except ValueError:
        if not study.get_trials(deepcopy=False)[trial.number].state.is_finished():
            raise
        raise optuna.exceptions.UpdateFinishedTrialError(f"trial {trial.number} is finished already") from None


def run_one(sweep: Sweep, study, trial, out: Path, run_trial: TrialRunner, progress: bool) -> None:
    """Ask's trial -> suggest -> run -> tell (COMPLETE, PRUNED, or FAIL with its error)."""
    import optuna

    try:
        run_and_tell(sweep, study, trial, out, run_trial, progress)
    except optuna.exceptions.UpdateFinishedTrialError:
        # Another worker failed this trial and re-queued its parameters while it ran (it took this
        # worker for dead: a heartbeat late on a database). The re-queued copy will give the result;
        # this one is dropped, and this worker goes on with the next trial rather than crash.
        print(f"trial {trial.number}: failed and re-queued by another worker while it ran; result dropped",
              file=sys.stderr, flush=True)


def run_and_tell(sweep: Sweep, study, trial, out: Path, run_trial: TrialRunner, progress: bool) -> None:
    import optuna
    from optuna.trial import TrialState

    point = {p.key: p.suggest(trial) for p in sweep.params}
    run_dir = trial_dir(out, trial.number)
    trial.set_user_attr("run_dir", str(run_dir.relative_to(out)))
    shown = " ".join(f"{k}={v}" for k, v in point.items())
    started = time.time()
    try:
        trial.set_user_attr("config", config_to_yaml(sweep.config(point, sweep.tasks[0] if sweep.tasks else None)))
        with Heartbeat(study, trial, sweep.rdb):
            value, attrs = run_trial(sweep, trial, point, run_dir, progress)
    except optuna.TrialPruned as exc:
        clean_partial(out, trial.number)  # a finished trial is never resumed: its checkpoints go
        tell(study, trial, state=TrialState.PRUNED)
        print(f"trial {trial.number} pruned: {shown}: {exc}", flush=True)
    except KeyboardInterrupt:
        clean_partial(out, trial.number)
        requeue(study, study.get_trials(deepcopy=False)[trial.number], "interrupted")
        raise
    except optuna.exceptions.UpdateFinishedTrialError:
        raise  # reaped by another worker (trial.report in the pruning callback): run_one says so
    except Exception as exc:  # noqa: BLE001 -- any failure (bad combination, OOM) ends this trial only
        error = f"{type(exc).__name__}: {exc}"[:2000]
        clean_partial(out, trial.number)
        free_accelerator_memory()
        trial.set_user_attr("error", error)
        tell(study, trial, state=TrialState.FAIL)
        print(f"trial {trial.number} failed: {shown}: {error}", file=sys.stderr, flush=True)
    else:
        for key, val in attrs.items():
            trial.set_user_attr(key, val)
        tell(study, trial, value)
        best = study.best_trial
        print(f"trial {trial.number}: {shown} -> {sweep.objective} {value:.4f} ({time.time() - started:.0f} s; "
              f"best {best.value:.4f}, trial {best.number})", flush=True)


def free_accelerator_memory() -> None:
    """After an out-of-memory trial, hand the cached blocks back so the next trial can start."""
    import gc

    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


def work(sweep: Sweep, out: Path, run_trial: TrialRunner, *, worker: int = 0, progress: bool = True) -> None:
    """One worker: take trials until the study has `sweep.trials` counted trials."""
    from optuna.trial import TrialState

    quiet_optuna()
    study = open_study(sweep, out, worker)
    lock = ask_lock(out)  # exact count between the workers of this machine
    while True:
        with lock:
            # Recovery, the count, the ask and the worker's identity under one lock, the identity in
            # one write: recovery never sees a RUNNING trial of a live worker without its identity.
            recover_dead_trials(study, sweep.rdb)
            for dead in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
                clean_partial(out, dead.number)  # a dead worker's checkpoints: its retry has another number
            if n_counted(study) >= sweep.trials:
                return
            trial = study.ask()
            trial.set_user_attr("worker", this_process())
        if n_counted(study, before=trial.number) >= sweep.trials:
            # another machine took the last trial between our count and ask (no shared lock there)
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return
        run_one(sweep, study, trial, out, run_trial, progress)


# --------------------------------------------------------------------------------------------
# `--workers N`: processes of this same sweep on one study


def worker_env(worker: int, workers: int = 1) -> dict:
    """One GPU per worker when GPUs exist (CUDA_VISIBLE_DEVICES), round robin. On CPU each of the
    `workers` processes gets its share of the cores (CLINPEFT_THREADS, read by training.runtime.set_threads),
    unless the user set CLINPEFT_THREADS or OMP_NUM_THREADS."""
    env = dict(os.environ)
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 -- no usable CUDA: CPU workers
        gpus = 0
    if gpus:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = visible.split(",") if visible else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ids[worker % len(ids)]
    elif not env.get("CLINPEFT_THREADS") and not env.get("OMP_NUM_THREADS"):
        from clinpeft.training.runtime import available_cores

        env["CLINPEFT_THREADS"] = str(max(1, available_cores() // max(workers, 1)))
    return env


def worker_command(sweep: Sweep, overrides: list[str], out: Path, worker: int) -> list[str]:
    """The command line of one `--workers` process: this sweep, trials only."""
    command = [sys.executable, "-m", "clinpeft", "sweep", sweep.recipe, *overrides, "--out", str(out),
               "--trials", str(sweep.trials), "--sampler", sweep.sampler, "--seed", str(sweep.seed),
               "--pruner", sweep.pruner, "--study", sweep.study_name, "--worker", str(worker), "--quiet"]
    return command + (["--storage", sweep.storage] if sweep.storage else [])


def run_workers(sweep: Sweep, overrides: list[str], out: Path, workers: int, progress: bool) -> None:
    """`--workers N`: N processes of this same sweep (each `--worker I`) against the same study;
    this process watches the study and shows one progress bar."""
    from tqdm.auto import tqdm

    procs = [subprocess.Popen(worker_command(sweep, overrides, out, i), env=worker_env(i, workers))
             for i in range(workers)]
    quiet_optuna()
    study = open_study(sweep, out)
    bar = tqdm(total=sweep.trials, desc="trials", unit="trial", disable=not progress)
    try:
        while any(p.poll() is None for p in procs):
            bar.n = min(n_counted(study), sweep.trials)
            bar.refresh()
            time.sleep(2)
    except KeyboardInterrupt:
        for p in procs:
            p.wait()  # they received the same Ctrl-C and re-queue their running trials
        raise
    finally:
        bar.close()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        print(f"worker(s) {failed} exited with an error (see above); results below cover the trials that finished",
              file=sys.stderr, flush=True)
