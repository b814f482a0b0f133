"""`clinpeft sweep`: search spaces validated up front, trials as run directories, failures and dead
workers recorded, resume to the requested count, several workers on one study, results files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import optuna
import pandas as pd
import pytest
import yaml

from clinpeft.cli import main as cli_main
from clinpeft.config import FinetuneConfig, load_config
from clinpeft.errors import ClinpeftError
from clinpeft.recipes import finetune, sweep
from clinpeft.sweep import study as sweep_study
from clinpeft.sweep import workers as sweep_workers

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_recipe(path, base, task_dir, **extra) -> str:
    """A tiny finetune recipe (few examples, one epoch) with optional search:/sweep: sections."""
    recipe = {"model": {"base": str(base), "dtype": "float32"}, "variant": "lora",
              "lora": {"target_modules": ["q_proj", "v_proj"]},
              "task": {"path": str(task_dir), "max_seq_len": 64, "max_examples": 40},
              "train": {"lr": 1e-2, "batch_size": 8, "grad_accum": 1, "epochs": 1}, "eval": {"batch_size": 16}}
    recipe.update(extra)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return str(path)


@pytest.fixture
def recipe(tmp_path, tiny_llama, synthetic_tasks):
    return write_recipe(tmp_path / "sweep.yaml", tiny_llama, synthetic_tasks["mor"],
                        search={"lora.lora_dropout": None, "train.lr": {"low": 1e-3, "high": 1e-1, "log": True}})


def fake_objective(fail_on=(), interrupt_on=()):
    """A stand-in for the training run: value from the sampled point, instant; can raise."""
    calls = []

    def run_trial(spec, trial, point, run_dir, progress):
        calls.append(trial.number)
        if trial.number in fail_on:
            raise RuntimeError("CUDA out of memory (simulated)")
        if trial.number in interrupt_on:
            raise KeyboardInterrupt
        run_dir.mkdir(parents=True)
        return point["lora.r"] / 16 + point["train.lr"], {}

    run_trial.calls = calls
    return run_trial


def csv(out):
    return pd.read_csv(out / "trials.csv")


# --- the search space ------------------------------------------------------------------------


def test_search_space_is_the_papers_narrowed_by_the_recipe(recipe, tmp_path):
    spec = sweep_study.setup(recipe, ["search.r=[4, 8]"], trials=3)
    space = {p.key: p for p in spec.params}
    assert space["lora.r"].choices == [4, 8]  # the bare name is the downstream LoRA's
    assert space["lora.lora_alpha"].choices == [4, 8, 16, 32]  # B.2, untouched
    assert "lora.lora_dropout" not in space  # null: dropped, the recipe's value stays
    assert (space["train.lr"].low, space["train.lr"].high, space["train.lr"].log) == (1e-3, 1e-1, True)
    assert (spec.objective, spec.direction, spec.n_startup_trials) == ("val_auroc", "maximize", 2)
    only = sweep_study.setup(recipe, ["sweep.paper_space=false"], trials=3)
    assert [p.key for p in only.params] == ["train.lr"]
    config = spec.config({"lora.r": 8, "train.lr": 0.00123})
    assert (config.lora.r, config.train.lr) == (8, 0.00123)  # 0.00123 stays a float through YAML


@pytest.mark.parametrize("override, message", [
    ("search.lora.r=[4, banana]", "search.lora.r: choice 'banana' is invalid"),
    ("search.lora.lora_dropout=[0.1, 1.5]", "search.lora.lora_dropout: choice 1.5 is invalid"),
    ("search.lora.rank=[2, 4]", "search.lora.rank: .*unknown config key 'lora.rank'"),
    ("search.train.lr={low: 0.1, high: 0.01}", "search.train.lr: a range needs numbers low < high"),
    ("search.lora.r=[]", "search.lora.r is an empty list"),
    ("search.lora.target_modules=[[q_proj], [v_proj]]", "search.lora.target_modules: choice .* is not a scalar"),
])
def test_invalid_search_entry_fails_before_any_trial(recipe, tmp_path, monkeypatch, override, message):
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    out = tmp_path / "sw"
    with pytest.raises(ClinpeftError, match=message):
        sweep.main(recipe, [override], out=out, trials=2, progress=False)
    assert not out.exists() and sweep.run_trial.calls == []


def test_lora_keys_refused_for_a_variant_without_downstream_lora(recipe, capsys):
    assert cli_main(["sweep", recipe, "variant=head", "search.r=[2, 4]", "--out", "unused", "--trials", "1"]) == 2
    assert "search.lora.r does nothing with variant=head" in capsys.readouterr().err


def test_pretrain_sweep_tunes_on_a_validation_split(tmp_path, tiny_llama, synthetic_corpus):
    spec = sweep_study.setup(_pretrain_recipe(tmp_path, tiny_llama, synthetic_corpus), [], trials=2)
    assert (spec.objective, spec.direction) == ("val_ppl", "minimize")
    assert spec.config().data.val_fraction == sweep_study.DEFAULT_VAL_FRACTION and "val_fraction" in spec.notes[0]
    assert [p.key for p in spec.params] == ["peft.r", "peft.lora_alpha", "peft.lora_dropout"]  # A.2, LoRA
    with pytest.raises(ClinpeftError, match="pretraining reports no intermediate"):
        sweep_study.setup(_pretrain_recipe(tmp_path, tiny_llama, synthetic_corpus), [], trials=2, pruner="median")


def _pretrain_recipe(tmp_path, base, corpus) -> str:
    path = tmp_path / "pretrain_sweep.yaml"
    path.write_text(yaml.safe_dump({"model": {"base": str(base)}, "peft": {"method": "lora"},
                                    "data": {"paths": [str(corpus["discharge"]), str(corpus["radiology"])]}}))
    return str(path)


# --- the study: failures, interruptions, dead workers, resume --------------------------------


def test_a_failing_trial_is_recorded_and_the_study_goes_on(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_trial", fake_objective(fail_on={1}))
    out = tmp_path / "sw"
    result = sweep.main(recipe, [], out=out, trials=3, sampler="random", progress=False)
    trials = csv(out)
    assert list(trials["state"]) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials.loc[1, "error"] == "RuntimeError: CUDA out of memory (simulated)"
    assert pd.isna(trials.loc[1, "val_auroc"]) and pd.isna(trials.loc[1, "run_dir"])
    assert result["n_complete"] == 2 and result["best_trial"] in (0, 2)
    best = trials.loc[trials["val_auroc"].idxmax()]
    assert result["best_value"] == pytest.approx(best["val_auroc"])
    assert "1 fail" in (out / "sweep.md").read_text()


def test_an_interrupted_sweep_resumes_to_the_requested_count(recipe, tmp_path, monkeypatch):
    out = tmp_path / "sw"
    monkeypatch.setattr(sweep, "run_trial", fake_objective(interrupt_on={1}))
    with pytest.raises(KeyboardInterrupt):
        sweep.main(recipe, [], out=out, trials=3, progress=False)  # Ctrl-C during the second trial
    assert not (out / "best.yaml").exists()
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    sweep.main(recipe, [], out=out, trials=3, progress=False)  # the same command again
    trials = csv(out)
    assert list(trials["state"]) == ["COMPLETE", "DIED", "COMPLETE", "COMPLETE"]
    assert (trials["state"] == "COMPLETE").sum() == 3
    retried = trials[trials["retry_of"] == 1]
    assert len(retried) == 1  # the interrupted trial ran again with its own parameters
    for key in ("lora.r", "lora.lora_alpha", "train.lr"):
        assert retried.iloc[0][key] == trials.loc[1, key]
    # asking for more later extends the same study
    sweep.main(recipe, [], out=out, trials=4, progress=False)
    assert (csv(out)["state"] == "COMPLETE").sum() == 4


@pytest.mark.parametrize("legacy", [False, True])
def test_a_dead_workers_running_trial_is_requeued(recipe, tmp_path, monkeypatch, legacy):
    """legacy: a journal written before the worker's identity was one attribute (host, pid, pid_started)."""
    out = tmp_path / "sw"
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    sweep.main(recipe, [], out=out, trials=1, progress=False)
    # a worker that took trial 1 and was killed (SIGKILL: no chance to tell the study)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    spec = sweep_study.setup(recipe, [], trials=2, out=out)
    study = sweep_study.open_study(spec, out)
    trial = study.ask({"lora.r": optuna.distributions.CategoricalDistribution([2, 4, 8, 16])})
    identity = {"host": socket.gethostname(), "pid": dead.pid, "pid_started": 0.0}
    for key, value in (identity.items() if legacy else [("worker", identity)]):
        trial.set_user_attr(key, value)
    sweep.main(recipe, [], out=out, trials=2, progress=False)
    trials = csv(out)
    assert list(trials["state"]) == ["COMPLETE", "DIED", "COMPLETE"]
    assert "is gone" in trials.loc[1, "error"] and trials.loc[2, "retry_of"] == 1


