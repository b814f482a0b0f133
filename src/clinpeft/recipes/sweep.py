"""`clinpeft sweep`: Bayesian hyperparameter search over a pretrain or finetune recipe (Optuna).

    clinpeft sweep configs/demo/sweep_lora.yaml --out sweeps/mor-lora --trials 6
    clinpeft sweep configs/demo/sweep_lora.yaml --out sweeps/mor-lora --trials 20 --workers 2   # resumes, 2 processes
    clinpeft sweep RECIPE.yaml --out sweeps/x --storage postgresql://user@db/optuna --study x  # on every machine

The paper tunes each PEFT method by Gaussian-process Bayesian optimisation, at most 20 trials, over
the spaces of its Appendices A.2 (pretraining) and B.2 (downstream LoRA). This recipe does the
same locally with Optuna's GPSampler (seeded; TPE or random on request):

setup (recipe + search space validated, every choice of every key, before any trial) -> open or
resume the study -> worker loop (ask -> run one ordinary pretrain/finetune run directory -> tell)
-> results (best.yaml, trials.csv, history.png, importances.png, sweep.md).

Objective, never the test split:
    pretrain  val_ppl   (minimised): run.json["val_ppl"], token-weighted perplexity on the
              data.val_fraction share of the train patients (0.1 when the recipe has none)
    finetune  val_auroc (maximised): metrics.json["val"]["auroc"] of the best epoch; with several
              tasks (`sweep: tasks: [dir, ...]`), their unweighted mean (macro over tasks)

Counting: `--trials N` stops the study once N trials have a result of their own (complete,
pruned, or failed by their own error) or are running. Trials whose worker died (killed, Ctrl-C,
a stale heartbeat) do not count: they are failed and re-queued with the same parameters (at most
MAX_RETRIES times). Rerunning the same command resumes the study up to N.

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

import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from clinpeft.config import (
    FinetuneConfig,
    PretrainConfig,
    config_from_tree,
    config_to_yaml,
    format_override,
    parse_override,
    read_recipe,
)
from clinpeft.errors import ClinpeftError
from clinpeft.modeling.methods import LORA_VARIANTS
from clinpeft.rundir import atomic_write, read_json, write_json
from clinpeft.sweep.space import search_space
from clinpeft.sweep.results import write_results

STEPS = {"pretrain": PretrainConfig, "finetune": FinetuneConfig}
SAMPLERS = ("gp", "tpe", "random")
PRUNERS = ("none", "median")
OBJECTIVES = {"pretrain": ("val_ppl", "minimize"), "finetune": ("val_auroc", "maximize")}
DEFAULT_VAL_FRACTION = 0.1  # pretrain sweeps need a validation split; the share of train patients
RANGE_KEYS = {"low", "high", "log", "step"}
SWEEP_KEYS = {"step", "tasks", "paper_space", "n_startup_trials"}

# Dead workers. PostgreSQL (RDBStorage): Optuna's heartbeat, in seconds. Journal file: a RUNNING
# trial whose worker process (host, pid, start time) no longer exists on this host is stale.
HEARTBEAT_INTERVAL_S = 60
GRACE_PERIOD_S = 180
MAX_RETRIES = 2  # re-queue a trial whose worker died at most this many times
ORPHAN_AFTER_S = 60  # a RUNNING journal trial that never recorded its worker is stale after this


# --------------------------------------------------------------------------------------------
# the search space: the paper's defaults, narrowed / extended / replaced by the recipe


@dataclass
class Param:
    """One searched config key: categorical `choices`, or a `low`..`high` range (int or float)."""

    key: str
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    def describe(self) -> str:
        if self.choices is not None:
            return f"{self.key} in {self.choices}"
        return f"{self.key} in [{self.low}, {self.high}]" + (" (log)" if self.log else "") + (f" step {self.step}" if self.step else "")

    def suggest(self, trial):
        """The Optuna suggest_* call for this key (the config key is the parameter name)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.key, self.choices)
        if all(isinstance(v, int) and not isinstance(v, bool) for v in (self.low, self.high)) and not isinstance(self.step, float):
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)


