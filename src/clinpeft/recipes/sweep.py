"""`clinpeft sweep`: Bayesian hyperparameter search over a pretrain or finetune recipe (Optuna).

    clinpeft sweep configs/demo/sweep_lora.yaml --out sweeps/mor-lora --trials 6
    clinpeft sweep configs/demo/sweep_lora.yaml --out sweeps/mor-lora --trials 20 --workers 2   # resumes, 2 processes
    clinpeft sweep RECIPE.yaml --out sweeps/x --storage postgresql://user@db/optuna --study x  # on every machine

The paper tunes each PEFT method by Gaussian-process Bayesian optimisation, at most 20 trials, over
the spaces of its Appendices A.2 (pretraining) and B.2 (downstream LoRA). This recipe does the
same locally with Optuna's GPSampler (seeded; TPE or random on request):

setup (recipe + search space validated, every choice of every key, before any trial) -> open or
resume the study -> worker loop (ask -> run one ordinary pretrain/finetune run directory -> tell)
-> results (best.yaml, trials.csv, history.png, importances.png, sweep.md). The parts live in
clinpeft.sweep: space (search space), study (storage, dead workers), workers, results.

Objective, never the test split:
    pretrain  val_ppl   (minimised): run.json["val_ppl"], token-weighted perplexity on the
              data.val_fraction share of the train patients (0.1 when the recipe has none)
    finetune  val_auroc (maximised): metrics.json["val"]["auroc"] of the best epoch; with several
              tasks (`sweep: tasks: [dir, ...]`), their unweighted mean (macro over tasks)

Counting: `--trials N` stops the study once N trials have a result of their own (complete,
pruned, or failed by their own error) or are running. Trials whose worker died (killed, Ctrl-C,
a stale heartbeat) do not count: they are failed and re-queued with the same parameters (at most
twice: study.MAX_RETRIES). Rerunning the same command resumes the study up to N.

Sweep directory (long-lived and shared by workers, so not written atomically as a whole; each
trial and each result file is):
    sweep.json          what was searched and how (a rerun must match it)
    study.journal       the Optuna study (default storage: a journal file, multi-process safe)
    trials/trial-NNNN/  one ordinary run directory per trial (several tasks: one per task inside)
    best.yaml           the best trial's complete resolved config: runs as is with pretrain/finetune
    trials.csv          one row per trial: state, objective, parameters, time, run dir, error
    history.png         objective per trial and best so far
    importances.png     parameter importances (PED-ANOVA), or a note when there is too little to say
    sweep.md            summary: best value and parameters, counts, top trials
"""

from __future__ import annotations

from pathlib import Path

from clinpeft.errors import ClinpeftError
from clinpeft.sweep import workers as sweep_workers
from clinpeft.sweep.results import write_results
from clinpeft.sweep.study import Sweep, open_study, prepare_out, setup


def run_trial(sweep: Sweep, trial, point: dict, run_dir: Path, progress: bool) -> tuple[float, dict]:
    """One trial, with the pretrain / finetune recipes: what the sweep's workers call (clinpeft.sweep
    never imports clinpeft.recipes, so the recipes are handed in from here)."""
    from clinpeft.recipes import finetune, pretrain  # torch and transformers: only where a trial runs

    return sweep_workers.run_trial(sweep, trial, point, run_dir, progress, pretrain=pretrain.main,
                                   finetune=finetune.main)


def main(recipe: str, overrides: list[str], *, out: str | Path, trials: int = 20, sampler: str = "gp", seed: int = 0,
         storage: str | None = None, study_name: str | None = None, workers: int = 1, pruner: str = "none",
         overwrite: bool = False, progress: bool = True, worker: int | None = None) -> dict:
    """Run (or resume) a sweep into `out`; returns the results summary (see write_results).

    worker: set in the processes `--workers` starts: run trials only, no set-up, no results ({} back).
    """
    out = Path(out)
    sweep = setup(recipe, overrides, trials=trials, sampler=sampler, seed=seed, pruner=pruner,
                  study_name=study_name, storage=storage, out=out)
    # the Hugging Face libraries' own bars follow --quiet; imported only now: a bad recipe is refused without torch
    from clinpeft.training.runtime import set_progress_bars

    set_progress_bars(progress)
    if worker is not None:
        sweep_workers.work(sweep, out, run_trial, worker=worker, progress=progress)
        return {}
    if workers < 1:
        raise ClinpeftError(f"--workers {workers}: need at least 1")
    prepare_out(sweep, out, overwrite)
    for note in sweep.notes:
        print(f"note: {note}", flush=True)
    print(f"sweep {sweep.study_name}: {sweep.step}, {sweep.objective} ({sweep.direction}), sampler {sweep.sampler}, "
          f"{sweep.trials} trials; searching {'; '.join(p.describe() for p in sweep.params)}", flush=True)
    if workers == 1:
        sweep_workers.work(sweep, out, run_trial, progress=progress)
    else:  # subprocesses re-run this command with --worker I (sweep_workers.worker_command)
        sweep_workers.run_workers(sweep, overrides, out, workers, progress)
    return write_results(sweep, open_study(sweep, out), out)


def summary(result: dict, out: str | Path) -> list[str]:
    """The lines `clinpeft sweep` prints after a sweep (none for a `--worker` process: result {})."""
    if not result:
        return []
    if result["best_trial"] is None:
        raise ClinpeftError(f"{out}: no trial completed; see the error column of {out}/trials.csv")
    best = " ".join(f"{k}={v}" for k, v in result["best_params"].items())
    return [f"{out}: best trial {result['best_trial']}: {result['best_value']:.4f} with {best}; "
            f"{result['n_complete']} trials completed; best recipe: {out}/best.yaml"]