def test_a_running_trial_without_its_worker_is_left_alone_for_a_grace_period(recipe, tmp_path, monkeypatch):
    """A worker killed between ask and recording itself: re-queued, but only after ORPHAN_AFTER_S. The
    second trial is what the race exposed: `host` written, `pid` not yet (once read as "pid None is gone")."""
    out = tmp_path / "sw"
    spec = sweep_study.setup(recipe, [], trials=2, out=out)
    study = sweep_study.open_study(spec, out)
    space = {"lora.r": optuna.distributions.CategoricalDistribution([2, 4, 8, 16])}
    study.ask(space)  # no `worker` attr
    study.ask(space).set_user_attr("host", socket.gethostname())
    sweep_study.recover_dead_trials(study, rdb=False)
    assert [t.state.name for t in study.trials] == ["RUNNING", "RUNNING"]
    monkeypatch.setattr(sweep_study, "ORPHAN_AFTER_S", 0)
    sweep_study.recover_dead_trials(study, rdb=False)
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL", "WAITING", "WAITING"]
    assert all("never recorded itself" in t.user_attrs["died"] for t in study.trials[:2])


def test_recovery_runs_under_the_ask_lock(recipe, tmp_path, monkeypatch):
    """Recovery and ask + identity hold one lock: recovery never sees a trial whose worker is unrecorded."""
    import filelock

    held = []

    def check_lock(study, rdb):
        try:
            with sweep_study.ask_lock(out).acquire(timeout=0):  # another handle on the same lock file
                held.append(False)
        except filelock.Timeout:
            held.append(True)

    out = tmp_path / "sw"
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    monkeypatch.setattr(sweep_workers, "recover_dead_trials", check_lock)
    sweep.main(recipe, [], out=out, trials=2, progress=False)
    assert held == [True, True, True]  # before each of the 2 trials, and before seeing the count reached
    assert all(isinstance(t.user_attrs["worker"]["pid"], int)
               for t in sweep_study.open_study(sweep_study.setup(recipe, [], trials=2, out=out), out).trials)