def flatten_search(tree: dict, prefix: str = "") -> dict:
    """`search:` may nest (`lora: {r: [4, 8]}`) or use dotted keys (`lora.r: [4, 8]`); a mapping made
    only of low/high/log/step is a range, not a nesting level."""
    flat = {}
    for key, value in (tree or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and not set(value) <= RANGE_KEYS:
            flat.update(flatten_search(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def point_overrides(point: dict) -> list[str]:
    return [format_override(key, value) for key, value in point.items()]


def parse_param(key: str, entry, where: str) -> Param:
    """A `search:` entry -> Param, or a ClinpeftError naming it."""
    hint = "use a list of choices ([4, 8]), a range ({low: 1.0e-5, high: 1.0e-3, log: true}) or null (keep the recipe's value)"
    if isinstance(entry, list):
        if not entry:
            raise ClinpeftError(f"{where}: search.{key} is an empty list; {hint}")
        bad = [v for v in entry if v is not None and not isinstance(v, (bool, int, float, str))]
        if bad:
            raise ClinpeftError(f"{where}: search.{key}: choice {bad[0]!r} is not a scalar (Optuna's categorical "
                                "choices are numbers, strings, booleans or null); search a scalar key instead")
        return Param(key, choices=list(dict.fromkeys(entry)))
    if isinstance(entry, dict) and {"low", "high"} <= set(entry) and set(entry) <= RANGE_KEYS:
        low, high = entry["low"], entry["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or not low < high:
            raise ClinpeftError(f"{where}: search.{key}: a range needs numbers low < high (got low={low!r}, high={high!r})")
        log = entry.get("log", False)
        if not isinstance(log, bool) or (log and low <= 0):
            raise ClinpeftError(f"{where}: search.{key}: log must be true or false, and a log range needs low > 0")
        if log and entry.get("step") is not None:
            raise ClinpeftError(f"{where}: search.{key}: Optuna cannot combine log: true with step; drop one")
        return Param(key, low=low, high=high, log=log, step=entry.get("step"))
    raise ClinpeftError(f"{where}: search.{key}: got {entry!r}; {hint}")


def resolve_key(key: str, step: str) -> str:
    """`r` -> `lora.r` (finetune) / `peft.r` (pretrain): a bare name is the adapter's peft parameter."""
    return key if "." in key else f"{'peft' if step == 'pretrain' else 'lora'}.{key}"


def build_search_space(step: str, base: dict, overrides: list[str], search: dict, paper_space: bool, where: str) -> list[Param]:
    """The paper's space for this step and method (A.2 / B.2), updated by the recipe's `search:`
    (a key replaces the paper's entry, null drops it), each choice validated as a config value."""
    cls = STEPS[step]
    config = config_from_tree(cls, base, overrides, where)
    space: dict = {}
    if paper_space:
        if step == "pretrain":
            space = search_space("pretrain", config.peft.method)
        elif config.variant in LORA_VARIANTS:
            space = search_space("finetune", "lora")
    for key, entry in flatten_search(search).items():
        key = resolve_key(key, step)
        if entry is None:
            space.pop(key, None)
        else:
            space[key] = entry
    if not space:
        raise ClinpeftError(f"{where}: nothing to search (the paper's space for this recipe is empty); add a "
                            "`search:` section, e.g. search: {train.lr: {low: 1.0e-5, high: 1.0e-3, log: true}}")
    params = [parse_param(key, entry, where) for key, entry in space.items()]
    for param in params:
        if step == "finetune" and param.key.startswith("lora.") and config.variant not in LORA_VARIANTS:
            raise ClinpeftError(f"{where}: search.{param.key} does nothing with variant={config.variant} (no downstream "
                                f"LoRA); remove it, or use a variant with one: {', '.join(LORA_VARIANTS)}")
        values = param.choices if param.choices is not None else [param.low, param.high]
        for value in values:  # every choice is a valid value of its key, before any trial runs
            try:
                config_from_tree(cls, base, [*overrides, format_override(param.key, value)], where)
            except ClinpeftError as exc:
                raise ClinpeftError(f"search.{param.key}: choice {value!r} is invalid: {exc}") from None
    return params


# --------------------------------------------------------------------------------------------
# the sweep: recipe + search space + objective, fixed for the life of the study


@dataclass
class Sweep:
    step: str  # pretrain | finetune
    recipe: str
    base: dict  # the recipe without its sweep keys
    overrides: list[str]  # config overrides from the command line (and defaults the sweep set)
    params: list[Param]
    tasks: list[str]  # finetune: the task directories the objective averages over
    objective: str
    direction: str
    trials: int
    sampler: str = "gp"
    seed: int = 0
    n_startup_trials: int = 2
    pruner: str = "none"
    study_name: str = ""
    storage: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def rdb(self) -> bool:
        """A database URL (RDBStorage, with heartbeats), not the journal file."""
        return bool(self.storage) and "://" in self.storage

    def config(self, point: dict | None = None, task: str | None = None):
        extra = point_overrides(point or {}) + ([format_override("task.path", task)] if task else [])
        return config_from_tree(STEPS[self.step], self.base, [*self.overrides, *extra], self.recipe)

    def identity(self) -> dict:
        """What a resumed study must share with the first run (not --trials, --workers, --sampler)."""
        return {"step": self.step, "objective": self.objective, "direction": self.direction,
                "params": [asdict(p) for p in self.params], "tasks": self.tasks,
                "base_config": self.config().model_dump(mode="json")}


def infer_step(tree: dict, where: str) -> str:
    if {"peft", "data"} & set(tree):
        return "pretrain"
    if {"task", "variant", "lora", "clinical_adapter"} & set(tree):
        return "finetune"
    raise ClinpeftError(f"{where}: cannot tell a pretrain from a finetune recipe; add `sweep: {{step: finetune}}` "
                        "(or pretrain)")


def setup(recipe: str, overrides: list[str], trials: int, sampler: str = "gp", seed: int = 0, pruner: str = "none",
          study_name: str | None = None, storage: str | None = None, out: str | Path = "sweep") -> Sweep:
    """Read and validate everything a sweep needs; raises ClinpeftError before any trial otherwise."""
    tree = read_recipe(recipe)
    search, section = tree.pop("search", None) or {}, tree.pop("sweep", None) or {}
    config_overrides = []
    for item in overrides:  # search.KEY=... and sweep.KEY=... go to the sweep, the rest to the config
        path, value = parse_override(item)
        if path[0] == "search" and len(path) > 1:
            search[".".join(path[1:])] = value
        elif path[0] == "sweep" and len(path) == 2:
            section[path[1]] = value
        else:
            config_overrides.append(item)
    unknown = set(section) - SWEEP_KEYS
    if unknown:
        raise ClinpeftError(f"{recipe}: unknown key sweep.{sorted(unknown)[0]}; known: {', '.join(sorted(SWEEP_KEYS))}")
    if trials < 1:
        raise ClinpeftError(f"--trials {trials}: need at least 1")
    if sampler not in SAMPLERS or pruner not in PRUNERS:
        raise ClinpeftError(f"--sampler {sampler} / --pruner {pruner}: choose from {SAMPLERS} / {PRUNERS}")
    step = section.get("step") or infer_step(tree, recipe)
    if step not in STEPS:
        raise ClinpeftError(f"{recipe}: sweep.step={step!r}; use pretrain or finetune")
    notes = []
    base_config = config_from_tree(STEPS[step], tree, config_overrides, recipe)
    tasks: list[str] = []
    if step == "pretrain":
        if pruner != "none":
            raise ClinpeftError("--pruner: pretraining reports no intermediate validation perplexity to prune on; "
                                "use --pruner none")
        if base_config.data.val_fraction == 0:
            # tune on a validation split, never on the test split: carve one from the train patients
            config_overrides.append(f"data.val_fraction={DEFAULT_VAL_FRACTION}")
            notes.append(f"data.val_fraction was 0: the sweep holds out {DEFAULT_VAL_FRACTION} of the train patients "
                         "as the validation split it tunes on (set data.val_fraction to choose)")
    else:
        tasks = [str(t) for t in section.get("tasks") or [base_config.task.path]]
        if not all(tasks):
            raise ClinpeftError(f"{recipe}: no task to tune on; set task.path=DIR or sweep.tasks=[DIR, ...]")
        if len(set(Path(t).name for t in tasks)) != len(tasks):
            raise ClinpeftError(f"{recipe}: sweep.tasks: two tasks share a directory name ({tasks}); "
                                "each trial writes one run per task name")
        for task in tasks:
            if not Path(task).is_dir():
                raise ClinpeftError(f"{recipe}: task directory {task} not found (sweep.tasks / task.path)")
    params = build_search_space(step, tree, config_overrides, search, section.get("paper_space", True), recipe)
    objective, direction = OBJECTIVES[step]
    # GP: a few random points first, then the Gaussian process. Optuna's default (10) would leave a
    # 20-trial budget half random; a third of the budget (at least 2) keeps the GP in charge.
    startup = int(section.get("n_startup_trials") or max(2, trials // 3))
    return Sweep(step=step, recipe=str(recipe), base=tree, overrides=config_overrides, params=params, tasks=tasks,
                 objective=objective, direction=direction, trials=trials, sampler=sampler, seed=seed,
                 n_startup_trials=startup, pruner=pruner, study_name=study_name or Path(out).resolve().name,
                 storage=storage, notes=notes)


# --------------------------------------------------------------------------------------------
# the study: storage, sampler, pruner


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own one line per trial instead
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    # ask/tell with a heartbeat: Optuna warns because optimize() beats for you; Heartbeat below does it
    warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


def open_storage(url: str | None, out: Path):
    """Default: a journal file in the sweep directory (file locks, several processes, nothing to
    start). A URL (postgresql://, mysql://, sqlite:///): RDBStorage with Optuna's heartbeat, so a
    trial of a dead worker is failed after GRACE_PERIOD_S and re-queued."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    if url is None or "://" not in url:
        path = Path(url) if url else out / "study.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL_S, grace_period=GRACE_PERIOD_S,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES))
    except (ImportError, ModuleNotFoundError) as exc:
        raise ClinpeftError(f"--storage {redact(url)}: database driver missing ({exc}); for PostgreSQL: "
                            "pip install 'clinpeft[postgres]'") from None
    except optuna.exceptions.StorageInternalError as exc:
        raise ClinpeftError(f"--storage {redact(url)}: cannot connect ({exc}); check the URL and that the server "
                            "is reachable") from None


def redact(url: str | None) -> str | None:
    """The storage URL without its password (sweep.json and messages)."""
    if not url or "://" not in url or "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}" if ":" in creds else url


def make_sampler(sweep: Sweep, seed: int):
    import optuna

    if sweep.sampler == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=sweep.n_startup_trials)
    if sweep.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sweep.n_startup_trials)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(sweep: Sweep):
    import optuna

    if sweep.pruner == "median":
        # below the median of earlier trials at the same evaluation (task, epoch): stop. Two full
        # trials first, so that there is a median to compare with.
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    return optuna.pruners.NopPruner()


def open_study(sweep: Sweep, out: Path, worker: int = 0):
    import optuna

    storage = open_storage(sweep.storage, out)
    probe = optuna.load_study(study_name=sweep.study_name, storage=storage) if sweep.study_name in \
        optuna.get_all_study_names(storage) else None
    # Seeded, but never the same sequence twice: per worker, and moved on by what the study has
    # (a resumed random start would otherwise propose the first points again).
    seed = sweep.seed + 7919 * worker + (len(probe.trials) if probe else 0)
    return optuna.create_study(study_name=sweep.study_name, storage=storage, direction=sweep.direction,
                               sampler=make_sampler(sweep, seed), pruner=make_pruner(sweep), load_if_exists=True)


# --------------------------------------------------------------------------------------------
# counting trials, and the trials of dead workers


def counts(trial) -> bool:
    """Does a trial count toward --trials? Running, complete, pruned, or failed by its own error
    (the `error` attr); not the trials of dead workers, which are re-queued instead."""
    from optuna.trial import TrialState

    if trial.state in (TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "error" in trial.user_attrs


def n_counted(study, before: int | None = None) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False) if counts(t) and (before is None or t.number < before))


def process_alive(pid: int, started: float | None) -> bool:
    import psutil

    try:  # the same pid with another start time is a new process that reused the number
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and (started is None or abs(process.create_time() - started) < 1.0)
    except (psutil.NoSuchProcess, ValueError):
        return False


def this_process() -> dict:
    import psutil

    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_started": psutil.Process().create_time()}


def requeue(study, trial, reason: str) -> None:
    """Fail a trial whose worker died (not counted) and queue its parameters again."""
    import optuna
    from optuna.trial import TrialState

    optuna.trial.Trial(study, trial._trial_id).set_user_attr("died", reason)  # Trial(study, id): the public constructor
    study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
    retries = trial.user_attrs.get("retries", 0)
    if retries < MAX_RETRIES:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.user_attrs.get("retry_of", trial.number),
                                                      "retries": retries + 1})
    print(f"trial {trial.number}: {reason}; " + ("re-queued with the same parameters" if retries < MAX_RETRIES
                                                   else f"not re-queued (died {retries + 1} times)"), flush=True)


def recover_dead_trials(study, rdb: bool) -> None:
    """RUNNING trials whose worker is gone: RDB storage by Optuna's heartbeat (its retry callback
    re-queues them); the journal file by the worker's pid on this host."""
    import optuna
    from optuna.trial import TrialState

    if rdb:
        optuna.storages.fail_stale_trials(study)
        return
    host, now = socket.gethostname(), time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        attrs = trial.user_attrs
        if attrs.get("host") == host and not process_alive(attrs.get("pid", -1), attrs.get("pid_started")):
            requeue(study, trial, f"its worker (pid {attrs.get('pid')}) is gone")
        elif "host" not in attrs and trial.datetime_start and now - trial.datetime_start.timestamp() > ORPHAN_AFTER_S:
            requeue(study, trial, "its worker never recorded itself")


class Heartbeat:
    """RDB storage in ask/tell mode: record the trial's heartbeat every HEARTBEAT_INTERVAL_S
    (Optuna's optimize() does this itself; a sweep needs ask/tell to count trials exactly)."""

    def __init__(self, study, trial, enabled: bool):
        # study._storage: Optuna wraps the RDBStorage in a cache that forwards heartbeats
        self.storage = study._storage if enabled else None
        self.trial_id, self.stop = trial._trial_id, threading.Event()

    def __enter__(self):
        if self.storage is not None:
            self.storage.record_heartbeat(self.trial_id)
            threading.Thread(target=self._beat, daemon=True).start()
        return self

    def _beat(self):
        while not self.stop.wait(HEARTBEAT_INTERVAL_S):
            self.storage.record_heartbeat(self.trial_id)

    def __exit__(self, *exc):
        self.stop.set()


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


def run_trial(sweep: Sweep, trial, point: dict, run_dir: Path, progress: bool) -> tuple[float, dict]:
    """Run one trial's pretrain or finetune run(s) -> (objective, extra user attrs)."""
    from clinpeft.recipes import finetune, pretrain

    if sweep.step == "pretrain":
        result = pretrain.main(sweep.config(point), run_dir, progress=progress)
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
        auroc = finetune.main(config, out, progress=progress, callbacks=callbacks)["val"]["auroc"]
        if auroc is None or not math.isfinite(auroc):
            raise ClinpeftError(f"{out}/metrics.json: val AUROC undefined for task {Path(task).name} "
                                "(val.csv has one class only?); choose a larger val split")
        aurocs[f"val_auroc_{Path(task).name}"] = auroc
    return sum(aurocs.values()) / len(aurocs), aurocs


def clean_partial(out: Path, number: int) -> None:
    """The hidden temporary folder a killed run leaves beside its run directory."""
    for tmp in (out / "trials").glob(f".trial-{number:04d}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def run_one(sweep: Sweep, study, trial, out: Path, progress: bool) -> None:
    """Ask's trial -> suggest -> run -> tell (COMPLETE, PRUNED, or FAIL with its error)."""
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
        study.tell(trial, state=TrialState.PRUNED)
        print(f"trial {trial.number} pruned: {shown}: {exc}", flush=True)
    except KeyboardInterrupt:
        clean_partial(out, trial.number)
        requeue(study, study.get_trials(deepcopy=False)[trial.number], "interrupted")
        raise
    except Exception as exc:  # noqa: BLE001 -- any failure (bad combination, OOM) ends this trial only
        error = f"{type(exc).__name__}: {exc}"[:2000]
        trial.set_user_attr("error", error)
        study.tell(trial, state=TrialState.FAIL)
        print(f"trial {trial.number} failed: {shown}: {error}", file=sys.stderr, flush=True)
        free_accelerator_memory()
    else:
        for key, val in attrs.items():
            trial.set_user_attr(key, val)
        study.tell(trial, value)
        best = study.best_trial
        print(f"trial {trial.number}: {shown} -> {sweep.objective} {value:.4f} ({time.time() - started:.0f} s; "
              f"best {best.value:.4f}, trial {best.number})", flush=True)


def free_accelerator_memory() -> None:
    """After an out-of-memory trial, hand the cached blocks back so the next trial can start."""
    import gc

    gc.collect()
    if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
        sys.modules["torch"].cuda.empty_cache()


def work(sweep: Sweep, out: Path, worker: int = 0, progress: bool = True) -> None:
    """One worker: take trials until the study has `sweep.trials` counted trials."""
    import filelock
    from optuna.trial import TrialState

    quiet_optuna()
    study = open_study(sweep, out, worker)
    lock = filelock.FileLock(str(out / ".ask.lock"))  # exact count between the workers of this machine
    while True:
        recover_dead_trials(study, sweep.rdb)
        with lock:
            if n_counted(study) >= sweep.trials:
                return
            trial = study.ask()
            for key, value in this_process().items():
                trial.set_user_attr(key, value)
        if n_counted(study, before=trial.number) >= sweep.trials:
            # another machine took the last trial between our count and ask (no shared lock there)
            trial.set_user_attr("surplus", True)
            study.tell(trial, state=TrialState.FAIL)
            return
        run_one(sweep, study, trial, out, progress)


# --------------------------------------------------------------------------------------------
# the sweep directory and workers


def prepare_out(sweep: Sweep, out: Path, overwrite: bool) -> None:
    """Create the sweep directory, or check that an existing one holds this same sweep (resume)."""
    spec = out / "sweep.json"
    if out.exists() and overwrite:
        shutil.rmtree(out)
        if sweep.rdb:
            import optuna

            try:
                optuna.delete_study(study_name=sweep.study_name, storage=open_storage(sweep.storage, out))
            except KeyError:
                pass
    if out.exists() and any(out.iterdir()) and not spec.is_file():
        raise ClinpeftError(f"--out {out} exists and is not a sweep directory (no sweep.json); choose a new directory")
    identity = sweep.identity()
    if spec.is_file():
        previous = read_json(spec)
        if previous.get("identity") != identity:
            changed = [k for k in identity if previous.get("identity", {}).get(k) != identity[k]]
            raise ClinpeftError(f"{spec}: this directory holds a sweep with a different {', '.join(changed)}; "
                                "rerun the same recipe and search space to resume, or choose a new --out "
                                "(or --overwrite to start over)")
        print(f"resuming the sweep in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(spec, lambda tmp: write_json(tmp, {"recipe": sweep.recipe, "overrides": sweep.overrides, "study": sweep.study_name,
                      "storage": redact(sweep.storage) or "study.journal", "sampler": sweep.sampler,
                      "seed": sweep.seed, "n_startup_trials": sweep.n_startup_trials, "pruner": sweep.pruner,
                      "trials": sweep.trials, "search": [p.describe() for p in sweep.params],
                      "identity": identity}))


def worker_env(worker: int) -> dict:
    """One GPU per worker when GPUs exist (CUDA_VISIBLE_DEVICES), round robin."""
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

    procs = [subprocess.Popen(worker_command(sweep, overrides, out, i), env=worker_env(i)) for i in range(workers)]
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


def main(recipe: str, overrides: list[str], out: str | Path, trials: int = 20, sampler: str = "gp", seed: int = 0,
         storage: str | None = None, study_name: str | None = None, workers: int = 1, pruner: str = "none",
         overwrite: bool = False, progress: bool = True, worker: int | None = None) -> dict:
    """Run (or resume) a sweep into `out`; returns the results summary (see write_results).

    worker: set in the processes `--workers` starts: run trials only, no set-up, no results.
    """
    out = Path(out)
    sweep = setup(recipe, overrides, trials, sampler, seed, pruner, study_name, storage, out)
    if worker is not None:
        work(sweep, out, worker, progress)
        return {}
    if workers < 1:
        raise ClinpeftError(f"--workers {workers}: need at least 1")
    prepare_out(sweep, out, overwrite)
    for note in sweep.notes:
        print(f"note: {note}", flush=True)
    print(f"sweep {sweep.study_name}: {sweep.step}, {sweep.objective} ({sweep.direction}), sampler {sweep.sampler}, "
          f"{sweep.trials} trials; searching {'; '.join(p.describe() for p in sweep.params)}", flush=True)
    if workers == 1:
        work(sweep, out, 0, progress)
    else:
        run_workers(sweep, overrides, out, workers, progress)
    return write_results(sweep, open_study(sweep, out), out)