def test_a_worker_whose_trial_was_reaped_goes_on(recipe, tmp_path, monkeypatch):
    """Another worker fails and re-queues a running trial (it took its worker for dead): the worker
    running it logs one line and takes the next trial instead of crashing with UpdateFinishedTrialError."""
    out = tmp_path / "sw"
    objective = fake_objective()

    def reaped_on_first_call(spec, trial, point, run_dir, progress):
        if not objective.calls:
            study = sweep_study.open_study(spec, out)  # the other worker's handle on the study
            sweep_study.requeue(study, study.trials[trial.number], "its worker (pid 1) is gone")
        return objective(spec, trial, point, run_dir, progress)

    monkeypatch.setattr(sweep, "run_trial", reaped_on_first_call)
    result = sweep.main(recipe, [], out=out, trials=2, progress=False)
    trials = csv(out)
    assert list(trials["state"]) == ["DIED", "COMPLETE", "COMPLETE"] and result["n_complete"] == 2
    assert trials.loc[1, "retry_of"] == 0  # the re-queued copy ran with the same parameters
    assert objective.calls == [0, 1, 2]


def test_rdb_storage_fails_stale_trials_by_heartbeat(recipe, tmp_path, monkeypatch):
    """The --storage URL path (RDBStorage + Optuna's heartbeat), on SQLite in place of PostgreSQL."""
    import time

    monkeypatch.setattr(sweep_study, "HEARTBEAT_INTERVAL_S", 1)
    monkeypatch.setattr(sweep_study, "GRACE_PERIOD_S", 1)
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    out, url = tmp_path / "sw", f"sqlite:///{tmp_path / 'study.db'}"
    spec = sweep_study.setup(recipe, [], trials=2, storage=url, study_name="s", out=out)
    sweep_study.quiet_optuna()
    study = sweep_study.open_study(spec, out)
    trial = study.ask()  # a worker on another machine that took trial 0, then died
    trial.suggest_categorical("lora.r", [2, 4, 8, 16])
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    sweep.main(recipe, [], out=out, trials=2, storage=url, study_name="s", progress=False)
    trials = csv(out)
    assert list(trials["state"]) == ["DIED", "COMPLETE", "COMPLETE"]
    assert json.loads((out / "sweep.json").read_text())["storage"] == url


def test_postgres_storage(recipe, tmp_path, monkeypatch, postgres_url):
    """A PostgreSQL study (CLINPEFT_TEST_POSTGRES_URL, or a throwaway server: conftest.postgres_url)."""
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    url = postgres_url
    name = f"clinpeft-test-{os.getpid()}"
    sweep.main(recipe, [], out=tmp_path / "a", trials=2, storage=url, study_name=name, overwrite=True,
               progress=False)
    sweep.main(recipe, [], out=tmp_path / "b", trials=3, storage=url, study_name=name,
               progress=False)  # another "machine"
    assert (csv(tmp_path / "b")["state"] == "COMPLETE").sum() == 3


def test_summary_is_the_lines_the_cli_prints():
    result = {"best_trial": 2, "best_value": 0.71234, "best_params": {"lora.r": 8, "train.lr": 0.01}, "n_complete": 3}
    assert sweep.summary(result, "sw") == ["sw: best trial 2: 0.7123 with lora.r=8 train.lr=0.01; 3 trials completed; "
                                           "best recipe: sw/best.yaml"]
    assert sweep.summary({}, "sw") == []  # a --worker process: the parent sums up
    with pytest.raises(ClinpeftError, match="sw: no trial completed; see the error column of sw/trials.csv"):
        sweep.summary({**result, "best_trial": None, "best_value": None, "best_params": None}, "sw")


def test_resume_refuses_another_search_space(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    out = tmp_path / "sw"
    sweep.main(recipe, [], out=out, trials=1, progress=False)
    with pytest.raises(ClinpeftError, match="different params"):
        sweep.main(recipe, ["search.r=[4]"], out=out, trials=2, progress=False)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x").write_text("")
    with pytest.raises(ClinpeftError, match="not a sweep directory"):
        sweep.main(recipe, [], out=tmp_path / "other", trials=1, progress=False)


def test_one_trial_gives_a_note_instead_of_importances(recipe, tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "run_trial", fake_objective())
    out = tmp_path / "sw"
    sweep.main(recipe, [], out=out, trials=1, progress=False)
    assert (out / "importances.png").read_bytes().startswith(PNG_MAGIC)
    assert "need at least 2 completed trials" in (out / "sweep.md").read_text()


# --- end to end, real training runs ----------------------------------------------------------


@pytest.mark.slow
def test_three_trial_gp_sweep_writes_a_best_yaml_that_runs(recipe, tmp_path):
    out = tmp_path / "sw"
    assert cli_main(["sweep", recipe, "--out", str(out), "--trials", "3", "--quiet"]) == 0
    trials = csv(out)
    assert list(trials["number"]) == [0, 1, 2] and set(trials["state"]) == {"COMPLETE"}
    for _, row in trials.iterrows():  # each trial is an ordinary finetune run; its val AUROC is the value
        metrics = json.loads((out / row["run_dir"] / "metrics.json").read_text())
        assert metrics["val"]["auroc"] == pytest.approx(row["val_auroc"])
        config = load_config(FinetuneConfig, out / row["run_dir"] / "config.yaml")
        assert (config.lora.r, config.train.lr) == (row["lora.r"], pytest.approx(row["train.lr"]))
    best = trials.loc[trials["val_auroc"].idxmax()]
    config = load_config(FinetuneConfig, out / "best.yaml")  # complete and strict: no sweep keys left
    assert (config.lora.r, config.lora.lora_alpha) == (best["lora.r"], best["lora.lora_alpha"])
    rerun = finetune.main(config, tmp_path / "best-run", progress=False)
    assert rerun["val"]["auroc"] == pytest.approx(best["val_auroc"], abs=1e-6)  # same seed, same run
    for name in ("history.png", "importances.png"):
        assert (out / name).read_bytes().startswith(PNG_MAGIC)
    assert f"trial {int(best['number'])}" in (out / "sweep.md").read_text()


@pytest.mark.slow
def test_two_local_workers_share_one_study(recipe, tmp_path):
    out = tmp_path / "sw"
    assert cli_main(["sweep", recipe, "--out", str(out), "--trials", "3", "--workers", "2", "--quiet",
                     "--sampler", "random"]) == 0
    trials = csv(out)
    assert list(trials["number"]) == [0, 1, 2] and set(trials["state"]) == {"COMPLETE"}  # exactly 3, no duplicates
    assert len(set(trials["run_dir"])) == 3 and all((out / d / "metrics.json").is_file() for d in trials["run_dir"])
    study = optuna.load_study(study_name="sw", storage=sweep_study.open_storage(None, out))
    pids = {t.user_attrs["worker"]["pid"] for t in study.trials}
    # trials ran in the worker processes, never here; usually both take some, but on a loaded machine one
    # worker may start after the other finished all three: the exact count above is what must hold
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids


def test_pruning_reports_each_epoch_and_stops_a_bad_trial():
    class FakeTrial:
        def __init__(self, prune_at):
            self.reports, self.prune_at = [], prune_at

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) == self.prune_at

    trial = FakeTrial(prune_at=2)
    callback = sweep_workers.pruning_callback(trial, step_offset=1000)  # the second task of a trial
    callback.on_evaluate(None, None, None, metrics={"eval_auroc": 0.61})
    callback.on_evaluate(None, None, None, metrics={"eval_auroc": float("nan")})  # undefined: not reported
    with pytest.raises(optuna.TrialPruned):
        callback.on_evaluate(None, None, None, metrics={"eval_auroc": 0.52})
    assert trial.reports == [(1000, 0.61), (1001, 0.52)]


def test_pretrain_objective_is_run_json_val_ppl(tmp_path, tiny_llama, synthetic_corpus, monkeypatch):
    """The contract with `pretrain` (run.json["val_ppl"]); a real pretrain sweep runs the same code."""
    from clinpeft.recipes import pretrain

    seen = []

    def fake_pretrain(config, out, progress=True):
        seen.append((config.data.val_fraction, config.peft.r))
        out.mkdir(parents=True)
        return {"val_ppl": 100.0 / config.peft.r if config.peft.r != 2 else None, "test_ppl": 1.0}

    monkeypatch.setattr(pretrain, "main", fake_pretrain)
    out = tmp_path / "sw"
    sweep.main(_pretrain_recipe(tmp_path, tiny_llama, synthetic_corpus), ["search.r=[2, 4, 16]"], out=out, trials=3,
               sampler="random", progress=False)
    trials = csv(out)
    assert all(fraction == sweep_study.DEFAULT_VAL_FRACTION for fraction, _ in seen)  # tuned on a val split
    for _, row in trials.iterrows():
        if row["peft.r"] == 2:  # no val_ppl: the trial fails with a message, the study goes on
            assert row["state"] == "FAIL" and "val_ppl is None" in row["error"]
        else:
            assert row["state"] == "COMPLETE" and row["val_ppl"] == pytest.approx(100.0 / row["peft.r"])
    assert "test_ppl" not in trials.columns
